"""Cell-type benchmark (Kedzierska et al. 2025; TXFM_SPEC §3) on an AnnData with label and batch columns.

Per embedder and seed: Louvain NMI/ARI (best over a resolution sweep), silhouette ASW on cell
types, batch ASW (null with one batch), and linear / 2-layer-MLP probes (accuracy, macro F1) on a
75/25 split. The split holds out whole batches when there are at least four; with fewer (PBMC68k
has one) it falls back to a stratified cell-level split, and results.json says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anndata as ad
import numpy as np

from . import metrics as M
from .embedders import Embedder, drop_redundant
from .errors import EvaluationError, MissingObsColumnError
from .report import dataset_record, new_results, summarize

logger = logging.getLogger(__name__)

MIN_BATCHES_FOR_BATCH_SPLIT = 4
TEST_FRACTION = 0.25


def resolve_seeds(seeds: int | Sequence[int]) -> list[int]:
    """``5`` → ``[0, 1, 2, 3, 4]``; an explicit list is kept."""
    return list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]


def require_obs(adata: ad.AnnData, column: str, role: str) -> np.ndarray:
    if column not in adata.obs.columns:
        raise MissingObsColumnError(column, role, list(map(str, adata.obs.columns)))
    return adata.obs[column].astype(str).to_numpy()


def batch_level_split(batches: np.ndarray, seed: int, test_fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(test_fraction · n_batches)`` whole batches (at least one)."""
    rng = np.random.default_rng(seed)
    unique = np.unique(batches)
    n_test = max(1, int(round(test_fraction * len(unique))))
    test_batches = rng.choice(unique, n_test, replace=False)
    test = np.isin(batches, test_batches)
    return np.flatnonzero(~test), np.flatnonzero(test)


def stratified_cell_split(labels: np.ndarray, seed: int, test_fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Per label, ``round(test_fraction · n)`` cells to test; labels with one cell stay in training."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(test_fraction * len(members))) if len(members) >= 2 else 0
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def split_cells(labels: np.ndarray, batches: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The benchmark split and a sentence saying which kind it is."""
    n_batches = len(np.unique(batches))
    if n_batches >= MIN_BATCHES_FOR_BATCH_SPLIT:
        train, test = batch_level_split(batches, seed)
        if len(np.unique(labels[train])) >= 2 and len(test) > 0:
            return train, test, f"batch-level {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} split of {n_batches} batches"
    train, test = stratified_cell_split(labels, seed)
    return train, test, (
        f"stratified cell-level {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} split: only {n_batches} batch(es), "
        f"fewer than the {MIN_BATCHES_FOR_BATCH_SPLIT} a batch-level split needs"
    )


def celltype_metrics(emb: np.ndarray, labels: np.ndarray, batches: np.ndarray, seed: int, resolutions=M.DEFAULT_RESOLUTIONS) -> tuple[dict, str]:
    """All cell-type metrics of one embedding for one seed (fractions in [0, 1])."""
    clusters = M.louvain_scores(emb, labels, resolutions=resolutions, seed=seed)
    train, test, split = split_cells(labels, batches, seed)
    linear = M.probe_scores(emb[train], labels[train], emb[test], labels[test], kind="linear", seed=seed)
    mlp = M.probe_scores(emb[train], labels[train], emb[test], labels[test], kind="mlp", seed=seed)
    values = {
        "nmi": clusters["nmi"],
        "ari": clusters["ari"],
        "asw": M.silhouette_asw(emb, labels),
        "batch_asw": M.batch_asw(emb, labels, batches),
        "linear_accuracy": linear["accuracy"],
        "linear_macro_f1": linear["macro_f1"],
        "mlp_accuracy": mlp["accuracy"],
        "mlp_macro_f1": mlp["macro_f1"],
    }
    return values, split


def run_celltype_benchmark(
    adata: ad.AnnData,
    embedders: Sequence[Embedder],
    label_key: str = "cell_type",
    batch_key: str = "batch",
    seeds: int | Sequence[int] = 5,
    corpus: ad.AnnData | None = None,
    dataset_path: str | None = None,
    dataset_name: str | None = None,
    resolutions: Sequence[float] = M.DEFAULT_RESOLUTIONS,
    skipped: dict[str, str] | None = None,
    keep_embeddings: bool = True,
) -> dict:
    """Run the cell-type benchmark for every embedder; returns the results.json dictionary.

    Metrics are stored in % (NMI 64.2 as in the paper). Each embedder is fitted once (on ``corpus``
    when given, else on ``adata``) and embeds once; seeds vary the Louvain seed and the split.
    """
    labels = require_obs(adata, label_key, "label")
    batches = require_obs(adata, batch_key, "batch")
    if len(np.unique(labels)) < 2:
        raise EvaluationError(f"obs[{label_key!r}] has a single value: the cell-type benchmark needs several labels.")
    seeds = resolve_seeds(seeds)
    n_batches = len(np.unique(batches))
    notes = []
    if n_batches < 2:
        notes.append("batch ASW is undefined with a single batch and is reported as null.")
    protocol = {
        "seeds": seeds,
        "resolutions": list(resolutions),
        "clustering": "Louvain (networkx) on a 15-NN Euclidean graph of the embedding; best NMI and best ARI over resolutions",
        "asw": "scib convention: (silhouette + 1) / 2 on cell-type labels",
        "batch_asw": "scib: per cell type 1 − |silhouette on batch labels|, averaged; null with one batch",
        "probes": "logistic regression and MLP (one hidden layer of 256, i.e. two linear layers) on standardised embeddings",
        "units": "all metrics in % (×100).",
        "label_key": label_key,
        "batch_key": batch_key,
        "notes": notes,
    }
    results = new_results("celltype", dataset_record(adata, dataset_path, dataset_name, label_key=label_key, batch_key=batch_key, n_labels=len(np.unique(labels)), n_batches=n_batches), protocol)
    results["skipped"].update(skipped or {})
    embedders, redundant = drop_redundant(embedders, (corpus if corpus is not None else adata).n_vars)
    results["skipped"].update(redundant)
    embeddings, split = {}, ""
    for embedder in embedders:
        logger.info("cell-type benchmark: %s", embedder.name)
        emb = embedder.fit(corpus=corpus, eval_data=adata).embed(adata)
        per_seed: dict[str, list] = {}
        for seed in seeds:
            values, split = celltype_metrics(emb, labels, batches, seed, resolutions)
            for key, value in values.items():
                per_seed.setdefault(key, []).append(None if value is None else 100 * value)
        protocol["split"] = split
        results["models"][embedder.name] = {
            **embedder.describe(),
            "dim": int(emb.shape[1]),
            "metrics": {key: summarize(values) for key, values in per_seed.items()},
        }
        if keep_embeddings:
            embeddings[embedder.name] = emb
    if split.startswith("stratified"):
        notes.append(f"Probe split: {split}.")
    if keep_embeddings:
        results["_embeddings"] = embeddings
        results["_colours"] = {label_key: labels, batch_key: batches}
    return results
