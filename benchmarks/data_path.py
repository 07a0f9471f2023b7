"""Figure 5: the training data path (collator + DataLoader) and the corpus builder's conversion rate.

    .venv/bin/python -m benchmarks.data_path

Collation is timed on synthetic corpus rows shaped like DiverseRNA-1.4M (44,349-gene vocabulary,
panels of 8,248–36,695 genes, 1,500–3,000 non-zero genes per cell), through ``training.collator``
(the training engineer's) inside a ``torch.utils.data.DataLoader`` at batch 4, the txfm-s step's
batch; the ratio is against the txfm-s step time that figure 1 measured in the same process. The corpus
builder's rate comes from ``benchmarks.corpus_throughput`` (the corpus engineer's): ``txfm
build-corpus`` on a generated sparse h5ad in a fresh process, start-up included.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from modeling_txfm.configuration_txfm import PAPER_VOCABULARY_SIZE

from .common import Rounds, setup_threads, timed

PANEL_SIZES = (8_248, 21_310, 36_695)
BATCH = 4


class SyntheticRows(torch.utils.data.Dataset):
    """Corpus rows in the corpus contract's form (sorted non-zero gene positions, counts, profile)."""

    def __init__(self, n_rows: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.profiles = {p: np.sort(rng.choice(PAPER_VOCABULARY_SIZE, size, replace=False))
                         for p, size in enumerate(PANEL_SIZES)}
        self.rows = []
        for _ in range(n_rows):
            profile = int(rng.integers(len(PANEL_SIZES)))
            genes = np.sort(rng.choice(self.profiles[profile], int(rng.integers(1500, 3001)), replace=False))
            self.rows.append((genes.astype(np.int32), rng.geometric(0.45, len(genes)).astype(np.int32), profile))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        return index, self.rows[index]


def collate_factory(collator):
    from training.collator import RaggedRows

    def collate(items):
        indices = [i for i, _ in items]
        rows = RaggedRows.from_columns({
            "gene_index": [r[0] for _, r in items], "counts": [r[1] for _, r in items],
            "profile_id": [r[2] for _, r in items],
        })
        return collator(rows, [(0, 0, i) for i in indices])

    return collate


def figure_collator(step_seconds: float, rounds: int = 5, batches: int = 64) -> dict:
    """Batches/s of DataLoader + collator (main process, as on 2 cores) vs the txfm-s step rate."""
    from training.collator import TxFMCollator

    rows = SyntheticRows(BATCH * batches)
    collator = TxFMCollator(rows.profiles, PAPER_VOCABULARY_SIZE, num_visible_genes=2048)
    loader = torch.utils.data.DataLoader(rows, batch_size=BATCH, shuffle=True, collate_fn=collate_factory(collator))
    results = Rounds()
    for round_index in range(rounds + 1):
        seconds = timed(lambda: [None for _ in loader])
        if round_index:
            results.add("batch_s", seconds / len(loader))
    batch_s = results.median("batch_s")
    return {"batch": BATCH, "collate_ms_per_batch": 1e3 * batch_s, "step_s": step_seconds,
            "headroom": step_seconds / batch_s}


def figure_corpus_builder(n_cells: int = 60_000, n_genes: int = 20_000) -> dict:
    from .corpus_throughput import run_build, write_h5ad

    root = Path(tempfile.mkdtemp(prefix="txfm-bench-"))
    try:
        h5ad = root / "cells.h5ad"
        write_h5ad(h5ad, n_cells, n_genes)
        result = run_build(h5ad, root / "corpus")
        return {"cells": n_cells, "genes": n_genes, "build_s": result["seconds"],
                "cells_per_s": n_cells / result["seconds"], "peak_rss_mib": result["peak_rss_mib"]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    setup_threads()
    start = time.perf_counter()
    print(json.dumps(figure_collator(step_seconds=float("nan"))))
    print(json.dumps(figure_corpus_builder()))
    print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
