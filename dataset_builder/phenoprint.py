"""K562 "phenoprint" curation: keep perturbations with a consistent phenotype, and every control.

Paper (TXFM_SPEC §2): embed the K562 set with an earlier model, compute each perturbation's
consistency p-value (§3), keep perturbations with p < 0.1 and all non-targeting controls.

Embedding: a ``.npy`` file of embeddings for the input's rows (e.g. written by ``txfm embed`` with
a TxFM checkpoint), or — the bootstrap when no model exists yet — PCA of log-normalised counts
(ln(1 + 10⁵·x/Σx)) over the most frequently detected genes, fitted on control cells. Embeddings
are standardised per batch on that batch's controls (centre-scale), as in §3.

Consistency p-value of a perturbation p with cells C_p: observed score s_p = mean over c ∈ C_p of
cos(e_c, mean of C_p without c) (leave-one-out); null = cos(e_r, mean of C_p) for N random cells r
outside C_p; p = (1 + #{null ≥ s_p}) / (N + 1). Perturbations with fewer than 2 cells get p = 1.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorpusBuildError

LIBRARY_SIZE = 1e5


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def standardise_per_batch(embedding: np.ndarray, batch: np.ndarray, is_control: np.ndarray) -> np.ndarray:
    """Centre-scale each batch on its control cells (all its cells when it has < 2 controls)."""
    out = np.empty_like(embedding, dtype=np.float32)
    for name in np.unique(batch):
        rows = batch == name
        reference = rows & is_control
        if reference.sum() < 2:
            reference = rows
        mean = embedding[reference].mean(axis=0)
        std = embedding[reference].std(axis=0)
        out[rows] = (embedding[rows] - mean) / np.where(std > 1e-8, std, 1.0)
    return out


def consistency_pvalues(
    embedding: np.ndarray, labels: np.ndarray, is_control: np.ndarray, n_null: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Consistency p-value of every non-control perturbation (see module docstring)."""
    unit = _unit(np.asarray(embedding, dtype=np.float64))
    rng = np.random.default_rng(seed)
    pvalues: dict[str, float] = {}
    perturbations = sorted({str(p) for p, c in zip(labels, is_control) if not c and p is not None})
    label_array = np.array([str(p) for p in labels], dtype=object)
    for name in perturbations:
        members = np.nonzero((label_array == name) & ~is_control)[0]
        if len(members) < 2:
            pvalues[name] = 1.0
            continue
        vectors = unit[members]
        total = vectors.sum(axis=0)
        loo = _unit(total[None, :] - vectors)
        observed = float(np.mean(np.sum(vectors * loo, axis=1)))
        candidates = rng.integers(0, len(unit), size=n_null)
        candidates = candidates[label_array[candidates] != name]
        mean = total / np.linalg.norm(total) if np.linalg.norm(total) > 0 else total
        null = unit[candidates] @ mean
        pvalues[name] = float((1 + np.count_nonzero(null >= observed)) / (len(null) + 1))
    return pvalues


def bootstrap_embedding(item, rows: np.ndarray, n_components: int, n_genes: int = 2000, max_fit: int = 20_000) -> np.ndarray:
    """PCA of log-normalised counts of ``rows`` (two bounded read passes; fit on controls)."""
    frequent = np.argsort(-item.stats["gene_samples"], kind="stable")[:n_genes]
    selector = np.zeros(len(item.gene_map.gene_ids), dtype=bool)
    selector[frequent] = True
    columns = np.nonzero(selector)[0]

    def log_normalised(counts) -> np.ndarray:
        mapped = item.gene_map.apply(counts)
        totals = np.maximum(np.asarray(mapped.sum(axis=1)).ravel(), 1)
        dense = mapped[:, columns].toarray().astype(np.float32)
        return np.log1p(dense * (LIBRARY_SIZE / totals)[:, None]).astype(np.float32)

    controls = rows[item.metadata["is_control"][rows]]
    fit_pool = controls if len(controls) >= max(10, n_components) else rows
    digest = int(hashlib.sha256(str(item.path.name).encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(digest)
    fit_rows = np.sort(rng.choice(fit_pool, size=min(max_fit, len(fit_pool)), replace=False))
    fit = np.concatenate([log_normalised(c[np.isin(np.arange(a, b), fit_rows)]) for a, b, c in item.blocks(fit_rows, "phenoprint fit")])
    mean = fit.mean(axis=0)
    _, _, components = np.linalg.svd(fit - mean, full_matrices=False)
    components = components[: min(n_components, components.shape[0])].T
    out = np.zeros((len(rows), components.shape[1]), dtype=np.float32)
    position = {int(r): i for i, r in enumerate(rows)}
    for start, stop, counts in item.blocks(rows, "phenoprint embed"):
        wanted = rows[(rows >= start) & (rows < stop)]
        out[[position[int(r)] for r in wanted]] = (log_normalised(counts[wanted - start]) - mean) @ components
    return out


def apply_phenoprint(item, options: dict[str, Any]) -> None:
    """Remove cells of inconsistent perturbations from ``item`` (a PreparedInput); keep controls."""
    threshold = float(options.get("p_threshold", 0.1))
    rows = np.nonzero(item.keep)[0]
    meta = item.metadata
    embeddings_path = options.get("embeddings")
    if embeddings_path:
        path = Path(embeddings_path)
        if path.is_dir():
            raise CorpusBuildError(
                f"{path}: phenoprint needs precomputed embeddings (.npy, one row per input sample): "
                "embed the K562 file with `txfm embed` using the checkpoint and pass the .npy file."
            )
        full = np.load(path, mmap_mode="r")
        if full.shape[0] != item.n:
            raise CorpusBuildError(f"{path}: {full.shape[0]} embeddings for {item.n} samples of {item.path}.")
        embedding, method = np.asarray(full[rows], dtype=np.float32), f"embeddings from {path.name}"
    else:
        n_components = int(options.get("n_components", 32))
        embedding, method = bootstrap_embedding(item, rows, n_components), "bootstrap: PCA of log-normalised counts"
    controls = meta["is_control"][rows]
    embedding = standardise_per_batch(embedding, meta["batch"][rows].astype(str), controls)
    pvalues = consistency_pvalues(embedding, meta["perturbation"][rows], controls, int(options.get("n_null", 10_000)))
    kept = {p for p, value in pvalues.items() if value < threshold}
    labels = np.array([str(p) for p in meta["perturbation"]], dtype=object)
    remove = ~meta["is_control"] & ~np.isin(labels, sorted(kept))
    item.remove(
        "phenoprint",
        remove,
        {
            "threshold": threshold,
            "embedding": method,
            "perturbations_tested": len(pvalues),
            "perturbations_kept": len(kept),
            "controls_kept": int((meta["is_control"] & item.keep).sum()),
        },
    )
