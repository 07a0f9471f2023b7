"""Gene-relationship recall of gene representations (TXFM_SPEC §3, "gene relationship recall of model parameters").

TxFM's two per-gene parameter sets — the encoder codebook E and the decoder's final-layer weights
— are standardised (per dimension) and reduced by PCA (32 components for the codebook, 256 for the
decoder, as in the paper, capped by the matrix rank); the baseline is the PCA gene loadings of
log-normalised expression fitted on the same data. All are scored with the bmdb recall (top/bottom
5 % cosine of all gene pairs) on the genes they share, per database, plus the recall curve over
percentile thresholds.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd

from . import metrics as M
from .embedders import LogNormEmbedder
from .relationships import DATABASES, load_relationships
from .report import dataset_record, new_results, summarize

logger = logging.getLogger(__name__)

PAPER_COMPONENTS = {"codebook": 32, "decoder": 256}


def standardise_pca(matrix: np.ndarray, n_components: int, seed: int = 0) -> np.ndarray:
    """z-score each dimension over genes, then project on the top principal components."""
    from sklearn.decomposition import PCA

    matrix = np.asarray(matrix, dtype=np.float64)
    std = matrix.std(axis=0)
    std[std < 1e-12] = 1.0
    z = (matrix - matrix.mean(axis=0)) / std
    k = max(1, min(n_components, z.shape[0] - 1, z.shape[1]))
    return PCA(n_components=k, random_state=seed).fit_transform(z).astype(np.float32)


def model_gene_vectors(model, kind: str) -> pd.DataFrame:
    """TxFM gene parameters indexed by gene symbol (genes without a unique symbol dropped)."""
    from modeling_txfm import gene_representations

    frame = gene_representations(model, kind=kind)
    symbols = pd.Index([str(s) if s else "" for s in model.config.gene_symbols])
    frame.index = symbols
    return frame[(frame.index != "") & ~frame.index.duplicated()]


def pca_gene_loadings(adata: ad.AnnData, n_components: int = 256, max_cells: int = 20_000, seed: int = 0) -> pd.DataFrame:
    """PCA loadings (components × sqrt(variance)) of log-normalised expression, one row per detected gene."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    rows = np.arange(adata.n_obs) if adata.n_obs <= max_cells else np.sort(rng.choice(adata.n_obs, max_cells, replace=False))
    subset = adata[rows]
    subset = subset.to_memory() if getattr(subset, "isbacked", False) else subset
    expression = LogNormEmbedder().embed(subset)
    detected = expression.std(axis=0) > 0
    k = min(n_components, expression.shape[0] - 1, int(detected.sum()))
    pca = PCA(n_components=k, random_state=seed).fit(expression[:, detected])
    loadings = pca.components_.T * np.sqrt(pca.explained_variance_)
    return pd.DataFrame(loadings, index=pd.Index(np.asarray(adata.var_names)[detected]).astype(str))


def _symbols(index: pd.Index) -> pd.Index:
    """Map Ensembl IDs to symbols when the data is keyed by Ensembl (the databases use HGNC symbols)."""
    if len(index) and all(str(g).startswith("ENS") for g in index[:50]):
        from modeling_txfm.gene_annotation import GeneAnnotation

        return pd.Index([s or "" for s in GeneAnnotation.load().symbols_for(list(index))])
    return index


def run_gene_benchmark(
    model=None,
    adata: ad.AnnData | None = None,
    relationships_dir: str | None = None,
    databases=DATABASES,
    components: dict[str, int] | None = None,
    pca_components: int = 256,
    dataset_path: str | None = None,
    dataset_name: str | None = None,
    shared_genes_only: bool = True,
    seed: int = 0,
) -> dict:
    """Recall of known relationships from gene representations; returns the results.json dictionary."""
    components = components or PAPER_COMPONENTS
    relationships = load_relationships(relationships_dir, databases)
    representations: dict[str, pd.DataFrame] = {}
    if model is not None:
        for kind, k in components.items():
            frame = model_gene_vectors(model, kind)
            representations[f"TxFM {kind} (PCA {k})"] = pd.DataFrame(standardise_pca(frame.to_numpy(), k, seed), index=frame.index)
    if adata is not None:
        loadings = pca_gene_loadings(adata, pca_components, seed=seed)
        loadings.index = _symbols(loadings.index)
        loadings = loadings[(loadings.index != "") & ~loadings.index.duplicated()]
        representations[f"PCA loadings ({loadings.shape[1]})"] = loadings
    if not representations:
        raise ValueError("Gene recall needs a model (--model) and/or expression data (--data).")
    notes = []
    shared = None
    if shared_genes_only and len(representations) > 1:
        shared = set.intersection(*(set(f.index) for f in representations.values()))
        notes.append(f"All representations are scored on the {len(shared)} genes they share.")
    record = dataset_record(adata, dataset_path, dataset_name) if adata is not None else {"name": "model parameters only", "path": None, "n_obs": 0, "n_vars": 0}
    protocol = {
        "seeds": [seed],
        "components": components,
        "recall_threshold": 0.05,
        "percentiles": list(M.DEFAULT_PERCENTILES),
        "databases": list(databases),
        "units": "recall in % (chance = 10 % at the 5 % threshold).",
        "notes": notes,
    }
    results = new_results("genes", record, protocol)
    for name, frame in representations.items():
        if shared is not None:
            frame = frame.loc[sorted(shared)]
        recall = M.relationship_recall(frame.to_numpy(), list(frame.index), relationships, percentiles=M.DEFAULT_PERCENTILES, seed=seed)
        metrics = {db: summarize([100 * v]) for db, v in recall["recall"].items()}
        metrics["mean"] = summarize([100 * recall["mean_recall"]])
        results["models"][name] = {
            "name": name,
            "fitted_on": "model parameters" if name.startswith("TxFM") else "PCA of the evaluation data",
            "n_genes": recall["n_genes"],
            "dim": int(frame.shape[1]),
            "metrics": metrics,
            "recall_per_database": {db: metrics[db] for db in recall["recall"]},
            "recall_curve": {db: [100 * v for v in curve] for db, curve in recall["curve"].items()},
            "n_relationships": recall["n_relationships"],
        }
    return results
