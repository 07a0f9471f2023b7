"""The ``local`` source: any user h5ad / 10x / GCT / STAR / CSV files → the corpus format.

This is how ``make demo`` and SSL fine-tuning get their data. Each input file is its own source
(named after the file) and its own profile (its measured gene set). Curation thresholds default to
0 because the Table 1 single-cell thresholds (1,000 cells / 2,000 genes) would remove everything
from a small dataset; set ``min_genes`` / ``min_cells`` to apply them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from .build import DEFAULT_CONTROL_VALUES, InputSpec
from .errors import MissingSourceFilesError
from .readers import detect_format

SUPPORTED_SUFFIXES = (".h5ad", ".h5", ".gct", ".gct.gz", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")


def source_name(path: Path) -> str:
    """``wu2020_200_v0_11.h5ad`` → ``wu2020_200_v0_11``: the file name without data suffixes."""
    name = path.name
    for suffix in (".gz", ".h5ad", ".h5", ".gct", ".csv", ".tsv", ".txt"):
        name = name.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "local"


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Files and folders as given; a plain folder (not a 10x/STAR folder) expands to its data files."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise MissingSourceFilesError(f"{path}: no such file or folder (given with --data-dir).")
        if path.is_dir():
            try:
                detect_format(path)
                found.append(path)
                continue
            except ValueError:
                pass
            children = sorted(
                p for p in path.iterdir() if p.name.lower().endswith(SUPPORTED_SUFFIXES) or (p.is_dir() and (p / "matrix.mtx.gz").exists())
            )
            if not children:
                raise MissingSourceFilesError(f"{path}: folder holds no .h5ad/.h5/.gct/.csv/.tsv files or 10x folders.")
            found.extend(children)
        else:
            found.append(path)
    return found


def local_specs(
    paths: Sequence[str | Path],
    batch_key: str | None = "batch",
    cell_type_key: str | None = "cell_type,celltype,cell_types",
    tissue_key: str | None = "tissue",
    perturbation_key: str | None = None,
    control_key: str | None = None,
    control_values: Sequence[str] = DEFAULT_CONTROL_VALUES,
    layer: str = "auto",
    gene_column: str = "auto",
    samples_as_rows: bool | None = None,
    min_genes: int = 0,
    min_cells: int = 0,
) -> list[InputSpec]:
    """One :class:`InputSpec` per local file, all with the same metadata keys and thresholds."""
    specs = []
    for path in expand_inputs(paths):
        specs.append(
            InputSpec(
                path=str(path),
                source=source_name(path),
                layer=layer,
                gene_column=gene_column,
                samples_as_rows=samples_as_rows,
                batch_key=batch_key,
                cell_type_key=cell_type_key,
                tissue_key=tissue_key,
                perturbation_key=perturbation_key,
                control_key=control_key,
                control_values=tuple(control_values),
                min_genes=min_genes,
                min_cells=min_cells,
            )
        )
    names = [s.source for s in specs]
    for i, spec in enumerate(specs):  # two files with one stem in different folders: keep sources distinct
        if names.count(spec.source) > 1:
            spec.source = f"{spec.source}_{i}"
    return specs
