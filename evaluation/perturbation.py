"""Perturbation benchmark (Bendidi et al. 2024; TXFM_SPEC §3): ilisi, lin, knn, p.cst, bmdb, inv, avg.

Input: an AnnData (in memory or backed) of raw counts whose ``obs`` has the perturbed gene, a
control flag and the experimental batch. Per embedder the embedding is computed once, then each
post-processing on controls (center, center-scale, TVN) is applied per batch, every task is scored
for every seed, and the best post-processing per task (highest mean over seeds) is reported, as
in the paper. Seeds vary the held-out batches (lin, knn, inv), the ilisi subsample, the p.cst null
draw and the probe initialisation.

Scale: embeddings are dense ``[n_cells, d]``; nothing is ``n_cells × n_cells``. kNN and the
consistency null run in chunks, ilisi runs on ≤ ``max_ilisi_cells`` cells, inv decodes ≤
``inv_max_cells`` cells onto ``inv_genes`` highly variable genes, and the counts are only read in
row chunks (embedding, HVG moments, inv targets), so a backed 100,000 × 8,000 file fits in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import anndata as ad
import numpy as np

from . import metrics as M
from .celltype import require_obs, resolve_seeds
from .embedders import (
    Embedder,
    GeneAligner,
    _normalise_rows,
    drop_redundant,
    highly_variable_genes,
    iter_count_chunks,
)
from .errors import EvaluationError
from .postprocess import POSTPROCESSINGS, pca_standardise_on_controls, postprocess
from .relationships import DATABASES, load_relationships
from .report import dataset_record, new_results, summarize

logger = logging.getLogger(__name__)

TASKS = ("ilisi", "lin", "knn", "pcst", "bmdb", "inv")


@dataclass
class PerturbationProtocol:
    """Everything that defines a run; stored verbatim in results.json."""

    pert_col: str = "perturbation"
    control_col: str = "is_control"
    batch_col: str = "batch"
    control_value: str | None = None  # when the control column is not boolean: the value meaning "control"
    seeds: list[int] = field(default_factory=lambda: list(range(5)))
    postprocessings: list[str] = field(default_factory=lambda: list(POSTPROCESSINGS))
    test_fraction: float = 0.25
    n_null: int = 10_000
    alpha: float = 0.01
    recall_threshold: float = 0.05
    percentiles: list[float] = field(default_factory=lambda: list(M.DEFAULT_PERCENTILES))
    databases: list[str] = field(default_factory=lambda: list(DATABASES))
    knn_k: int = 20
    max_ilisi_cells: int = 20_000
    inv_genes: int = 1000
    inv_max_cells: int = 40_000
    probe_epochs: int = 20


def control_mask(adata: ad.AnnData, protocol: PerturbationProtocol) -> np.ndarray:
    """Boolean control flag from a boolean column, or from ``column == control_value``."""
    column = protocol.control_col
    if column not in adata.obs.columns:
        require_obs(adata, column, "control")
    values = adata.obs[column]
    if protocol.control_value is not None:
        return (values.astype(str) == str(protocol.control_value)).to_numpy()
    if values.dtype == bool:
        return values.to_numpy()
    text = values.astype(str).str.lower()
    if set(text.unique()) <= {"true", "false", "1", "0"}:
        return text.isin(["true", "1"]).to_numpy()
    raise EvaluationError(
        f"obs[{column!r}] is not boolean; pass the value that marks controls (CLI: --control-value, e.g. non-targeting)."
    )


def held_out_batches(batches: np.ndarray, seed: int, test_fraction: float) -> tuple[np.ndarray, str]:
    """Test mask holding out whole batches (≥ 1, and ≥ 1 left for training); controls stay with their batch."""
    unique = np.unique(batches)
    if len(unique) < 2:
        raise EvaluationError("The perturbation benchmark needs at least two batches: lin, knn and inv test on unseen batches.")
    n_test = min(len(unique) - 1, max(1, int(round(test_fraction * len(unique)))))
    test_batches = np.random.default_rng(seed).choice(unique, n_test, replace=False)
    return np.isin(batches, test_batches), f"{n_test} of {len(unique)} batches held out per seed"


def expression_targets(adata: ad.AnnData, rows: np.ndarray, n_genes: int) -> tuple[np.ndarray, int]:
    """Log-normalised expression of ``rows`` on the ``n_genes`` most variable genes (inv targets)."""
    genes = adata.var_names[highly_variable_genes(adata, n_genes)]
    select = GeneAligner(genes).selector(adata.var_names)
    wanted = np.zeros(adata.n_obs, dtype=bool)
    wanted[rows] = True
    parts = []
    for chunk_rows, block in iter_count_chunks(adata):
        keep = wanted[chunk_rows]
        if keep.any():
            parts.append(np.log1p((_normalise_rows(block[keep], M.DEFAULT_TARGET_SUM) @ select).toarray()))
    return np.concatenate(parts).astype(np.float32), len(genes)


@dataclass
class _Context:
    perts: np.ndarray
    batches: np.ndarray
    is_control: np.ndarray
    relationships: dict
    inv_rows: np.ndarray
    inv_targets: np.ndarray


def _lin_knn(emb: np.ndarray, ctx: _Context, test: np.ndarray, protocol: PerturbationProtocol, seed: int) -> tuple[float, float, dict]:
    """Linear probe and weighted kNN on perturbed cells, trained on seen batches, tested on held-out ones."""
    train_rows = np.flatnonzero(~test & ~ctx.is_control)
    seen = np.unique(ctx.perts[train_rows])
    test_rows = np.flatnonzero(test & ~ctx.is_control & np.isin(ctx.perts, seen))
    if train_rows.size == 0 or test_rows.size == 0:
        return float("nan"), float("nan"), {}
    lin = M.linear_probe(emb[train_rows], ctx.perts[train_rows], emb[test_rows], ctx.perts[test_rows], seed=seed, epochs=protocol.probe_epochs)
    knn = M.knn_retrieval(emb[train_rows], ctx.perts[train_rows], emb[test_rows], ctx.perts[test_rows], k=protocol.knn_k)
    detail = {"lin_top1": 100 * lin["top1"], "lin_top5": 100 * lin["top5"], "knn_top1": 100 * knn["top1"], "knn_top5": 100 * knn["top5"]}
    return 100 * (lin["top1"] + lin["top5"]) / 2, 100 * (knn["top1"] + knn["top5"]) / 2, detail


def _inv(emb: np.ndarray, ctx: _Context, test: np.ndarray) -> dict:
    rows = ctx.inv_rows
    train, held = ~test[rows], test[rows]
    if train.sum() < 2 or held.sum() < 2:
        return {"score": float("nan"), "spearman": float("nan"), "integrity": float("nan")}
    return M.invertibility(
        emb[rows[train]], ctx.inv_targets[train], emb[rows[held]], ctx.inv_targets[held], ctx.batches[rows[held]], ctx.is_control[rows[held]]
    )


def perturbation_means(emb: np.ndarray, perts: np.ndarray, is_control: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One mean embedding per perturbed gene (controls excluded), aggregated over all batches."""
    names, codes = np.unique(perts[~is_control], return_inverse=True)
    sums = np.zeros((len(names), emb.shape[1]))
    np.add.at(sums, codes, emb[~is_control])
    return names, sums / np.bincount(codes)[:, None]


def score_postprocessing(emb: np.ndarray, ctx: _Context, protocol: PerturbationProtocol) -> dict:
    """All tasks × seeds for one (already post-processed) embedding."""
    per_seed: dict[str, list] = {k: [] for k in (*TASKS, "lin_top1", "lin_top5", "knn_top1", "knn_top5", "inv_spearman", "inv_integrity")}
    names, means = perturbation_means(emb, ctx.perts, ctx.is_control)
    recall = M.relationship_recall(means, names, ctx.relationships, protocol.recall_threshold, protocol.percentiles)
    cst_emb = pca_standardise_on_controls(emb, ctx.is_control, ctx.batches)
    perturbed = ~ctx.is_control
    split = ""
    for seed in protocol.seeds:
        test, split = held_out_batches(ctx.batches, seed, protocol.test_fraction)
        per_seed["ilisi"].append(M.ilisi(emb, ctx.batches, max_cells=protocol.max_ilisi_cells, seed=seed))
        lin, knn, detail = _lin_knn(emb, ctx, test, protocol, seed)
        per_seed["lin"].append(lin)
        per_seed["knn"].append(knn)
        for key in ("lin_top1", "lin_top5", "knn_top1", "knn_top5"):
            per_seed[key].append(detail.get(key))
        cst = M.perturbation_consistency(cst_emb[perturbed], ctx.perts[perturbed], n_null=protocol.n_null, alpha=protocol.alpha, seed=seed)
        per_seed["pcst"].append(100 * cst["fraction_consistent"])
        per_seed["bmdb"].append(100 * recall["mean_recall"])
        inv = _inv(emb, ctx, test)
        per_seed["inv"].append(100 * inv["score"])
        per_seed["inv_spearman"].append(100 * inv["spearman"])
        per_seed["inv_integrity"].append(100 * inv["integrity"])
    return {"per_seed": per_seed, "recall": recall, "split": split}


def _best(scores_by_pp: dict[str, dict], task: str) -> str:
    def mean(pp):
        values = [v for v in scores_by_pp[pp]["per_seed"][task] if v is not None and not np.isnan(v)]
        return np.mean(values) if values else -np.inf

    return max(scores_by_pp, key=mean)


def summarise_model(scores_by_pp: dict[str, dict], seeds: list[int]) -> dict:
    """Best post-processing per task, the metrics under it, avg per seed, and the full grid."""
    best = {task: _best(scores_by_pp, task) for task in TASKS}
    metrics = {task: summarize(scores_by_pp[best[task]]["per_seed"][task]) for task in TASKS}
    for extra, task in (("lin_top1", "lin"), ("lin_top5", "lin"), ("knn_top1", "knn"), ("knn_top5", "knn"), ("inv_spearman", "inv"), ("inv_integrity", "inv")):
        metrics[extra] = summarize(scores_by_pp[best[task]]["per_seed"][extra])
    averages = []
    for i in range(len(seeds)):
        values = [scores_by_pp[best[t]]["per_seed"][t][i] for t in TASKS]
        values[0] = None if values[0] is None else 100 * values[0]  # ilisi enters the average × 100
        clean = [v for v in values if v is not None and not np.isnan(v)]
        averages.append(float(np.mean(clean)) if clean else None)
    metrics["avg"] = summarize(averages)
    recall = scores_by_pp[best["bmdb"]]["recall"]
    return {
        "metrics": metrics,
        "best_postprocessing": best,
        "recall_per_database": {db: summarize([None if np.isnan(v) else 100 * v]) for db, v in recall["recall"].items()},
        "recall_curve": {db: [None if np.isnan(v) else 100 * v for v in curve] for db, curve in recall["curve"].items()},
        "n_relationships": recall["n_relationships"],
        "by_postprocessing": {pp: {t: summarize(s["per_seed"][t]) for t in TASKS} for pp, s in scores_by_pp.items()},
    }


def run_perturbation_benchmark(
    adata: ad.AnnData,
    embedders: Sequence[Embedder],
    protocol: PerturbationProtocol | None = None,
    corpus: ad.AnnData | None = None,
    relationships_dir: str | None = None,
    dataset_path: str | None = None,
    dataset_name: str | None = None,
    skipped: dict[str, str] | None = None,
    keep_embeddings: bool = True,
    seeds: int | Sequence[int] | None = None,
) -> dict:
    """Run the perturbation benchmark for every embedder; returns the results.json dictionary."""
    protocol = protocol or PerturbationProtocol()
    if seeds is not None:
        protocol.seeds = resolve_seeds(seeds)
    perts = require_obs(adata, protocol.pert_col, "perturbation")
    batches = require_obs(adata, protocol.batch_col, "batch")
    is_control = control_mask(adata, protocol)
    for batch in np.unique(batches):
        if not is_control[batches == batch].any():
            raise EvaluationError(f"Batch {batch!r} has no control cells; every batch needs controls for post-processing.")
    rng = np.random.default_rng(0)
    inv_rows = np.arange(adata.n_obs) if adata.n_obs <= protocol.inv_max_cells else np.sort(rng.choice(adata.n_obs, protocol.inv_max_cells, replace=False))
    inv_targets, n_inv_genes = expression_targets(adata, inv_rows, protocol.inv_genes)
    ctx = _Context(perts, batches, is_control, load_relationships(relationships_dir, protocol.databases), inv_rows, inv_targets)
    record = dataset_record(
        adata, dataset_path, dataset_name, pert_col=protocol.pert_col, control_col=protocol.control_col, batch_col=protocol.batch_col,
        n_perturbations=int(len(np.unique(perts[~is_control]))), n_controls=int(is_control.sum()), n_batches=int(len(np.unique(batches))),
    )
    protocol_record = asdict(protocol) | {
        "units": "ilisi in [0, 1]; other metrics in %; avg = mean(ilisi × 100, lin, knn, p.cst, bmdb, inv).",
        "lin": "softmax regression (torch, AdamW) on perturbed cells of seen batches; mean of top-1 and top-5 accuracy on held-out batches",
        "knn": f"weighted cosine kNN (k={protocol.knn_k}, T=0.07) from held-out batches to seen batches; mean of top-1 and top-5",
        "pcst": f"PCA on controls + per-batch standardisation; leave-one-out cosine vs {protocol.n_null} random other-perturbation cells; p < {protocol.alpha}",
        "bmdb": f"per-perturbation mean embeddings; top/bottom {protocol.recall_threshold:.0%} cosine of all pairs; mean over databases",
        "inv": f"ridge decoding to log-normalised expression of {n_inv_genes} HVGs, trained on seen batches; mean of Spearman and structural integrity",
        "notes": [],
    }
    results = new_results("perturbation", record, protocol_record)
    results["skipped"].update(skipped or {})
    embedders, redundant = drop_redundant(embedders, (corpus if corpus is not None else adata).n_vars)
    results["skipped"].update(redundant)
    embeddings = {}
    for embedder in embedders:
        logger.info("perturbation benchmark: %s", embedder.name)
        emb = embedder.fit(corpus=corpus, eval_data=adata).embed(adata)
        scores = {}
        for pp in protocol.postprocessings:
            scores[pp] = score_postprocessing(postprocess(emb, pp, is_control, batches), ctx, protocol)
        protocol_record["split"] = next(iter(scores.values()))["split"]
        results["models"][embedder.name] = {**embedder.describe(), "dim": int(emb.shape[1]), **summarise_model(scores, protocol.seeds)}
        if keep_embeddings:
            embeddings[embedder.name] = postprocess(emb, "center", is_control, batches)
    if keep_embeddings:
        results["_embeddings"] = embeddings
        results["_colours"] = {"control": np.where(is_control, "control", "perturbed"), protocol.batch_col: batches}
    return results
