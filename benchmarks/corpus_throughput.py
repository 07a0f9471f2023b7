"""Corpus builder throughput and peak memory on a generated single-cell h5ad.

    .venv/bin/python -m benchmarks.corpus_throughput --cells 100000 25000 --genes 20000
    .venv/bin/python -m benchmarks.corpus_throughput --cells 60000 --repeats 3 --baseline-ref HEAD~5

For each size, an AnnData-layout h5ad (CSR ``X``, float32 counts, 1,500–3,000 non-zero genes per
cell, real Ensembl IDs) is written to a temporary folder in bounded chunks (nothing is committed),
then ``txfm build-corpus --source local`` runs in a fresh subprocess whose peak RSS
(``ru_maxrss``) is measured. Peak RSS must stay under 2 GiB and not grow with the file size.
Reported per run: end-to-end wall time (includes the ~5–8 s import of torch/transformers by the
``txfm`` CLI), the in-process ``build_corpus`` wall and CPU time, and cells/s for both.

``--baseline-ref REF`` also builds with ``dataset_builder/`` as of git ``REF`` (extracted to a
temporary folder), interleaved with the current tree run by run, so both see the same machine load
(the 2 cores are shared); medians, the speed ratio and whether the outputs are byte-identical are
printed. Prints one JSON line per size and variant.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def write_h5ad(path: Path, n_cells: int, n_genes: int, seed: int = 0, chunk: int = 2000) -> int:
    """A CSR h5ad in the anndata ≥ 0.8 encoding, generated chunk by chunk; returns the non-zeros."""
    from dataset_builder.harmonise import default_annotation

    genes = default_annotation().table["ensembl_id"].to_numpy()[:n_genes].astype("S")
    rng = np.random.default_rng(seed)
    string = h5py.string_dtype()
    with h5py.File(path, "w") as handle:
        handle.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        group = handle.create_group("X")
        group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": np.array([n_cells, n_genes])})
        data = group.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 20,))
        indices = group.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
        indptr = [0]
        for start in range(0, n_cells, chunk):
            rows = min(chunk, n_cells - start)
            target = rng.integers(1500, 3001, size=rows)
            mask = rng.random((rows, n_genes), dtype=np.float32) < (target / n_genes)[:, None].astype(np.float32)
            row_index, column = np.nonzero(mask)
            values = (rng.geometric(0.45, size=len(column))).astype(np.float32)
            offset = data.shape[0]
            data.resize((offset + len(values),))
            indices.resize((offset + len(values),))
            data[offset:], indices[offset:] = values, column.astype(np.int32)
            indptr.extend((offset + np.cumsum(np.bincount(row_index, minlength=rows))).tolist())
        group.create_dataset("indptr", data=np.asarray(indptr, dtype=np.int64))
        for name, index, extra in (("obs", [f"cell{i}" for i in range(n_cells)], {"batch": [f"lane{i % 8}" for i in range(n_cells)]}),
                                   ("var", genes.astype(str).tolist(), {})):
            frame = handle.create_group(name)
            frame.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index",
                                "column-order": np.array(list(extra), dtype=object).astype(string) if extra else np.array([], dtype="S")})
            frame.create_dataset("_index", data=np.array(index, dtype=object), dtype=string)
            frame["_index"].attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
            for column_name, values in extra.items():
                frame.create_dataset(column_name, data=np.array(values, dtype=object), dtype=string)
                frame[column_name].attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        return int(indptr[-1])


CHILD = """
import resource, sys, time
sys.path.insert(0, sys.argv.pop(1))  # the dataset_builder tree under test comes first
import dataset_builder.cli as corpus_cli
from modeling_txfm.cli import main

build = corpus_cli.build_corpus

def timed(*args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        return build(*args, **kwargs)
    finally:
        print("BUILD_S", time.perf_counter() - wall, time.process_time() - cpu, file=sys.stderr)

corpus_cli.build_corpus = timed
code = main(sys.argv[1:])
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def run_build(h5ad: Path, out: Path, tree: Path | None = None) -> dict:
    """``txfm build-corpus`` in a child process; wall time, in-process build time and peak RSS.

    ``tree``: a folder holding the ``dataset_builder`` package to test (default: this checkout).
    """
    tree = tree or Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", CHILD, str(tree), "build-corpus", "--source", "local", "--data-dir", str(h5ad),
               "--out", str(out), "--quiet"]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    peak_kib = int(completed.stderr.split("PEAK_RSS_KIB")[-1].split()[0])
    build_wall, build_cpu = (float(x) for x in completed.stderr.split("BUILD_S")[-1].split()[:2])
    return {"seconds": seconds, "build_s": build_wall, "build_cpu_s": build_cpu, "peak_rss_mib": peak_kib / 1024}


def corpus_digest(folder: Path) -> str:
    """SHA-256 over every file of a corpus (names and bytes): equal digests = identical outputs."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def extract_tree(ref: str, root: Path) -> Path:
    """``dataset_builder/`` as of git ``ref``, extracted under ``root`` (for baseline runs)."""
    tree = root / "baseline-tree"
    tree.mkdir()
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(repo), "archive", ref, "dataset_builder"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def summarise(label: str, n_cells: int, runs: list[dict]) -> dict:
    """Medians over repeated runs of one variant."""
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {
        "variant": label, "runs": len(runs),
        "build_s": round(median["build_s"], 2), "build_cpu_s": round(median["build_cpu_s"], 2),
        "build_cells_per_s": round(n_cells / median["build_s"]),
        "end_to_end_s": round(median["seconds"], 2), "end_to_end_cells_per_s": round(n_cells / median["seconds"]),
        "peak_rss_mib": round(max(run["peak_rss_mib"] for run in runs), 1),
    }


def import_baseline() -> float:
    """Peak RSS (MiB) of a child that only imports the CLI (torch comes with modeling_txfm)."""
    code = "import resource, modeling_txfm.cli, dataset_builder.build; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 25_000])
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--workdir", default=None, help="where to generate the file (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=1, help="builds per size and variant (medians reported)")
    parser.add_argument("--baseline-ref", default=None, help="also time dataset_builder/ at this git ref, interleaved")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="txfm-bench-", dir=args.workdir))
    try:
        print(json.dumps({"import_only_peak_rss_mib": round(import_baseline(), 1), "load_avg": os.getloadavg()[0]}), flush=True)
        variants: dict[str, Path | None] = {"current": None}
        if args.baseline_ref:
            variants = {f"baseline {args.baseline_ref}": extract_tree(args.baseline_ref, root), **variants}
        for n_cells in args.cells:
            h5ad = root / f"cells{n_cells}.h5ad"
            start = time.perf_counter()
            nnz = write_h5ad(h5ad, n_cells, args.genes)
            generated = time.perf_counter() - start
            runs: dict[str, list[dict]] = {label: [] for label in variants}
            digests, corpus_bytes = {}, 0
            for _ in range(args.repeats):
                for label, tree in variants.items():  # interleaved: both variants see the same load
                    out = root / f"corpus{n_cells}"
                    runs[label].append(run_build(h5ad, out, tree))
                    digests[label] = corpus_digest(out)
                    corpus_bytes = sum(p.stat().st_size for p in (out / "data").glob("*.parquet"))
                    shutil.rmtree(out)
            size = {"cells": n_cells, "genes": args.genes, "nnz_per_cell": round(nnz / n_cells, 1),
                    "input_gib": round(h5ad.stat().st_size / 2**30, 2), "corpus_gib": round(corpus_bytes / 2**30, 2),
                    "generate_s": round(generated, 1), "load_avg": os.getloadavg()[0]}
            summaries = {label: summarise(label, n_cells, r) for label, r in runs.items()}
            for summary in summaries.values():
                print(json.dumps({**size, **summary}), flush=True)
            if args.baseline_ref:
                base = summaries[f"baseline {args.baseline_ref}"]
                print(json.dumps({
                    "cells": n_cells,
                    "build_speedup": round(base["build_s"] / summaries["current"]["build_s"], 2),
                    "build_cpu_ratio": round(base["build_cpu_s"] / summaries["current"]["build_cpu_s"], 2),
                    "outputs_identical": len(set(digests.values())) == 1,
                }), flush=True)
            h5ad.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
