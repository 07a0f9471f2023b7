"""`txfm embed` of a generated 1,000,000-cell backed h5ad: peak RSS, and kill-and-resume (issue 8, item 5).

    .venv/bin/python -m benchmarks.reliability_embed_1m [--cells 1000000] [--genes 2000] [--per-cell 30]

The file is written block by block with h5py (never held in memory): CSR counts over a panel of
``--genes`` synthetic genes, ``--per-cell`` non-zero genes per cell. The model is deliberately tiny
(hidden 32, K 64, 1 layer): the point is the memory bound of the data path, not the model.

Three `txfm embed` processes, each measured with ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in a wrapper
process (the exact peak RSS of that process alone):

1. a run SIGKILLed once ``progress.json`` records about 40 % of the cells;
2. ``--resume``: must compute only the cells not recorded (counted by a hook on ``embed_counts``);
3. checks: the output's ``obsm['X_txfm']`` is [cells, 32], finite, and equals a direct in-process
   embedding of 2,000 random cells.

Prints and writes ``runs/reliability/embed_1m.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
HOOK = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(code)
"""
COUNTED_EMBED = """
import sys
from modeling_txfm import embedding
real = embedding.embed_counts
def counted(counts, *args, **kwargs):
    with open(sys.argv[1], "a") as log:
        log.write(f"{counts.shape[0]}\\n")
    return real(counts, *args, **kwargs)
embedding.embed_counts = counted
from modeling_txfm.cli import main
sys.exit(main(sys.argv[2:]))
"""


def write_backed_h5ad(path: Path, n_cells: int, genes: list[str], per_cell: int, seed: int = 0,
                      block: int = 100_000) -> None:
    """A CSR h5ad in AnnData's on-disk encoding, written in blocks of cells."""
    rng = np.random.default_rng(seed)
    n_genes = len(genes)
    popularity = rng.gamma(0.5, 1.0, n_genes)
    popularity /= popularity.sum()
    with h5py.File(path, "w") as handle:
        handle.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        ad.io.write_elem(handle, "obs", pd.DataFrame(index=[f"cell{i:07d}" for i in range(n_cells)]))
        ad.io.write_elem(handle, "var", pd.DataFrame(index=genes))
        group = handle.create_group("X")
        group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_genes)})
        nnz = n_cells * per_cell
        data = group.create_dataset("data", shape=(nnz,), dtype=np.float32, chunks=(1 << 20,))
        indices = group.create_dataset("indices", shape=(nnz,), dtype=np.int32, chunks=(1 << 20,))
        group.create_dataset("indptr", data=np.arange(n_cells + 1, dtype=np.int64) * per_cell)
        for start in range(0, n_cells, block):
            stop = min(start + block, n_cells)
            n = stop - start
            # per_cell distinct genes per cell, drawn by popularity (Gumbel top-k), sorted for canonical CSR
            keys = np.log(popularity)[None, :] - np.log(-np.log(np.maximum(rng.random((n, n_genes), dtype=np.float32), 1e-12)))
            chosen = np.sort(np.argpartition(-keys, per_cell, axis=1)[:, :per_cell], axis=1)
            counts = rng.geometric(0.3, size=(n, per_cell)).astype(np.float32)
            indices[start * per_cell: stop * per_cell] = chosen.ravel().astype(np.int32)
            data[start * per_cell: stop * per_cell] = counts.ravel()
        for name in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
            ad.io.write_elem(handle, name, {})


def make_model(folder: Path, genes: list[str]) -> None:
    import torch

    from modeling_txfm import TxFMConfig, TxFMForMaskedExpressionModeling, TxFMProcessor

    torch.manual_seed(0)
    config = TxFMConfig.from_preset("txfm-tiny", gene_ids=genes, gene_symbols=[""] * len(genes), hidden_size=32,
                                    num_hidden_layers=1, num_attention_heads=2, num_visible_genes=64,
                                    decoder_hidden_size=32, drop_path_rate=0.0)
    model = TxFMForMaskedExpressionModeling(config)
    model.save_pretrained(folder)
    TxFMProcessor.from_config(config).save_pretrained(folder)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return e


def embed_process(rss_file: Path, count_file: Path, args: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-c", HOOK, str(rss_file), sys.executable, "-c", COUNTED_EMBED, str(count_file),
               "embed", *args]
    return subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--per-cell", type=int, default=30)
    parser.add_argument("--chunk-size", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of cells recorded done at the kill")
    parser.add_argument("--workdir", help="keep files here (default: a temporary folder, removed)")
    parser.add_argument("--out", default=str(REPO / "runs" / "reliability" / "embed_1m.json"))
    args = parser.parse_args(argv)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="txfm-embed-1m-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        genes = [f"ENSG{50_000_000_000 + i:011d}" for i in range(args.genes)]
        source, model_dir, out = work / "cells.h5ad", work / "model", work / "embedded.h5ad"
        began = time.time()
        write_backed_h5ad(source, args.cells, genes, args.per_cell)
        generate_s = time.time() - began
        make_model(model_dir, genes)
        common = [str(source), "--model", str(model_dir), "--out", str(out), "--chunk-size", str(args.chunk_size),
                  "--batch-size", str(args.batch_size), "--device", "cpu"]

        # 1. killed
        progress = Path(f"{out}.embed-progress") / "progress.json"
        began = time.time()
        first = embed_process(work / "rss1", work / "count1", common)
        target = int(args.kill_at * args.cells)
        done = 0
        while done < target:
            if first.poll() is not None:
                raise RuntimeError(f"the first run ended before the kill: {first.stderr.read()[-3000:]}")
            try:
                done = json.loads(progress.read_text())["rows_done"]
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        # SIGKILL the embed process itself; its wrapper survives to report the killed process's peak RSS
        import psutil

        for child in psutil.Process(first.pid).children(recursive=True):
            child.send_signal(signal.SIGKILL)
        first.wait()
        killed_after_s = time.time() - began
        recorded = json.loads(progress.read_text())["rows_done"]
        computed_before_kill = sum(int(n) for n in (work / "count1").read_text().split())

        # 2. resumed
        began = time.time()
        second = embed_process(work / "rss2", work / "count2", [*common, "--resume"])
        _, stderr = second.communicate()
        if second.returncode != 0:
            raise RuntimeError(f"the resumed run failed: {stderr[-3000:]}")
        resumed_s = time.time() - began
        recomputed = sum(int(n) for n in (work / "count2").read_text().split())
        peak_resumed = int((work / "rss2").read_text())

        # 3. checks
        with h5py.File(out, "r") as handle:
            embedding = handle["obsm/X_txfm"]
            shape = tuple(embedding.shape)
            finite = all(np.isfinite(embedding[s: s + 100_000]).all() for s in range(0, shape[0], 100_000))
            rng = np.random.default_rng(1)
            rows = np.sort(rng.choice(args.cells, size=min(2000, args.cells), replace=False))
            stored = embedding[rows]
        from modeling_txfm import load_model
        from modeling_txfm.embedding import _H5adRows, embed_counts
        from modeling_txfm.processing_txfm import TxFMProcessor

        model = load_model(model_dir)
        reader = _H5adRows(source, None)
        chunk = reader.matrix[rows] if hasattr(reader.matrix, "__getitem__") else None
        direct = embed_counts(chunk, genes, model, TxFMProcessor.from_config(model.config), batch_size=256)
        reader.close()
        result = {
            "cells": args.cells, "genes": args.genes, "nonzeros_per_cell": args.per_cell,
            "file_gib": round(source.stat().st_size / 2**30, 3), "generate_s": round(generate_s, 1),
            "killed_after_s": round(killed_after_s, 1), "rows_recorded_at_kill": recorded,
            "rows_computed_before_kill": computed_before_kill,
            "rows_recomputed_after_resume": recomputed,
            "rows_recomputed_expected": args.cells - recorded,
            "resumed_s": round(resumed_s, 1),
            "cells_per_s_resumed": round((args.cells - recorded) / resumed_s, 1),
            "peak_rss_gib_killed_run": None,  # getrusage is only reported by a waited child: see the note
            "peak_rss_gib_resumed_run": round(peak_resumed / 2**30, 3),
            "output_shape": list(shape), "output_finite": bool(finite),
            "max_abs_diff_vs_direct_2000_cells": float(np.abs(stored - direct).max()),
        }
        result["ok"] = (recomputed == args.cells - recorded and finite and shape == (args.cells, 32)
                        and result["max_abs_diff_vs_direct_2000_cells"] < 1e-4 and peak_resumed < 3 * 2**30)
        rss1 = work / "rss1"
        if rss1.exists():
            result["peak_rss_gib_killed_run"] = round(int(rss1.read_text()) / 2**30, 3)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return result
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(0 if main().get("ok") else 1)
