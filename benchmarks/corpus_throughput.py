"""Corpus builder throughput and peak memory on a generated single-cell h5ad.

    .venv/bin/python -m benchmarks.corpus_throughput --cells 100000 25000 --genes 20000

For each size, an AnnData-layout h5ad (CSR ``X``, float32 counts, 1,500–3,000 non-zero genes per
cell, real Ensembl IDs) is written to a temporary folder in bounded chunks (nothing is committed),
then ``txfm build-corpus --source local`` runs in a fresh subprocess whose peak RSS
(``ru_maxrss``) is measured. Peak RSS must stay under 2 GiB and not grow with the file size.
Prints one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def run_build(h5ad: Path, out: Path) -> dict:
    """``txfm build-corpus`` in a child process; wall time and the child's peak RSS."""
    code = (
        "import resource, sys; from modeling_txfm.cli import main; code = main(sys.argv[1:]); "
        "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)"
    )
    command = [sys.executable, "-c", code, "build-corpus", "--source", "local", "--data-dir", str(h5ad),
               "--out", str(out), "--quiet"]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    peak_kib = int(completed.stderr.split("PEAK_RSS_KIB")[-1].split()[0])
    return {"seconds": seconds, "peak_rss_mib": peak_kib / 1024}


def import_baseline() -> float:
    """Peak RSS (MiB) of a child that only imports the CLI (torch comes with modeling_txfm)."""
    code = "import resource, modeling_txfm.cli, dataset_builder.build; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 25_000])
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--workdir", default=None, help="where to generate the file (default: a temp dir)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="txfm-bench-", dir=args.workdir))
    try:
        print(json.dumps({"import_only_peak_rss_mib": round(import_baseline(), 1)}), flush=True)
        for n_cells in args.cells:
            h5ad = root / f"cells{n_cells}.h5ad"
            start = time.perf_counter()
            nnz = write_h5ad(h5ad, n_cells, args.genes)
            generated = time.perf_counter() - start
            result = run_build(h5ad, root / f"corpus{n_cells}")
            corpus_bytes = sum(p.stat().st_size for p in (root / f"corpus{n_cells}" / "data").glob("*.parquet"))
            print(json.dumps({
                "cells": n_cells, "genes": args.genes, "nnz_per_cell": round(nnz / n_cells, 1),
                "input_gib": round(h5ad.stat().st_size / 2**30, 2), "corpus_gib": round(corpus_bytes / 2**30, 2),
                "generate_s": round(generated, 1), "build_s": round(result["seconds"], 1),
                "cells_per_s": round(n_cells / result["seconds"]), "peak_rss_mib": round(result["peak_rss_mib"], 1),
            }), flush=True)
            shutil.rmtree(root / f"corpus{n_cells}")
            h5ad.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
