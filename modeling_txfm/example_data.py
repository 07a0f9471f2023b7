"""Real RNA-seq data that ships inside pip packages: the test and demo data of TxFM.

Nothing here is downloaded. The packages are installed with ``pip install --no-deps`` (see the
Makefile) only for their data files, so we locate the files without importing the packages.

| loader | source package | what |
|---|---|---|
| :func:`pbmc68k` | scanpy | 700 PBMCs × 765 genes, 10 cell types; counts recovered from ``raw`` |
| :func:`wu2020` | scirpy | 200 T cells × 30,727 genes, raw UMI counts, 16 subtypes, patient batches |
| :func:`celltypist_sample` | celltypist | 559 cells × 32,786 genes (symbols), counts as floats |
| :func:`airway` | inmoose | 8 bulk samples × 64,102 genes (Ensembl), raw counts |
| :func:`gtex_lung` | rnanorm | 30 GTEx lung samples × 818 chr21 genes (versioned Ensembl), raw counts |

Each loader returns an ``AnnData`` whose ``X`` holds raw integer counts (float32 or CSR).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


class ExampleDataMissingError(FileNotFoundError):
    """A package that ships example data is not installed."""


def package_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ExampleDataMissingError(
            f"The example data file {relative} ships in the `{package}` package, which is not installed. "
            f"Install it with `pip install --no-deps {package.replace('_', '-')}` (or run `make install`)."
        )
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.exists():
        raise ExampleDataMissingError(f"{path} is missing from the installed `{package}` package.")
    return path


PBMC68K = ("scanpy", "datasets/10x_pbmc68k_reduced.h5ad")
WU2020 = ("scirpy", "tests/data/wu2020_200_v0_11.h5ad")
CELLTYPIST_SAMPLE = ("celltypist", "data/samples/sample_cell_by_gene.csv")
AIRWAY = ("inmoose", "data/airway/airway.h5ad")
GTEX_LUNG = ("rnanorm", "files/gtex_lung.first30.chr21.csv.gz")


def pbmc68k() -> ad.AnnData:
    """scanpy's reduced 10x PBMC 68k: counts = round(expm1(raw.X) · n_counts / 1e4).

    ``obs["cell_type"]`` is the curated ``bulk_labels`` annotation (10 types); ``obs["batch"]`` is
    a single batch (the file has none).
    """
    source = ad.read_h5ad(package_file(*PBMC68K))
    raw = source.raw.X.toarray() if sp.issparse(source.raw.X) else np.asarray(source.raw.X)
    counts = np.rint(np.expm1(raw) * source.obs["n_counts"].to_numpy()[:, None] / 1e4).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": source.obs["bulk_labels"].astype(str).to_numpy(), "batch": "pbmc68k"},
        index=source.obs_names,
    )
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=source.raw.var_names.copy()))


def wu2020() -> ad.AnnData:
    """scirpy's Wu 2020 tumour T cells: raw UMI counts; ``cell_type`` = ``cluster_orig``, ``batch`` = patient."""
    source = ad.read_h5ad(package_file(*WU2020))
    obs = pd.DataFrame(
        {
            "cell_type": source.obs["cluster_orig"].astype(str).to_numpy(),
            "batch": source.obs["patient"].astype(str).to_numpy(),
        },
        index=source.obs_names,
    )
    return ad.AnnData(X=sp.csr_matrix(source.X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=source.var_names))


def celltypist_sample() -> ad.AnnData:
    """celltypist's sample matrix (cells × gene symbols, counts stored as floats)."""
    frame = pd.read_csv(package_file(*CELLTYPIST_SAMPLE), index_col=0)
    obs = pd.DataFrame({"batch": "celltypist_sample"}, index=frame.index.astype(str))
    return ad.AnnData(X=sp.csr_matrix(frame.to_numpy(dtype=np.float32)), obs=obs, var=pd.DataFrame(index=frame.columns))


def airway() -> ad.AnnData:
    """inmoose's airway bulk RNA-seq (8 samples, Ensembl IDs); ``batch`` = donor cell line."""
    source = ad.read_h5ad(package_file(*AIRWAY))
    obs = pd.DataFrame(
        {"batch": source.obs["cell"].astype(str).to_numpy(), "treatment": source.obs["dex"].astype(str).to_numpy()},
        index=source.obs_names,
    )
    return ad.AnnData(X=np.asarray(source.X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=source.var_names))


def gtex_lung() -> ad.AnnData:
    """rnanorm's first 30 GTEx lung samples (chr21 genes, versioned Ensembl IDs); ``batch`` = donor."""
    frame = pd.read_csv(package_file(*GTEX_LUNG), index_col=0)
    donors = [name.split("-")[0] + "-" + name.split("-")[1] for name in frame.index]
    obs = pd.DataFrame({"batch": donors, "tissue": "Lung"}, index=frame.index.astype(str))
    return ad.AnnData(X=frame.to_numpy(dtype=np.float32), obs=obs, var=pd.DataFrame(index=frame.columns))
