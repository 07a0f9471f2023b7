"""Figure 4: ``embed`` throughput on a real h5ad against the encoder's bare forward pass.

    .venv/bin/python -m benchmarks.inference [--rounds 5]

The file is scirpy's wu2020 (200 real cells × 30,727 genes, CSR counts), tiled to the wanted number
of cells in a temporary folder (never committed). The model vocabulary is the paper's 44,349 genes:
the file's genes that map to Ensembl IDs plus filler IDs, so the geometry is the real one. ``embed``
reads the file chunk by chunk (HDF5 → validate → gene match (cached) → sparse normalise → gather the
K columns → encoder); the bare forward gets the same inputs pre-made as tensors. Same batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch

from modeling_txfm import TxFMConfig, TxFMModel, TxFMProcessor, embed, example_data
from modeling_txfm.configuration_txfm import PAPER_VOCABULARY_SIZE
from modeling_txfm.gene_annotation import GeneAnnotation

from .common import Rounds, setup_threads, timed

#: Cells embedded per round: enough for ≥ 1 s of encoder work per preset on 2 cores.
CELLS = {"txfm-tiny": 1024, "txfm-s": 8}
BATCH_SIZE = 64


def wu2020_vocabulary(adata: ad.AnnData) -> tuple[list[str], list[str]]:
    """The file's mappable genes as Ensembl IDs (with symbols), padded with fillers to 44,349."""
    annotation = GeneAnnotation.load()
    ids, _ = annotation.to_ensembl(list(adata.var_names))
    measured = sorted({g for g in ids if g})
    fillers = [f"ENSG9{i:010d}" for i in range(PAPER_VOCABULARY_SIZE - len(measured))]
    gene_ids = measured + fillers
    return gene_ids, annotation.symbols_for(measured) + [""] * len(fillers)


def tiled_h5ad(adata: ad.AnnData, n_cells: int, folder: Path) -> Path:
    """Write ``n_cells`` rows (the real cells repeated) as a CSR h5ad; returns its path."""
    reps = -(-n_cells // adata.n_obs)
    matrix = sp.vstack([sp.csr_matrix(adata.X)] * reps, format="csr")[:n_cells]
    tiled = ad.AnnData(X=matrix.astype(np.float32), var=adata.var[[]].copy())
    tiled.obs_names = [f"cell{i}" for i in range(n_cells)]
    path = folder / f"wu2020_x{n_cells}.h5ad"
    tiled.write_h5ad(path)
    return path


def figure_embed_throughput(preset: str, rounds: int, folder: Path, log=print) -> dict:
    adata = example_data.wu2020()
    gene_ids, symbols = wu2020_vocabulary(adata)
    config = TxFMConfig.from_preset(preset, gene_ids=gene_ids, gene_symbols=symbols)
    torch.manual_seed(0)
    model = TxFMModel(config).eval()
    processor = TxFMProcessor.from_config(config)
    n_cells = CELLS[preset]
    path = tiled_h5ad(adata, n_cells, folder)

    # the bare encoder on pre-made tensors: the processor's output for the same cells, batch by batch
    counts = ad.read_h5ad(path).X
    names = list(adata.var_names)
    batches = [processor(counts[i : i + BATCH_SIZE], names) for i in range(0, n_cells, BATCH_SIZE)]

    @torch.inference_mode()
    def bare() -> None:
        for inputs in batches:
            model(inputs["gene_ids"], inputs["values"], inputs["attention_mask"])

    def full() -> None:
        embed(str(path), model, processor=processor, batch_size=BATCH_SIZE, show_progress=False)

    results = Rounds()
    for round_index in range(rounds + 1):
        bare_s, embed_s = timed(bare), timed(full)
        if round_index:
            results.add("bare", n_cells / bare_s)
            results.add("embed", n_cells / embed_s)
            log(f"  {preset} embed round {round_index}: bare {n_cells / bare_s:.1f} cells/s, embed {n_cells / embed_s:.1f} cells/s")
    path.unlink()
    return {
        "preset": preset,
        "cells": n_cells,
        "genes_in_file": adata.n_vars,
        "K": config.num_visible_genes,
        "bare_cells_per_s": results.median("bare"),
        "embed_cells_per_s": results.median("embed"),
        "embed_fraction_of_bare": results.ratio_median("embed", "bare"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=["txfm-tiny", "txfm-s"])
    args = parser.parse_args(argv)
    setup_threads()
    with tempfile.TemporaryDirectory(prefix="txfm-bench-") as folder:
        for preset in args.presets:
            print(json.dumps(figure_embed_throughput(preset, args.rounds, Path(folder))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
