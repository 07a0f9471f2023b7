"""TxFM processor: raw counts with gene identifiers → the model's visible-gene tensors.

The processor is the only place that knows about gene identifiers: the model sees vocabulary
positions only. For a matrix of samples × genes it

1. maps the gene identifiers to the vocabulary (Ensembl IDs with or without version suffix, or HGNC
   symbols through the vocabulary's symbols and, failing that, the GENCODE annotation table); input
   genes mapping to the same vocabulary gene are summed, unknown genes are dropped and reported;
2. validates the values (no NaN/inf/negatives, integer counts unless normalised input is opted in,
   no all-zero samples) and refuses input that would give silently wrong embeddings;
3. library-size normalises each sample to L over its mapped genes and applies ``log1p``;
4. chooses the K visible genes among the sample's profiled genes (the mapped genes of its dataset);
5. pads and returns tensors (``gene_ids``, ``values``, ``attention_mask``; with ``return_targets``
   also the dense ``targets`` and ``profiled_mask`` over the vocabulary for the loss).

**Visible genes at inference** (open in the paper; our decision): a *fixed* draw of K genes, uniform
without replacement from the profiled genes, seeded by ``inference_seed`` and depending only on the
*set* of profiled genes (not on column order, the sample, the batch or its size). Every sample of a
dataset therefore shows the model the same K genes, so embeddings of different samples differ only
through their expression, and an embedding never depends on the batch it was computed in. This
matches the training distribution (uniform K-of-profiled) exactly. ``inference_strategy="all"`` shows
every profiled gene instead (slower, quadratic in the number of genes; a distribution shift for
models trained with K genes) and is offered for experimentation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from transformers import BatchFeature, FeatureExtractionMixin

from .gene_annotation import ENSEMBL_RE, GeneAnnotation, GeneAnnotationError, MappingReport, duplicated

logger = logging.getLogger(__name__)

INFERENCE_STRATEGIES = ("fixed_draw", "all")


class TxFMInputError(ValueError):
    """Input that would give a silently wrong embedding: the message says what, where, and what to do."""


@dataclass
class GeneMatch:
    """How the columns of a user matrix map onto the vocabulary.

    ``aggregate`` [n_input_genes, n_profiled] sums input columns into the sorted, unique vocabulary
    positions ``profiled`` (the sample's profiled-gene set); unmapped columns have no entry.
    """

    profiled: np.ndarray  # [P] int64, sorted vocabulary positions
    aggregate: sp.csr_matrix  # [n_input_genes, P]
    n_input: int
    n_in_vocabulary: int  # input columns that landed in the vocabulary
    mapping: MappingReport

    @property
    def match_rate(self) -> float:
        return self.n_in_vocabulary / self.n_input if self.n_input else 0.0

    def summary(self) -> str:
        return (
            f"{self.n_in_vocabulary:,}/{self.n_input:,} input genes ({100 * self.match_rate:.1f} %) matched the "
            f"model vocabulary → {len(self.profiled):,} profiled vocabulary genes"
        )


def log_normalize(counts: np.ndarray | sp.spmatrix, library_size: float) -> np.ndarray | sp.csr_matrix:
    """x̃ = ln(1 + L·x/Σx) per row (sample). Rows must have a positive total."""
    if sp.issparse(counts):
        counts = sp.csr_matrix(counts, dtype=np.float64)
        totals = np.asarray(counts.sum(axis=1)).ravel()
        scaled = sp.diags(library_size / totals) @ counts
        scaled.data = np.log1p(scaled.data)
        return sp.csr_matrix(scaled)
    counts = np.asarray(counts, dtype=np.float64)
    return np.log1p(library_size * counts / counts.sum(axis=1, keepdims=True))


class TxFMProcessor(FeatureExtractionMixin):
    """Turns raw counts + gene identifiers into TxFM model inputs. See the module docstring."""

    model_input_names = ["gene_ids", "values", "attention_mask"]

    def __init__(
        self,
        gene_ids: Sequence[str] | None = None,
        gene_symbols: Sequence[str] | None = None,
        num_visible_genes: int = 2048,
        library_size: float = 1e5,
        inference_seed: int = 0,
        inference_strategy: str = "fixed_draw",
        min_match_rate: float = 0.3,
        **kwargs,
    ):
        kwargs.pop("feature_extractor_type", None)
        super().__init__(**kwargs)
        if not gene_ids:
            raise ValueError("TxFMProcessor needs the model's gene vocabulary (gene_ids)")
        if inference_strategy not in INFERENCE_STRATEGIES:
            raise ValueError(f"inference_strategy must be one of {INFERENCE_STRATEGIES}")
        self.gene_ids = [str(g) for g in gene_ids]
        self.gene_symbols = [str(s) for s in gene_symbols] if gene_symbols is not None else [""] * len(self.gene_ids)
        self.num_visible_genes = int(num_visible_genes)
        self.library_size = float(library_size)
        self.inference_seed = int(inference_seed)
        self.inference_strategy = inference_strategy
        self.min_match_rate = float(min_match_rate)
        self._lookup: dict[str, int] | None = None
        self._match_cache: dict[tuple, GeneMatch] = {}

    @classmethod
    def from_config(cls, config, **overrides) -> TxFMProcessor:
        """The processor that matches a model config (vocabulary, K, L, inference seed)."""
        return cls(
            gene_ids=config.gene_ids,
            gene_symbols=config.gene_symbols,
            num_visible_genes=config.num_visible_genes,
            library_size=config.library_size,
            inference_seed=config.inference_seed,
            **overrides,
        )

    def to_dict(self) -> dict:
        output = {k: v for k, v in super().to_dict().items() if not k.startswith("_")}
        return output

    @property
    def vocab_size(self) -> int:
        return len(self.gene_ids)

    # ----------------------------------------------------------------------------------------------
    # 1. genes
    # ----------------------------------------------------------------------------------------------

    def _vocabulary_lookup(self) -> dict[str, int]:
        """Ensembl ID and unambiguous symbol (exact and upper-case) → vocabulary position."""
        if self._lookup is None:
            lookup = {gene: i for i, gene in enumerate(self.gene_ids)}
            symbol_positions: dict[str, list[int]] = {}
            for i, symbol in enumerate(self.gene_symbols):
                if symbol:
                    symbol_positions.setdefault(symbol, []).append(i)
            for symbol, positions in symbol_positions.items():
                if len(positions) == 1:
                    lookup.setdefault(symbol, positions[0])
                    lookup.setdefault(symbol.upper(), positions[0])
            self._lookup = lookup
        return self._lookup

    def match_genes(self, gene_names: Sequence[str]) -> GeneMatch:
        """Map input gene identifiers to vocabulary positions; refuse duplicates and a low match rate."""
        names = [str(name).strip() for name in gene_names]
        key = tuple(names)
        if key in self._match_cache:
            return self._match_cache[key]
        repeated = duplicated(names)
        if repeated:
            raise TxFMInputError(
                f"{len(repeated)} gene identifiers occur more than once (e.g. {repeated[:5]}). Each column "
                "must be one gene: sum or drop the duplicated columns (or make names unique) before embedding."
            )
        positions, mapping = self._positions_of(names)
        columns = np.flatnonzero(positions >= 0)
        profiled, inverse = np.unique(positions[columns], return_inverse=True)
        aggregate = sp.csr_matrix(
            (np.ones(len(columns)), (columns, inverse)), shape=(len(names), len(profiled))
        )
        match = GeneMatch(profiled.astype(np.int64), aggregate, len(names), len(columns), mapping)
        if len(columns) < len(names):
            logger.info("TxFM gene matching: %s", match.summary())
        if match.match_rate < self.min_match_rate or len(profiled) == 0:
            examples = [n for n, p in zip(names, positions) if p < 0][:5]
            raise TxFMInputError(
                f"Only {match.summary()} (minimum {100 * self.min_match_rate:.0f} %). Unmatched examples: "
                f"{examples}. Gene identifiers must be human Ensembl gene IDs or HGNC symbols: pass "
                "`gene_col=` to use another `var` column, or lower `min_match_rate` if the overlap is truly small."
            )
        if len(columns) < len(names) and len(profiled) < len(columns):
            logger.info("%d input genes mapped onto an already-mapped gene and are summed", len(columns) - len(profiled))
        self._match_cache[key] = match
        return match

    def _positions_of(self, names: list[str]) -> tuple[np.ndarray, MappingReport]:
        lookup = self._vocabulary_lookup()
        report = MappingReport(n_input=len(names))
        positions = np.full(len(names), -1, dtype=np.int64)
        unresolved: list[int] = []
        for i, name in enumerate(names):
            match = ENSEMBL_RE.match(name)
            key = match.group(1) if match else name
            position = lookup.get(key, lookup.get(key.upper(), -1) if not match else -1)
            if position >= 0:
                positions[i] = position
                report.n_ensembl += bool(match)
                report.n_symbol += not match
            elif not match:
                unresolved.append(i)
            else:
                report.unmapped.append(name)
        if unresolved:  # symbols unknown to the vocabulary's own symbols: ask the annotation table
            try:
                annotation = _annotation()
            except GeneAnnotationError:
                annotation = None
            mapped = annotation.to_ensembl([names[i] for i in unresolved])[0] if annotation else [None] * len(unresolved)
            for i, gene in zip(unresolved, mapped):
                position = lookup.get(gene, -1) if gene else -1
                positions[i] = position
                if position >= 0:
                    report.n_symbol += 1
                else:
                    report.unmapped.append(names[i])
        return positions, report

    # ----------------------------------------------------------------------------------------------
    # 2. values
    # ----------------------------------------------------------------------------------------------

    @staticmethod
    def validate_counts(
        counts: np.ndarray | sp.spmatrix,
        counts_are_normalized: bool = False,
        sample_names: Sequence[str] | None = None,
        gene_names: Sequence[str] | None = None,
    ) -> None:
        """Refuse NaN/inf, negative and (unless opted in) non-integer values, naming a culprit."""
        matrix = sp.coo_matrix(counts) if sp.issparse(counts) else None
        values = matrix.data if matrix is not None else np.asarray(counts)
        if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
            raise TxFMInputError(f"Counts must be real numbers, got dtype {values.dtype}.")

        def where(bad: np.ndarray) -> str:
            flat = np.flatnonzero(bad)[0]
            if matrix is not None:
                row, col = matrix.row[flat], matrix.col[flat]
            else:
                row, col = np.unravel_index(flat, values.shape) if values.ndim == 2 else (0, flat)
            sample = sample_names[row] if sample_names is not None else f"row {row}"
            gene = gene_names[col] if gene_names is not None else f"column {col}"
            return f"sample {sample!r}, gene {gene!r} (value {values.flat[flat]!r}; {int(bad.sum()):,} such values)"

        if values.size == 0:
            return
        if np.issubdtype(values.dtype, np.floating):
            nonfinite = ~np.isfinite(values)
            if nonfinite.any():
                raise TxFMInputError(f"Counts contain NaN or infinite values at {where(nonfinite)}. Fix or drop them.")
        negative = values < 0
        if negative.any():
            raise TxFMInputError(
                f"Counts contain negative values at {where(negative)}: TxFM needs raw counts. Were they "
                "scaled or batch-corrected? Use the raw counts (e.g. `adata.layers['counts']`, `layer=`)."
            )
        if not counts_are_normalized and np.issubdtype(values.dtype, np.floating):
            fractional = values != np.round(values)
            if fractional.any():
                hint = f" They look log-transformed (max {values.max():.2f})." if values.max() < 30 else ""
                raise TxFMInputError(
                    f"Counts are not integers at {where(fractional)}.{hint} TxFM expects raw counts: pass the "
                    "raw counts, or `counts_are_normalized=True` for library-size-normalised, *not* logged, "
                    "input (CPM/TPM)."
                )

    # ----------------------------------------------------------------------------------------------
    # 3–5. normalise, choose visible genes, make tensors
    # ----------------------------------------------------------------------------------------------

    def inference_columns(self, n_profiled: int) -> np.ndarray:
        """Indices (into the sorted profiled genes) shown at inference: a fixed seeded draw of K."""
        if self.inference_strategy == "all" or n_profiled <= self.num_visible_genes:
            return np.arange(n_profiled)
        rng = np.random.default_rng(self.inference_seed)
        return np.sort(rng.choice(n_profiled, size=self.num_visible_genes, replace=False))

    def __call__(
        self,
        counts: np.ndarray | sp.spmatrix,
        gene_names: Sequence[str],
        *,
        training: bool = False,
        generator: np.random.Generator | None = None,
        return_targets: bool = False,
        counts_are_normalized: bool = False,
        sample_names: Sequence[str] | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Raw counts [n_samples, n_genes] (dense or scipy sparse) → model inputs.

        ``training=True`` draws K visible genes per sample at random (from ``generator``);
        otherwise the deterministic inference choice applies (module docstring).
        """
        if isinstance(gene_names, (str, bytes)):
            raise TxFMInputError("gene_names must be a sequence of gene identifiers (one per column), not a string.")
        if isinstance(counts, np.ma.MaskedArray) and np.ma.getmask(counts).any():
            raise TxFMInputError("Counts are a masked array with masked entries: fill or drop them first (no silent fill).")
        try:
            counts = counts if sp.issparse(counts) else np.asarray(counts)
        except (ValueError, TypeError) as error:  # ragged nested lists, objects numpy cannot stack
            raise TxFMInputError(f"Counts cannot be read as a samples × genes matrix ({error}).") from error
        if counts.ndim != 2:
            raise TxFMInputError(f"Counts must be a 2-D samples × genes matrix, got shape {counts.shape}")
        if counts.shape[1] != len(gene_names):
            raise TxFMInputError(
                f"The matrix has {counts.shape[1]:,} gene columns but {len(gene_names):,} gene identifiers were given."
            )
        self.validate_counts(counts, counts_are_normalized, sample_names, gene_names)
        match = self.match_genes(gene_names)
        mapped = sp.csr_matrix(counts, dtype=np.float64) @ match.aggregate  # [n, P]
        with np.errstate(over="ignore"):
            totals = np.asarray(mapped.sum(axis=1)).ravel()
        overflow = np.flatnonzero(~np.isfinite(totals))
        if len(overflow):  # L·x/Σx with Σx = inf would silently give an all-zero profile
            raise TxFMInputError(
                f"{len(overflow):,} samples have a total count too large for float64 (e.g. "
                f"{_first_names(overflow, sample_names)}): these are "
                "not counts. Pass raw counts."
            )
        empty = np.flatnonzero(totals <= 0)
        if len(empty):
            raise TxFMInputError(
                f"{len(empty):,} samples have no counts in any gene of the model vocabulary (e.g. "
                f"{_first_names(empty, sample_names)}). "
                "An all-zero sample has no expression profile to embed: filter them out first."
            )
        normalized = log_normalize(mapped, self.library_size)  # [n, P] sparse
        if training:
            generator = generator or np.random.default_rng()
            chosen = self.random_columns(len(totals), len(match.profiled), generator)  # [n, K]
            values = np.take_along_axis(normalized.toarray(), chosen, axis=1)
        else:
            columns = self.inference_columns(len(match.profiled))
            chosen = np.broadcast_to(columns, (len(totals), len(columns)))
            values = normalized[:, columns].toarray()
        data = {
            "gene_ids": match.profiled[chosen],
            "values": values.astype(np.float32),
            "attention_mask": np.ones(chosen.shape, dtype=np.int64),
        }
        if return_targets:
            targets = np.zeros((len(totals), self.vocab_size), dtype=np.float32)
            targets[:, match.profiled] = normalized.toarray()
            profiled_mask = np.zeros((len(totals), self.vocab_size), dtype=bool)
            profiled_mask[:, match.profiled] = True
            data.update(targets=targets, profiled_mask=profiled_mask)
        return BatchFeature(data, tensor_type=return_tensors)

    def random_columns(self, n_samples: int, n_profiled: int, generator: np.random.Generator) -> np.ndarray:
        """[n, min(K, P)] indices, each row a uniform draw without replacement (vectorised)."""
        k = min(self.num_visible_genes, n_profiled)
        scores = generator.random((n_samples, n_profiled))
        return np.sort(np.argpartition(scores, k - 1, axis=1)[:, :k], axis=1)


def _first_names(rows: np.ndarray, sample_names: Sequence[str] | None, n: int = 5) -> list[str]:
    """Up to ``n`` sample names (or ``row i``) of the offending rows, for error messages."""
    return [str(sample_names[i]) if sample_names is not None else f"row {i}" for i in rows[:n]]


def _annotation() -> GeneAnnotation:
    return GeneAnnotation.default()


def to_device(batch: BatchFeature, device: torch.device | str) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}
