"""Package-shipped real data as builder inputs (demo and tests): nothing is downloaded.

Four files are used as they ship (their own formats: two h5ad, two CSV); scanpy's pbmc68k keeps
only log-normalised values, so its recovered counts are written to an h5ad first.
"""

from __future__ import annotations

from pathlib import Path

from modeling_txfm import example_data

#: obs columns of the shipped files that hold batch / cell type (first present wins).
EXAMPLE_BATCH_KEYS = "patient,cell,batch"
EXAMPLE_CELL_TYPE_KEYS = "cluster_orig,cell_type"


def example_inputs(folder: str | Path, include_pbmc68k: bool = True) -> list[Path]:
    """Paths of the package-shipped inputs (wu2020, celltypist, airway, gtex_lung [, pbmc68k])."""
    paths = [
        example_data.package_file(*example_data.WU2020),
        example_data.package_file(*example_data.CELLTYPIST_SAMPLE),
        example_data.package_file(*example_data.AIRWAY),
        example_data.package_file(*example_data.GTEX_LUNG),
    ]
    if include_pbmc68k:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "pbmc68k_counts.h5ad"
        if not target.exists():
            tmp = folder / ".pbmc68k_counts.h5ad.tmp"
            example_data.pbmc68k().write_h5ad(tmp)
            tmp.replace(target)
        paths.append(target)
    return paths
