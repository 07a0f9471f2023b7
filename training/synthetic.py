"""Small synthetic corpora in the corpus contract's on-disk layout, for tests and throughput benchmarks.

Real corpora come from ``txfm build-corpus``; this writes the same files (``data/{split}-*.parquet``,
``vocabulary.json``, ``profiles.json``) with pyarrow, so training code can be tested without the
builder and benchmarked at paper scale (44,349 genes) without the data. The counts have structure to
learn: each sample mixes a few latent programs over gene-specific baselines (Poisson noise).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_synthetic_corpus(
    out: str | Path,
    n_train: int = 256,
    n_validation: int = 64,
    n_genes: int = 400,
    profile_sizes: tuple[int, ...] = (300, 150),
    n_programs: int = 4,
    depth: int = 2000,
    seed: int = 0,
    rows_per_shard: int = 10_000,
) -> Path:
    """Write a corpus; profile p measures a random subset of ``profile_sizes[p]`` genes."""
    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    gene_ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    profiles = [np.sort(rng.choice(n_genes, size=size, replace=False)) for size in profile_sizes]
    baseline = rng.gamma(0.6, 1.0, size=n_genes)
    programs = rng.gamma(0.5, 2.0, size=(n_programs, n_genes))

    def rows(n: int, split: str) -> pa.Table:
        profile_id = rng.integers(len(profiles), size=n)
        mix = rng.dirichlet(np.full(n_programs, 0.3), size=n)
        gene_index, counts, offsets = [], [], [0]
        for i in range(n):
            genes = profiles[profile_id[i]]
            rate = baseline[genes] + mix[i] @ programs[:, genes]
            c = rng.poisson(depth * rate / rate.sum())
            keep = c > 0
            gene_index.append(genes[keep].astype(np.int32))
            counts.append(c[keep].astype(np.int32))
            offsets.append(offsets[-1] + int(keep.sum()))
        off = pa.array(np.asarray(offsets, dtype=np.int32))
        return pa.table({
            "gene_index": pa.ListArray.from_arrays(off, pa.array(np.concatenate(gene_index))),
            "counts": pa.ListArray.from_arrays(off, pa.array(np.concatenate(counts))),
            "profile_id": pa.array(profile_id.astype(np.int32)),
            "source": pa.array([f"synthetic{p}" for p in profile_id]),
            "sample_id": pa.array([f"{split}-{i}" for i in range(n)]),
            "batch": pa.array([f"b{i % 3}" for i in range(n)]),
            "perturbation": pa.array([None] * n, type=pa.string()),
            "is_control": pa.array([False] * n),
            "cell_type": pa.array([f"program{int(np.argmax(m))}" for m in mix]),
            "tissue": pa.array([None] * n, type=pa.string()),
        })

    for split, n in (("train", n_train), ("validation", n_validation)):
        table = rows(n, split)
        n_shards = max(1, -(-n // rows_per_shard))
        for s in range(n_shards):
            part = table.slice(s * rows_per_shard, rows_per_shard)
            pq.write_table(part, out / "data" / f"{split}-{s:05d}-of-{n_shards:05d}.parquet")
    (out / "vocabulary.json").write_text(json.dumps({"gene_ids": gene_ids, "symbols": [""] * n_genes}))
    (out / "profiles.json").write_text(json.dumps({"profiles": [
        {"profile_id": p, "source": f"synthetic{p}", "gene_index": genes.tolist()} for p, genes in enumerate(profiles)
    ]}))
    return out
