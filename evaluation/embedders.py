"""Embedders behind one interface: ``fit`` on a training corpus (or on the evaluation data, or not at
all), then ``embed`` an AnnData of raw counts into a dense ``[n_obs, d]`` array.

TxFM must beat these on held-out data (TXFM_SPEC §4): raw counts, library-size + log1p normalised
counts (all genes, 5,000 and 1,024 highly variable genes), PCA, and scVI when installed. Every
embedder reads the data in row chunks (``adata.X[start:end]``), so backed h5ad files are embedded
without loading the count matrix, and genes are aligned by name to the genes seen at fit time
(a gene missing from the evaluation data is a zero column, not an error).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .errors import EmbedderUnavailableError, EvaluationError
from .metrics import DEFAULT_TARGET_SUM

logger = logging.getLogger(__name__)

CHUNK_SIZE = 4096
BASELINES = ("raw", "lognorm", "lognorm_hvg5000", "lognorm_hvg1024", "pca", "scvi")


# --------------------------------------------------------------------------------------------
# Chunked access and gene alignment
# --------------------------------------------------------------------------------------------


def iter_count_chunks(adata: ad.AnnData, chunk_size: int = CHUNK_SIZE, layer: str | None = None) -> Iterator[tuple[slice, sparse.csr_matrix]]:
    """Row chunks of the count matrix as CSR float32; works for in-memory and backed AnnData."""
    matrix = adata.layers[layer] if layer else adata.X
    for start in range(0, adata.n_obs, chunk_size):
        rows = slice(start, min(start + chunk_size, adata.n_obs))
        block = matrix[rows]
        block = block.tocsr() if sparse.issparse(block) else sparse.csr_matrix(np.asarray(block))
        yield rows, block.astype(np.float32)


def _normalise_rows(block: sparse.csr_matrix, target_sum: float) -> sparse.csr_matrix:
    totals = np.asarray(block.sum(axis=1)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    return (sparse.diags(scale.astype(np.float32)) @ block).tocsr()


class GeneAligner:
    """Maps the columns of a dataset onto a fixed gene list (missing genes become zero columns)."""

    def __init__(self, genes: Sequence[str]):
        self.genes = pd.Index([str(g) for g in genes])

    def selector(self, var_names: Sequence[str]) -> sparse.csr_matrix:
        """A ``[n_vars, n_genes]`` 0/1 matrix: ``X @ selector`` reorders and fills missing genes."""
        position = pd.Index([str(v) for v in var_names])
        if position.has_duplicates:
            position = position.where(~position.duplicated(), other="__duplicate__")
        cols = position.get_indexer(self.genes)
        present = np.flatnonzero(cols >= 0)
        return sparse.csr_matrix(
            (np.ones(present.size, dtype=np.float32), (cols[present], present)), shape=(len(position), len(self.genes))
        )

    def coverage(self, var_names: Sequence[str]) -> float:
        return float(np.mean(self.genes.isin(pd.Index([str(v) for v in var_names]))))


# --------------------------------------------------------------------------------------------
# Highly variable genes (dispersion-based, Seurat flavour) in numpy
# --------------------------------------------------------------------------------------------


def gene_moments(adata: ad.AnnData, target_sum: float = DEFAULT_TARGET_SUM, max_cells: int | None = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of library-normalised counts per gene, streamed over row chunks."""
    total, total_sq, n = np.zeros(adata.n_vars), np.zeros(adata.n_vars), 0
    for rows, block in iter_count_chunks(adata):
        if max_cells is not None and n >= max_cells:
            break
        norm = _normalise_rows(block, target_sum)
        total += np.asarray(norm.sum(axis=0)).ravel()
        total_sq += np.asarray(norm.multiply(norm).sum(axis=0)).ravel()
        n += rows.stop - rows.start
    mean = total / max(n, 1)
    var = total_sq / max(n, 1) - mean**2
    return mean, np.clip(var * n / max(n - 1, 1), 0, None)


def highly_variable_genes(adata: ad.AnnData, n_top: int, n_bins: int = 20, target_sum: float = DEFAULT_TARGET_SUM) -> np.ndarray:
    """Indices of the ``n_top`` most variable genes: Seurat's dispersion ranking, without scanpy.

    Dispersion ``var/mean`` of library-normalised counts is log-transformed and z-scored within
    20 bins of log mean expression, so that highly expressed genes do not win by their mean alone.
    Genes never detected are never selected. All genes are returned when ``n_top ≥ n_vars``.
    """
    if n_top >= adata.n_vars:
        return np.arange(adata.n_vars)
    mean, var = gene_moments(adata, target_sum)
    expressed = mean > 0
    dispersion = np.full(adata.n_vars, -np.inf)
    dispersion[expressed] = np.log(np.maximum(var[expressed], 1e-12) / mean[expressed])
    log_mean = np.log1p(mean)
    edges = np.quantile(log_mean[expressed], np.linspace(0, 1, n_bins + 1)[1:-1]) if expressed.any() else []
    bins = np.digitize(log_mean, edges)
    score = np.full(adata.n_vars, -np.inf)
    for b in np.unique(bins[expressed]):
        members = expressed & (bins == b)
        values = dispersion[members]
        spread = values.std()
        score[members] = (values - values.mean()) / spread if spread > 0 else 0.0
    order = np.lexsort((-mean, -score))  # ties broken by mean expression
    return np.sort(order[:n_top])


# --------------------------------------------------------------------------------------------
# The embedders
# --------------------------------------------------------------------------------------------


class Embedder:
    """Base class. ``fit`` returns ``self``; ``embed`` returns float32 ``[n_obs, dim]``."""

    name = "embedder"
    fitted_on = "nothing (no fitting)"

    def fit(self, corpus: ad.AnnData | None = None, eval_data: ad.AnnData | None = None) -> Embedder:
        return self

    def embed(self, adata: ad.AnnData) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "class": type(self).__name__, "fitted_on": self.fitted_on}

    @staticmethod
    def _fit_source(corpus: ad.AnnData | None, eval_data: ad.AnnData | None) -> tuple[ad.AnnData, str]:
        """Baselines are fitted on the training corpus when one is given, else on the evaluation data."""
        if corpus is not None:
            return corpus, "training corpus"
        if eval_data is None:
            raise EvaluationError("This embedder needs data to fit on: pass a corpus or the evaluation data.")
        return eval_data, "evaluation data (no training corpus given)"


class RawCountsEmbedder(Embedder):
    """The raw count vector itself, over the genes of the fit data (or of the evaluation data)."""

    name = "raw"

    def __init__(self):
        self.aligner: GeneAligner | None = None

    def fit(self, corpus=None, eval_data=None):
        source, self.fitted_on = self._fit_source(corpus, eval_data)
        self.fitted_on = "gene list of the " + self.fitted_on
        self.aligner = GeneAligner(source.var_names)
        return self

    def embed(self, adata):
        aligner = self.aligner or GeneAligner(adata.var_names)
        select = aligner.selector(adata.var_names)
        out = np.zeros((adata.n_obs, len(aligner.genes)), dtype=np.float32)
        for rows, block in iter_count_chunks(adata):
            out[rows] = (block @ select).toarray()
        return out


class LogNormEmbedder(Embedder):
    """Library-size normalised (to ``target_sum``) + log1p counts, optionally on ``n_hvg`` variable genes.

    The library size is the cell's total over *all* its genes, before gene selection.
    """

    def __init__(self, n_hvg: int | None = None, target_sum: float = DEFAULT_TARGET_SUM):
        self.n_hvg, self.target_sum = n_hvg, target_sum
        self.name = "lognorm" if n_hvg is None else f"lognorm_hvg{n_hvg}"
        self.aligner: GeneAligner | None = None

    def fit(self, corpus=None, eval_data=None):
        source, self.fitted_on = self._fit_source(corpus, eval_data)
        if self.n_hvg is None:
            genes = source.var_names
            self.fitted_on = "gene list of the " + self.fitted_on
        else:
            genes = source.var_names[highly_variable_genes(source, self.n_hvg, target_sum=self.target_sum)]
            self.fitted_on = "HVG selection on the " + self.fitted_on
        self.aligner = GeneAligner(genes)
        return self

    def embed(self, adata):
        aligner = self.aligner or GeneAligner(adata.var_names)
        select = aligner.selector(adata.var_names)
        out = np.zeros((adata.n_obs, len(aligner.genes)), dtype=np.float32)
        for rows, block in iter_count_chunks(adata):
            out[rows] = np.log1p((_normalise_rows(block, self.target_sum) @ select).toarray())
        return out


class PCAEmbedder(Embedder):
    """PCA of log-normalised counts (on ≤ ``n_hvg`` variable genes), fitted on the fit data.

    At most ``max_fit_cells`` cells (a seeded random subset) are used for the fit, which bounds the
    memory of the fit on large corpora; the projection itself streams over chunks.
    """

    def __init__(self, n_components: int = 128, n_hvg: int = 5000, max_fit_cells: int = 20_000, seed: int = 0):
        self.n_components, self.n_hvg, self.max_fit_cells, self.seed = n_components, n_hvg, max_fit_cells, seed
        self.name = "pca"
        self.lognorm = LogNormEmbedder(n_hvg=n_hvg)
        self.pca = None

    def fit(self, corpus=None, eval_data=None):
        from sklearn.decomposition import PCA

        source, where = self._fit_source(corpus, eval_data)
        self.lognorm.fit(source)
        rng = np.random.default_rng(self.seed)
        rows = np.arange(source.n_obs)
        if source.n_obs > self.max_fit_cells:
            rows = np.sort(rng.choice(source.n_obs, self.max_fit_cells, replace=False))
        subset = source[rows]
        subset = subset.to_memory() if getattr(subset, "isbacked", False) else subset
        matrix = self.lognorm.embed(subset)
        k = min(self.n_components, matrix.shape[0] - 1, matrix.shape[1])
        self.pca = PCA(n_components=k, random_state=self.seed, svd_solver="auto").fit(matrix)
        self.fitted_on = f"{where} ({len(rows)} cells, {matrix.shape[1]} genes, {k} components)"
        return self

    def embed(self, adata):
        if self.pca is None:
            self.fit(eval_data=adata)
        out = np.zeros((adata.n_obs, self.pca.n_components_), dtype=np.float32)
        select = self.lognorm.aligner.selector(adata.var_names)
        for rows, block in iter_count_chunks(adata):
            out[rows] = self.pca.transform(np.log1p((_normalise_rows(block, self.lognorm.target_sum) @ select).toarray()))
        return out


class ScVIEmbedder(Embedder):
    """scVI latent means (scvi-tools, optional extra ``txfm[scvi]``) on the fit data's HVGs."""

    name = "scvi"

    def __init__(self, n_latent: int = 30, n_hvg: int = 5000, max_epochs: int = 50, seed: int = 0):
        if importlib.util.find_spec("scvi") is None:
            raise EmbedderUnavailableError("scVI baseline skipped: scvi-tools is not installed (pip install 'txfm[scvi]').")
        self.n_latent, self.n_hvg, self.max_epochs, self.seed = n_latent, n_hvg, max_epochs, seed
        self.model = None
        self.genes = None

    def _prepare(self, adata: ad.AnnData) -> ad.AnnData:
        select = GeneAligner(self.genes).selector(adata.var_names)
        counts = sparse.vstack([block @ select for _, block in iter_count_chunks(adata)]).tocsr()
        return ad.AnnData(X=counts, obs=pd.DataFrame(index=[str(i) for i in range(adata.n_obs)]), var=pd.DataFrame(index=self.genes))

    def fit(self, corpus=None, eval_data=None):
        import scvi

        source, self.fitted_on = self._fit_source(corpus, eval_data)
        self.genes = source.var_names[highly_variable_genes(source, self.n_hvg)]
        scvi.settings.seed = self.seed
        train = self._prepare(source)
        scvi.model.SCVI.setup_anndata(train)
        self.model = scvi.model.SCVI(train, n_latent=self.n_latent)
        self.model.train(max_epochs=self.max_epochs, accelerator="cpu")
        return self

    def embed(self, adata):
        if self.model is None:
            self.fit(eval_data=adata)
        return np.asarray(self.model.get_latent_representation(self._prepare(adata)), dtype=np.float32)


class TxFMEmbedder(Embedder):
    """A TxFM checkpoint through ``modeling_txfm.embed`` (CLS embedding of the final block)."""

    name = "TxFM"
    fitted_on = "pretraining corpus of the checkpoint (no fitting on evaluation data)"

    def __init__(self, model, processor=None, batch_size: int = 64, name: str = "TxFM", chunk_size: int = CHUNK_SIZE):
        self.model_ref = model
        self.processor = processor
        self.batch_size, self.name, self.chunk_size = batch_size, name, chunk_size
        self.model = None

    def _load(self):
        """Import the model code lazily: the baselines must work without torch/transformers."""
        try:
            import modeling_txfm
        except ImportError as error:
            raise EmbedderUnavailableError(f"The TxFM model code cannot be imported: {error}") from error
        if self.model is None:
            if isinstance(self.model_ref, str | Path):
                self.model = modeling_txfm.load_model(self.model_ref)
                if self.processor is None and (Path(self.model_ref) / "preprocessor_config.json").is_file():
                    self.processor = modeling_txfm.TxFMProcessor.from_pretrained(str(self.model_ref))
            else:
                self.model = self.model_ref.eval()
        return modeling_txfm.embed

    def describe(self):
        info = super().describe()
        info["checkpoint"] = str(self.model_ref) if isinstance(self.model_ref, str | Path) else type(self.model_ref).__name__
        return info

    def embed(self, adata):
        embed = self._load()
        emb = embed(adata, self.model, self.processor, batch_size=self.batch_size, key_added=None, chunk_size=self.chunk_size, show_progress=False)
        return np.asarray(emb, dtype=np.float32)


def make_embedder(name: str, **kwargs) -> Embedder:
    """A baseline by name: raw, lognorm, lognorm_hvg<N>, pca, scvi."""
    if name == "raw":
        return RawCountsEmbedder()
    if name == "lognorm":
        return LogNormEmbedder()
    if name.startswith("lognorm_hvg"):
        return LogNormEmbedder(n_hvg=int(name.removeprefix("lognorm_hvg")))
    if name == "pca":
        return PCAEmbedder(**{k: v for k, v in kwargs.items() if k in {"n_components", "seed", "max_fit_cells"}})
    if name == "scvi":
        return ScVIEmbedder(**{k: v for k, v in kwargs.items() if k in {"seed", "max_epochs"}})
    raise EvaluationError(f"Unknown baseline {name!r}; choose from {', '.join(BASELINES)} (or lognorm_hvg<N>).")


def drop_redundant(embedders: Sequence[Embedder], n_genes_fitted: int) -> tuple[list[Embedder], dict[str, str]]:
    """Drop HVG baselines that would select every gene: they equal ``lognorm`` exactly.

    Computing them again costs evaluation time and adds identical rows to the tables; they are
    listed under ``skipped`` with the reason instead.
    """
    kept, skipped = [], {}
    has_all_genes = any(isinstance(e, LogNormEmbedder) and e.n_hvg is None for e in embedders)
    for embedder in embedders:
        if isinstance(embedder, LogNormEmbedder) and embedder.n_hvg and has_all_genes and embedder.n_hvg >= n_genes_fitted:
            skipped[embedder.name] = (
                f"identical to lognorm: the data has {n_genes_fitted:,} genes, not more than {embedder.n_hvg:,}"
            )
            continue
        kept.append(embedder)
    return kept, skipped


def build_embedders(
    baselines: Sequence[str] = BASELINES, model=None, processor=None, batch_size: int = 64, model_name: str = "TxFM"
) -> tuple[list[Embedder], dict[str, str]]:
    """TxFM (when ``model`` is given) followed by the baselines; unavailable ones are reported, not fatal."""
    embedders: list[Embedder] = []
    skipped: dict[str, str] = {}
    if model is not None:
        embedders.append(TxFMEmbedder(model, processor=processor, batch_size=batch_size, name=model_name))
    for name in baselines:
        try:
            embedders.append(make_embedder(name))
        except EmbedderUnavailableError as error:
            logger.warning("%s", error)
            skipped[name] = str(error)
    return embedders, skipped
