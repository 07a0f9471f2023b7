"""Readers: one class per on-disk format that RNA-seq counts really come in.

Every reader exposes the same small interface (:class:`MatrixReader`): the gene identifiers as
written in the file, the sample ids and per-sample metadata (``obs``), and ``read_rows(start,
stop)`` returning a SciPy CSR block *samples × genes* of raw values. The builder only ever asks for
row blocks, so a reader that can slice its file (backed h5ad, 10x ``.h5``) keeps peak memory
bounded by the block, not by the file. Validation that the values are counts lives in
:func:`to_counts`, shared by all readers, so every format refuses normalised data the same way.

Formats:

* ``.h5ad`` — counts in ``layers["counts"]``, ``X`` or ``raw`` (new ``raw/X`` and legacy ``raw.X``
  layouts); dense, CSR or CSC; read through h5py in row blocks (never fully loaded).
* 10x ``.h5`` — CellRanger v3 (``matrix/``, ``features/feature_type``) and v2 (one group per genome).
* 10x ``matrix.mtx(.gz)`` folders with ``features.tsv(.gz)``/``genes.tsv`` and ``barcodes.tsv(.gz)``
  (text format: loaded whole, it cannot be sliced).
* GTEx ``.gct(.gz)`` — ``#1.2`` header, dimension line, ``Name  Description  sample…`` genes × samples.
* TCGA / GDC STAR gene counts — one ``*.tsv`` per sample (``gene_id gene_name gene_type
  unstranded …``, ``N_*`` summary rows) or STAR's ``ReadsPerGene.out.tab``; a GDC sample sheet
  beside them gives sample barcodes and projects.
* plain CSV / TSV matrices in either orientation (samples × genes or genes × samples).
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from modeling_txfm.hdf5_probe import HDF5ProbeError, probe_hdf5

from .errors import CorpusBuildError, CorruptInputError, NotCountsError

#: Values within this distance of an integer count as integers (float32/float64 round-off, e.g.
#: celltypist's ``0.999999999999999``); anything further away is not a count.
COUNT_TOLERANCE = 1e-3
INT32_MAX = np.iinfo(np.int32).max
ENSEMBL_LIKE = re.compile(r"^ENS[A-Z]*G\d{11}")

_IDENTIFIER_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "ensembl_ids", "feature_id", "ensembl", "id")


def _integers_within_tolerance(data: np.ndarray, rounded: np.ndarray) -> bool:
    """Every value finite and within :data:`COUNT_TOLERANCE` of ``rounded`` (one scratch array).

    NaN and ±inf make the deviation NaN, which fails the comparison, so one reduction covers them.
    """
    if len(data) == 0:
        return True
    deviation = np.subtract(data, rounded)
    np.abs(deviation, out=deviation)
    return bool(deviation.max() <= COUNT_TOLERANCE)


def to_counts(values: sp.csr_matrix, path: str | Path, first_row: int = 0, allow_non_integer: bool = False):
    """Check that a block holds raw counts and return it as canonical CSR with int32 values.

    Why here and not later: a normalised or log-transformed matrix silently trains a model on the
    wrong objective. Values within :data:`COUNT_TOLERANCE` of an integer are rounded (float storage
    of counts); anything else is refused with the file, row and value, unless ``allow_non_integer``
    (then values are rounded to the nearest integer, an explicit user decision).
    """
    matrix = values.tocsr() if not sp.isspmatrix_csr(values) else values
    if not matrix.has_canonical_format:
        matrix = matrix.copy()
        matrix.sum_duplicates()
    data = matrix.data

    def where(position: int) -> str:
        row = int(np.searchsorted(matrix.indptr, position, side="right") - 1) + first_row
        return f"row {row} (0-based sample index), column {int(matrix.indices[position])}"

    if data.dtype.kind == "b":
        data = data.astype(np.int64)
    if data.dtype.kind == "f":
        rounded = np.rint(data)
        if not _integers_within_tolerance(data, rounded):  # rare: find and name the first bad value
            bad = ~np.isfinite(data)
            if bad.any():
                position = int(np.argmax(bad))
                raise NotCountsError(
                    f"{path}: non-finite value {data[position]} at {where(position)}. The file is "
                    "truncated or not a count matrix; re-download it or point the builder at raw counts."
                )
            off = np.abs(data - rounded) > COUNT_TOLERANCE
            if off.any() and not allow_non_integer:
                position = int(np.argmax(off))
                raise NotCountsError(
                    f"{path}: value {data[position]!r} at {where(position)} is not an integer count; the "
                    "matrix looks normalised or log-transformed. TxFM trains on raw counts: use the counts "
                    "layer (e.g. --layer counts or raw), or pass --allow-non-integer to round values "
                    "(only if they are counts stored with noise)."
                )
        data = rounded
    if len(data) and (data.min() < 0 or data.max() > INT32_MAX):  # two reductions, no masks on the fast path
        negative = data < 0
        if negative.any():
            position = int(np.argmax(negative))
            raise NotCountsError(f"{path}: negative value {data[position]} at {where(position)}; counts are ≥ 0.")
        too_big = data > INT32_MAX
        if too_big.any():
            position = int(np.argmax(too_big))
            raise NotCountsError(f"{path}: value {data[position]} at {where(position)} exceeds the int32 range.")
    counts = sp.csr_matrix((data.astype(np.int32), matrix.indices, matrix.indptr), shape=matrix.shape)
    counts.eliminate_zeros()
    return counts


class MatrixReader(ABC):
    """A samples × genes count matrix on disk, read in row blocks."""

    path: Path
    #: True when reading a row block costs ``rows × genes`` (dense storage) rather than its non-zeros.
    dense: bool = False
    #: Reading any block re-parses the whole file (text matrices with genes as rows): use big blocks.
    full_pass_per_block: bool = False

    @property
    @abstractmethod
    def gene_names(self) -> list[str]:
        """Gene identifiers in column order, as written in the file (symbols or Ensembl IDs)."""

    @property
    @abstractmethod
    def obs(self) -> pd.DataFrame:
        """Per-sample metadata; the index holds the sample ids, in row order."""

    @abstractmethod
    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Raw values of samples ``start:stop`` (CSR, any numeric dtype)."""

    @property
    def n_samples(self) -> int:
        return len(self.obs)

    @property
    def gene_symbols(self) -> list[str] | None:
        """Symbols shipped beside Ensembl IDs (GCT Description, STAR gene_name), if any."""
        return None

    def row_nnz(self) -> np.ndarray | None:
        """Stored entries per row when the format knows them without reading values (CSR indptr)."""
        return None

    def describe(self) -> str:
        return f"{type(self).__name__}({self.path})"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release open file handles."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------- h5ad


def _open_h5(path: Path) -> h5py.File:
    try:
        if path.is_file():
            probe_hdf5(path)  # a file that would crash libhdf5 fails here, in a child process
        return h5py.File(path, "r")
    except HDF5ProbeError as error:
        raise CorruptInputError(str(error)) from error
    except (OSError, ValueError) as error:
        raise CorruptInputError(
            f"{path}: cannot open as HDF5 ({error}). The file is truncated or not an h5ad/10x .h5 "
            "file; re-download it (compare its checksum) or convert it with anndata."
        ) from error


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class _H5Matrix:
    """A dense dataset or a CSR/CSC group inside an HDF5 file, sliced by rows."""

    def __init__(self, element: h5py.Dataset | h5py.Group, path: Path, name: str):
        self.path, self.name = path, name
        self.element = element
        if isinstance(element, h5py.Dataset):
            self.kind = "dense"
            if element.ndim != 2:
                raise CorruptInputError(f"{path}: '{name}' is {element.ndim}-dimensional, expected a matrix.")
            self.shape = tuple(int(s) for s in element.shape)
            return
        attrs = element.attrs
        encoding = attrs.get("encoding-type", attrs.get("h5sparse_format", ""))
        encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
        self.kind = {"csr_matrix": "csr", "csr": "csr", "csc_matrix": "csc", "csc": "csc"}.get(encoding, "")
        shape = attrs.get("shape", attrs.get("h5sparse_shape"))
        if not self.kind or shape is None or not {"data", "indices", "indptr"} <= set(element.keys()):
            raise CorruptInputError(
                f"{path}: '{name}' is neither a dense matrix nor a CSR/CSC sparse group "
                f"(encoding {encoding!r}, members {sorted(element.keys())})."
            )
        self.shape = (int(shape[0]), int(shape[1]))
        self._indptr = np.asarray(element["indptr"][:], dtype=np.int64)
        expected = self.shape[0] + 1 if self.kind == "csr" else self.shape[1] + 1
        n_stored = (element["data"].shape[0], element["indices"].shape[0])
        if len(self._indptr) == expected and (self._indptr[0] != 0 or (np.diff(self._indptr) < 0).any()
                                              or n_stored[0] != n_stored[1]):
            raise CorruptInputError(
                f"{path}: '{name}' is damaged: indptr is not non-decreasing from 0, or {n_stored[0]} values but "
                f"{n_stored[1]} indices are stored. Re-download the file."
            )
        if len(self._indptr) != expected or self._indptr[-1] > element["data"].shape[0]:
            raise CorruptInputError(
                f"{path}: '{name}' is inconsistent (indptr length {len(self._indptr)}, expected "
                f"{expected}; {element['data'].shape[0]} stored values for {self._indptr[-1]} indexed): "
                "the file is truncated or corrupt. Re-download it."
            )

    def row_nnz(self) -> np.ndarray | None:
        return np.diff(self._indptr) if self.kind == "csr" else None

    def sample(self, n_rows: int) -> np.ndarray:
        """Up to ``n_rows`` first rows' stored values (to guess whether they are counts)."""
        n = min(n_rows, self.shape[0])
        if self.kind == "dense":
            return np.asarray(self.element[:n]).ravel()
        if self.kind == "csr":
            return np.asarray(self.element["data"][: self._indptr[n]])
        return np.asarray(self.element["data"][: min(200_000, self._indptr[-1])])

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        try:
            if self.kind == "dense":
                return sp.csr_matrix(np.asarray(self.element[start:stop]))
            if self.kind == "csr":
                indptr = self._indptr[start : stop + 1]
                low, high = int(indptr[0]), int(indptr[-1])
                data = self.element["data"][low:high]
                indices = self.element["indices"][low:high]
                if len(indices) and (indices.min() < 0 or indices.max() >= self.shape[1]):
                    raise ValueError(f"column indices outside 0..{self.shape[1] - 1}")  # scipy does not check
                return sp.csr_matrix((data, indices, indptr - low), shape=(stop - start, self.shape[1]))
            return self._read_csc_rows(start, stop)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
            raise CorruptInputError(
                f"{self.path}: reading rows {start}:{stop} of '{self.name}' failed ({error}); the file "
                "is truncated or corrupt. Re-download it."
            ) from error

    def _read_csc_rows(self, start: int, stop: int, block: int = 8_000_000) -> sp.csr_matrix:
        """Rows of a CSC matrix by scanning its columns in bounded blocks (no full load)."""
        rows, cols, vals = [], [], []
        total = int(self._indptr[-1])
        for low in range(0, total, block):
            high = min(total, low + block)
            indices = np.asarray(self.element["indices"][low:high])
            if len(indices) and (indices.min() < 0 or indices.max() >= self.shape[0]):
                raise ValueError(f"row indices outside 0..{self.shape[0] - 1}")
            inside = (indices >= start) & (indices < stop)
            if not inside.any():
                continue
            positions = np.nonzero(inside)[0] + low
            rows.append(indices[inside] - start)
            cols.append(np.searchsorted(self._indptr, positions, side="right") - 1)
            vals.append(np.asarray(self.element["data"][low:high])[inside])
        if not rows:
            return sp.csr_matrix((stop - start, self.shape[1]))
        coo = sp.coo_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(stop - start, self.shape[1])
        )
        return coo.tocsr()


def _read_frame(handle: h5py.File, key: str, path: Path) -> pd.DataFrame | None:
    """An AnnData dataframe (obs / var / raw/var) in the current or legacy (pre-0.7) encoding."""
    from anndata.io import read_elem

    if key not in handle:
        return None
    element = handle[key]
    if isinstance(element, h5py.Group) and "encoding-type" in element.attrs:
        return read_elem(element)
    if isinstance(element, h5py.Dataset) and element.dtype.names:  # legacy compound records
        table = element[:]
        frame = pd.DataFrame({name: table[name] for name in element.dtype.names})
        index_name = "index" if "index" in frame.columns else frame.columns[0]
        frame.index = pd.Index(_decode(frame.pop(index_name).to_numpy()))
        for column in frame.columns:
            if frame[column].dtype.kind == "S":
                frame[column] = _decode(frame[column].to_numpy())
        return frame
    raise CorruptInputError(f"{path}: cannot read '{key}' (unknown AnnData encoding).")


class H5adReader(MatrixReader):
    """An AnnData ``.h5ad`` file, counts read in row blocks straight from HDF5.

    ``layer``: ``"auto"`` (``layers["counts"]`` if present, else the first of ``X`` / ``raw`` whose
    first rows hold integers), ``"X"``, ``"raw"`` or a layer name. ``gene_column``: a ``var`` column
    holding gene identifiers; ``"auto"`` prefers a column of Ensembl IDs over the ``var`` index.
    """

    def __init__(self, path: str | Path, layer: str = "auto", gene_column: str = "auto"):
        self.path = Path(path)
        self.handle = _open_h5(self.path)
        try:
            self.layer, self.matrix = self._select_matrix(layer)
            var_key = "raw/var" if self.layer == "raw" and "raw/var" in self.handle else "raw.var"
            if self.layer != "raw":
                var_key = "var"
            var = _read_frame(self.handle, var_key, self.path)
            self._obs = _read_frame(self.handle, "obs", self.path)
        except CorpusBuildError:
            self.handle.close()
            raise
        except Exception as error:  # h5py/anndata/pandas on a damaged file raise many types; one meaning
            self.handle.close()
            raise CorruptInputError(
                f"{self.path}: damaged h5ad ({type(error).__name__}: {error}). Re-download it or re-write it "
                "with anndata."
            ) from error
        if var is None or self._obs is None:
            raise CorruptInputError(f"{self.path}: h5ad file lacks 'obs' or '{var_key}'.")
        if self.matrix.shape != (len(self._obs), len(var)):
            raise CorruptInputError(
                f"{self.path}: matrix '{self.layer}' has shape {self.matrix.shape} but obs/var have "
                f"{len(self._obs)}/{len(var)} rows: the file is inconsistent."
            )
        self._genes = self._gene_identifiers(var, gene_column)
        self._obs.index = self._obs.index.astype(str)
        self.dense = self.matrix.kind == "dense"
        self.full_pass_per_block = self.matrix.kind == "csc"  # every CSC row block scans all columns

    def _candidates(self) -> dict[str, tuple[str, object]]:
        found: dict[str, tuple[str, object]] = {}
        layers = self.handle.get("layers")
        if isinstance(layers, h5py.Group):
            for name in layers:
                found[name] = (f"layers/{name}", layers[name])
        if "X" in self.handle:
            found["X"] = ("X", self.handle["X"])
        for key in ("raw/X", "raw.X"):
            if key in self.handle:
                found["raw"] = (key, self.handle[key])
                break
        return found

    def _select_matrix(self, layer: str) -> tuple[str, _H5Matrix]:
        candidates = self._candidates()
        if layer != "auto":
            if layer not in candidates:
                raise CorruptInputError(
                    f"{self.path}: no matrix {layer!r}; available: {sorted(candidates)} "
                    "(use 'X', 'raw' or a layer name)."
                )
            key, element = candidates[layer]
            return layer, _H5Matrix(element, self.path, key)
        order = ["counts"] if "counts" in candidates else []
        order += [name for name in ("X", "raw") if name in candidates]
        if not order:
            raise CorruptInputError(f"{self.path}: no expression matrix (X, layers, raw) in the file.")
        for name in order:
            key, element = candidates[name]
            matrix = _H5Matrix(element, self.path, key)
            sample = matrix.sample(64)
            if sample.size == 0 or np.all(np.abs(sample - np.rint(sample)) <= COUNT_TOLERANCE):
                return name, matrix
        key, element = candidates[order[0]]  # none look like counts: validation will say so clearly
        return order[0], _H5Matrix(element, self.path, key)

    @staticmethod
    def _gene_identifiers(var: pd.DataFrame, gene_column: str) -> list[str]:
        if gene_column not in ("auto", "index"):
            if gene_column not in var.columns:
                raise CorruptInputError(f"var has no column {gene_column!r}; columns: {list(var.columns)}")
            return [str(v) for v in var[gene_column]]
        if gene_column == "auto":
            for column in var.columns:
                if str(column).lower() in _IDENTIFIER_COLUMNS:
                    values = var[column].astype(str)
                    if values.str.match(ENSEMBL_LIKE).mean() > 0.5:
                        return values.tolist()
        return [str(v) for v in var.index]

    @property
    def gene_names(self) -> list[str]:
        return self._genes

    @property
    def obs(self) -> pd.DataFrame:
        return self._obs

    def row_nnz(self) -> np.ndarray | None:
        return self.matrix.row_nnz()

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        return self.matrix.read_rows(start, stop)

    def describe(self) -> str:
        return f"h5ad {self.path.name} ({self.matrix.kind} '{self.layer}', {self.matrix.shape[0]:,} × {self.matrix.shape[1]:,})"

    def close(self) -> None:
        self.handle.close()


# ------------------------------------------------------------------------------------------- 10x h5


class TenXH5Reader(MatrixReader):
    """CellRanger ``filtered_feature_bc_matrix.h5`` (v3 ``matrix/`` or v2 per-genome group).

    The file stores genes × cells as CSC, i.e. cells × genes as CSR: rows are sliced directly. Only
    ``Gene Expression`` features are kept (antibody / CRISPR guide features are not genes).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.handle = _open_h5(self.path)
        if "matrix" in self.handle:
            group = self.handle["matrix"]
            features = group["features"]
            ids = _decode(features["id"][:])
            names = _decode(features["name"][:])
            kinds = _decode(features["feature_type"][:]) if "feature_type" in features else ["Gene Expression"] * len(ids)
        else:
            genomes = [k for k in self.handle if isinstance(self.handle[k], h5py.Group)]
            if not genomes:
                self.handle.close()
                raise CorruptInputError(f"{self.path}: not a 10x .h5 file (no 'matrix' or genome group).")
            group = self.handle[genomes[0]]
            ids, names = _decode(group["genes"][:]), _decode(group["gene_names"][:])
            kinds = ["Gene Expression"] * len(ids)
        self.group = group
        n_genes, n_cells = (int(s) for s in group["shape"][:])
        self._indptr = np.asarray(group["indptr"][:], dtype=np.int64)
        if len(self._indptr) != n_cells + 1 or len(ids) != n_genes:
            raise CorruptInputError(f"{self.path}: 10x matrix shape {n_genes}×{n_cells} is inconsistent; corrupt file.")
        self.n_features = n_genes
        self._keep = np.array([k == "Gene Expression" for k in kinds])
        self._genes = [g for g, k in zip(ids, self._keep) if k]
        self._symbols = [g for g, k in zip(names, self._keep) if k]
        barcodes = _decode(group["barcodes"][:])
        self._obs = pd.DataFrame(index=pd.Index(barcodes, name="barcode"))

    @property
    def gene_names(self) -> list[str]:
        return self._genes

    @property
    def gene_symbols(self) -> list[str]:
        return self._symbols

    @property
    def obs(self) -> pd.DataFrame:
        return self._obs

    def row_nnz(self) -> np.ndarray:
        return np.diff(self._indptr)

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        indptr = self._indptr[start : stop + 1]
        low, high = int(indptr[0]), int(indptr[-1])
        try:
            data = self.group["data"][low:high]
            indices = self.group["indices"][low:high]
        except (OSError, ValueError) as error:
            raise CorruptInputError(f"{self.path}: reading cells {start}:{stop} failed ({error}); corrupt file.") from error
        block = sp.csr_matrix((data, indices, indptr - low), shape=(stop - start, self.n_features))
        return block if self._keep.all() else block[:, np.nonzero(self._keep)[0]]

    def close(self) -> None:
        self.handle.close()


# ---------------------------------------------------------------------------------------- 10x mtx


def _find_one(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.exists():
                return candidate
    return None


class MtxReader(MatrixReader):
    """A 10x ``filtered_feature_bc_matrix/`` folder (Matrix Market, genes × cells).

    Matrix Market is text without a row index, so the folder is parsed once and kept as CSR; use
    the ``.h5`` or ``.h5ad`` form of large datasets for bounded memory.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder)
        # 10x names, and the names GEO submissions such as GSE176078 use
        matrix_path = _find_one(self.path, ["matrix.mtx", "count_matrix_sparse.mtx"])
        genes_path = _find_one(self.path, ["features.tsv", "genes.tsv", "count_matrix_genes.tsv"])
        barcodes_path = _find_one(self.path, ["barcodes.tsv", "count_matrix_barcodes.tsv"])
        missing = [n for n, p in [("matrix.mtx", matrix_path), ("features.tsv", genes_path), ("barcodes.tsv", barcodes_path)] if p is None]
        if missing:
            raise CorruptInputError(f"{self.path}: 10x matrix folder lacks {missing} (optionally .gz).")
        import scipy.io

        try:
            with (gzip.open if matrix_path.suffix == ".gz" else open)(matrix_path, "rb") as handle:
                matrix = scipy.io.mmread(handle)
            features = pd.read_csv(genes_path, sep="\t", header=None, dtype=str)
            barcodes = pd.read_csv(barcodes_path, sep="\t", header=None, dtype=str)[0].tolist()
        except (OSError, ValueError, EOFError, pd.errors.ParserError) as error:
            raise CorruptInputError(f"{matrix_path}: cannot parse the Matrix Market folder ({error}).") from error
        if matrix.shape != (len(features), len(barcodes)):
            raise CorruptInputError(
                f"{matrix_path}: matrix is {matrix.shape} but the folder lists {len(features)} features "
                f"and {len(barcodes)} barcodes."
            )
        keep = np.ones(len(features), dtype=bool)
        if features.shape[1] >= 3:
            keep = (features[2] == "Gene Expression").to_numpy()
        self._matrix = sp.csr_matrix(matrix.T)[:, np.nonzero(keep)[0]].tocsr()
        self._genes = features[0][keep].tolist()
        self._symbols = features[1][keep].tolist() if features.shape[1] >= 2 else None
        self._obs = pd.DataFrame(index=pd.Index(barcodes, name="barcode"))

    @property
    def gene_names(self) -> list[str]:
        return self._genes

    @property
    def gene_symbols(self) -> list[str] | None:
        return self._symbols

    @property
    def obs(self) -> pd.DataFrame:
        return self._obs

    def row_nnz(self) -> np.ndarray:
        return np.diff(self._matrix.indptr)

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        return self._matrix[start:stop]


# ------------------------------------------------------------------------------------ text matrices


def _text_separator(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return "," if name.endswith(".csv") else "\t"


def _mapped_fraction(names: Sequence[str], mapper: Callable[[Sequence[str]], int] | None) -> float:
    if not names:
        return 0.0
    if mapper is not None:
        return mapper(names) / len(names)
    return float(np.mean([bool(ENSEMBL_LIKE.match(str(n))) for n in names]))


class TextMatrixReader(MatrixReader):
    """CSV / TSV / GCT count matrices, samples as rows or genes as rows.

    ``samples_as_rows=None`` decides the orientation by which axis' labels map to genes
    (``gene_mapper`` counts mappable identifiers; without it, Ensembl-looking labels). GCT files
    are genes × samples with ``Name`` and ``Description`` columns and a two-line header that is
    checked against the data (a truncated download fails here, not later). Lines are parsed with
    ``numpy.loadtxt`` in chunks: pandas builds one object per column, which is slow for the
    30,000-column files single-cell CSVs are.
    """

    def __init__(
        self,
        path: str | Path,
        samples_as_rows: bool | None = None,
        gene_mapper: Callable[[Sequence[str]], int] | None = None,
        cache_dir: str | Path | None = None,
        allow_non_integer: bool = False,
    ):
        self.path = Path(path)
        self._own_cache = cache_dir is None
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.allow_non_integer = allow_non_integer
        self.problem: str | None = None
        self._matrix: np.ndarray | None = None
        self.sep = _text_separator(self.path)
        self.is_gct = self.path.name.lower().removesuffix(".gz").endswith(".gct")
        self.skiprows = 2 if self.is_gct else 0
        self.n_label_columns = 2 if self.is_gct else 1
        self._symbols: list[str] | None = None
        header, labels, descriptions = self._scan_labels()
        if self.is_gct:
            self._check_gct_header(len(labels), len(header) - 2)
            samples_as_rows = False
            self._symbols = descriptions
        columns = header[self.n_label_columns :]
        if samples_as_rows is None:
            samples_as_rows = _mapped_fraction(columns[:2000], gene_mapper) >= _mapped_fraction(labels[:2000], gene_mapper)
        self.samples_as_rows = samples_as_rows
        self.dense = True
        self._genes = columns if samples_as_rows else labels
        samples = labels if samples_as_rows else columns
        self._obs = pd.DataFrame(index=pd.Index(samples, name="sample_id"))

    @property
    def cache_dir(self) -> Path:
        """Scratch folder of the binary copy; a private temporary one is made on first use only, so a
        file refused while its header is read leaves nothing behind."""
        if self._cache_dir is None:
            self._cache_dir = Path(tempfile.mkdtemp(prefix="txfm-text-"))
        return self._cache_dir

    def _lines(self):
        opener = gzip.open if self.path.suffix == ".gz" else open
        return opener(self.path, "rt", newline="")

    def _scan_labels(self) -> tuple[list[str], list[str], list[str]]:
        """Header fields and the label (and GCT description) of every line, in one streaming pass."""
        labels, descriptions = [], []
        try:
            with self._lines() as handle:
                for _ in range(self.skiprows):
                    handle.readline()
                header = [f.strip().strip('"') for f in handle.readline().rstrip("\r\n").split(self.sep)]
                for line in handle:
                    if not line.strip():
                        continue
                    fields = line.split(self.sep, 2)
                    labels.append(fields[0].strip().strip('"'))
                    if self.is_gct:
                        descriptions.append(fields[1].strip().strip('"') if len(fields) > 1 else "")
        except (OSError, EOFError, UnicodeDecodeError) as error:
            raise CorruptInputError(f"{self.path}: cannot read as a {self.sep!r}-separated matrix ({error}); truncated or not text.") from error
        if len(header) <= self.n_label_columns or not labels:
            raise CorruptInputError(f"{self.path}: no matrix found (header {header[:3]}, {len(labels)} data lines).")
        return header, labels, descriptions

    def _check_gct_header(self, n_rows: int, n_columns: int) -> None:
        with self._lines() as handle:
            version, dims = handle.readline().strip(), handle.readline().split()
        if not version.startswith("#1.") or len(dims) < 2:
            raise CorruptInputError(f"{self.path}: not a GCT file (first lines {version!r}, {dims!r}).")
        try:
            expected = (int(dims[0]), int(dims[1]))
        except ValueError as error:
            raise CorruptInputError(f"{self.path}: GCT dimension line {dims!r} is not two integers.") from error
        if expected != (n_rows, n_columns):
            raise CorruptInputError(
                f"{self.path}: GCT header announces {expected[0]} genes × {expected[1]} samples but the "
                f"file holds {n_rows} × {n_columns}: it is truncated. Re-download it."
            )

    @property
    def gene_names(self) -> list[str]:
        return self._genes

    @property
    def gene_symbols(self) -> list[str] | None:
        return self._symbols

    @property
    def obs(self) -> pd.DataFrame:
        return self._obs

    def _parse(self, lines: list[str], position: int, width: int) -> np.ndarray:
        body = "\n".join(line.split(self.sep, self.n_label_columns)[-1] for line in lines)
        try:
            values = np.loadtxt(io.StringIO(body), delimiter=self.sep, dtype=np.float64, ndmin=2)
        except ValueError as error:
            raise CorruptInputError(
                f"{self.path}: data lines {position + 1}-{position + len(lines)} are not numeric or ragged ({error}); "
                "the file is truncated or not a count matrix."
            ) from error
        if values.shape != (len(lines), width):
            raise CorruptInputError(
                f"{self.path}: data lines {position + 1}-{position + len(lines)} have {values.shape[1]} values, "
                f"expected {width}: the file is ragged or truncated."
            )
        return values

    def _convert(self) -> np.ndarray:
        """Parse the text once into an int32 samples × genes memmap (bounded-memory chunks).

        Text cannot be sliced by row, and genes-as-rows files cannot even be read sample by
        sample, so one streaming pass converts the file to a binary matrix in ``cache_dir`` (disk,
        not memory); every later block read is a memmap slice. Non-integer values are recorded
        (and refused at read time unless allowed); negative or missing values fail here.
        """
        if self._matrix is not None:
            return self._matrix
        shape = (len(self._obs), len(self._genes))
        target = self.cache_dir / f"{self.path.name}.int32"
        if target.exists() and target.stat().st_size == 4 * shape[0] * shape[1]:
            self._matrix = np.memmap(target, dtype=np.int32, mode="r", shape=shape)
            return self._matrix
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        out = np.memmap(tmp, dtype=np.int32, mode="w+", shape=shape)
        width = shape[1] if self.samples_as_rows else shape[0]
        chunk = max(1, 4_000_000 // max(1, width))
        position = 0

        def flush(lines: list[str]) -> int:
            values = self._parse(lines, position, width)
            self._check(values, position)
            rounded = np.rint(values).astype(np.int32)
            if self.samples_as_rows:
                out[position : position + len(lines)] = rounded
            else:
                out[:, position : position + len(lines)] = rounded.T
            return len(lines)

        try:
            with self._lines() as handle:
                for _ in range(self.skiprows + 1):
                    handle.readline()
                lines: list[str] = []
                for line in handle:
                    if line.strip():
                        lines.append(line.rstrip("\r\n"))
                    if len(lines) == chunk:
                        position += flush(lines)
                        lines = []
                if lines:
                    position += flush(lines)
        except (OSError, EOFError) as error:
            tmp.unlink(missing_ok=True)
            raise CorruptInputError(f"{self.path}: cannot read ({error}); the file is truncated.") from error
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        out.flush()
        tmp.replace(target)  # (the write mapping is released with this frame)
        self._matrix = np.memmap(target, dtype=np.int32, mode="r", shape=shape)
        return self._matrix

    def _check(self, values: np.ndarray, position: int) -> None:
        def where(flat: int) -> str:
            row, column = divmod(flat, values.shape[1])
            sample, gene = (position + row, column) if self.samples_as_rows else (column, position + row)
            return f"sample {self._obs.index[sample]!r}, gene {self._genes[gene]!r}"

        bad = ~np.isfinite(values) | (values < 0) | (values > INT32_MAX)
        if bad.any():
            flat = int(np.argmax(bad))
            raise NotCountsError(
                f"{self.path}: value {values.flat[flat]} at {where(flat)} is missing, negative or too large: "
                "not a count matrix (or a truncated file)."
            )
        if self.problem is None:
            off = np.abs(values - np.rint(values)) > COUNT_TOLERANCE
            if off.any():
                flat = int(np.argmax(off))
                self.problem = (
                    f"{self.path}: value {values.flat[flat]!r} at {where(flat)} is not an integer count; the matrix "
                    "looks normalised. TxFM trains on raw counts; pass --allow-non-integer to round (only if "
                    "these are counts stored with noise)."
                )

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        matrix = self._convert()
        if self.problem is not None and not self.allow_non_integer:
            raise NotCountsError(self.problem)
        return sp.csr_matrix(np.asarray(matrix[start:stop]))

    def close(self) -> None:
        self._matrix = None
        if self._own_cache and self._cache_dir is not None:
            shutil.rmtree(self._cache_dir, ignore_errors=True)


# ------------------------------------------------------------------------------- STAR gene counts

STAR_COUNT_COLUMN = "unstranded"
GDC_SUFFIXES = (".rna_seq.augmented_star_gene_counts.tsv", ".ReadsPerGene.out.tab", "ReadsPerGene.out.tab", ".tsv")


def _star_table(path: Path) -> pd.DataFrame:
    """One STAR count file as ``gene_id`` / ``gene_name`` / ``count`` (summary ``N_*`` rows dropped)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as handle:
            text = handle.read()
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        if not lines:
            raise CorruptInputError(f"{path}: empty STAR count file.")
        if lines[0].startswith("gene_id"):  # GDC augmented_star_gene_counts.tsv
            table = pd.read_csv(io.StringIO("\n".join(lines)), sep="\t", dtype={"gene_id": str, "gene_name": str})
            if STAR_COUNT_COLUMN not in table.columns:
                raise CorruptInputError(f"{path}: STAR table lacks the '{STAR_COUNT_COLUMN}' column.")
            table = table.rename(columns={STAR_COUNT_COLUMN: "count"})
        else:  # STAR ReadsPerGene.out.tab: gene, unstranded, strand 1, strand 2
            table = pd.read_csv(io.StringIO("\n".join(lines)), sep="\t", header=None)
            if table.shape[1] != 4:
                raise CorruptInputError(f"{path}: expected 4 columns of STAR ReadsPerGene.out.tab, got {table.shape[1]}.")
            table = pd.DataFrame({"gene_id": table[0].astype(str), "gene_name": "", "count": table[1]})
    except (OSError, EOFError, ValueError, pd.errors.ParserError) as error:
        raise CorruptInputError(f"{path}: cannot parse STAR gene counts ({error}).") from error
    table = table[~table["gene_id"].str.startswith("N_")]
    if table["count"].isna().any():
        raise CorruptInputError(f"{path}: missing count values: the file is truncated. Re-download it.")
    return table.reset_index(drop=True)


def _sample_name(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    for suffix in GDC_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


class StarCountsReader(MatrixReader):
    """A folder (or list) of per-sample STAR gene-count files, TCGA/GDC style; each file is a row.

    A GDC sample sheet (``gdc_sample_sheet*.tsv``, columns ``File Name`` / ``Sample ID`` /
    ``Project ID``) beside the files supplies sample barcodes and projects; otherwise the sample id
    is the file name. For TCGA barcodes the tissue source site (``TCGA-XX-…``) is the batch.
    """

    def __init__(self, files: Sequence[str | Path], sample_sheet: str | Path | None = None):
        self.files = sorted(Path(f) for f in files)
        if not self.files:
            raise CorruptInputError("no STAR gene-count files given.")
        self.path = self.files[0].parent
        first = _star_table(self.files[0])
        self._genes = first["gene_id"].tolist()
        self._symbols = first["gene_name"].fillna("").astype(str).tolist()
        sheet = self._read_sheet(sample_sheet)
        records = []
        for file in self.files:
            row = sheet.get(file.name, {}) if sheet else {}
            sample = row.get("Sample ID") or _sample_name(file)
            tss = sample.split("-")[1] if sample.startswith("TCGA-") and sample.count("-") >= 2 else file.parent.name
            records.append({"sample_id": sample, "batch": tss, "tissue": row.get("Project ID"), "file": file.name})
        self._obs = pd.DataFrame(records).set_index("sample_id")

    def _read_sheet(self, sample_sheet: str | Path | None) -> dict[str, dict]:
        if sample_sheet is None:
            found = sorted(self.path.glob("gdc_sample_sheet*.tsv"))
            sample_sheet = found[0] if found else None
        if sample_sheet is None:
            return {}
        sheet = pd.read_csv(sample_sheet, sep="\t", dtype=str)
        if "File Name" not in sheet.columns:
            raise CorruptInputError(f"{sample_sheet}: GDC sample sheet lacks the 'File Name' column.")
        return {row["File Name"]: row.to_dict() for _, row in sheet.iterrows()}

    @property
    def gene_names(self) -> list[str]:
        return self._genes

    @property
    def gene_symbols(self) -> list[str]:
        return self._symbols

    @property
    def obs(self) -> pd.DataFrame:
        return self._obs

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        rows = []
        for file in self.files[start:stop]:
            table = _star_table(file)
            if table["gene_id"].tolist() != self._genes:
                raise CorruptInputError(
                    f"{file}: its gene list differs from {self.files[0].name}; all STAR files of one source "
                    "must come from the same annotation (gene model)."
                )
            rows.append(table["count"].to_numpy(dtype=np.float64))
        return sp.csr_matrix(np.vstack(rows))


# ------------------------------------------------------------------------------------------ opening


def detect_format(path: Path) -> str:
    """Format name of a file or folder from its name and layout."""
    name = path.name.lower().removesuffix(".gz")
    if path.is_dir():
        if _find_one(path, ["matrix.mtx", "count_matrix_sparse.mtx"]):
            return "mtx"
        if any(path.glob("*.tsv")) or any(path.glob("*ReadsPerGene.out.tab")):
            return "star"
        raise CorruptInputError(f"{path}: folder holds neither a 10x matrix.mtx nor STAR count TSVs.")
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5"):
        return "10x_h5"
    if name.endswith(".gct"):
        return "gct"
    if name.endswith("augmented_star_gene_counts.tsv") or name.endswith("readspergene.out.tab"):
        return "star"
    if name.endswith((".csv", ".tsv", ".txt")):
        return "text"
    raise CorruptInputError(
        f"{path}: unknown file format. Supported: .h5ad, 10x .h5, 10x matrix.mtx folders, .gct(.gz), "
        "STAR gene-count .tsv files, .csv/.tsv matrices."
    )


def open_reader(
    path: str | Path,
    format: str = "auto",
    layer: str = "auto",
    gene_column: str = "auto",
    samples_as_rows: bool | None = None,
    gene_mapper: Callable[[Sequence[str]], int] | None = None,
    cache_dir: str | Path | None = None,
    allow_non_integer: bool = False,
) -> MatrixReader:
    """Open ``path`` with the reader for its format (``format="auto"`` detects it)."""
    path = Path(path)
    if not path.exists():
        raise CorruptInputError(f"{path}: no such file or folder.")
    kind = detect_format(path) if format == "auto" else format
    if kind == "h5ad":
        return H5adReader(path, layer=layer, gene_column=gene_column)
    if kind == "10x_h5":
        return TenXH5Reader(path)
    if kind == "mtx":
        return MtxReader(path)
    if kind in ("gct", "text"):
        return TextMatrixReader(
            path, samples_as_rows=samples_as_rows, gene_mapper=gene_mapper, cache_dir=cache_dir,
            allow_non_integer=allow_non_integer,
        )
    if kind == "star":
        if path.is_dir():
            files = [f for f in sorted(path.iterdir()) if f.is_file() and not f.name.startswith("gdc_sample_sheet")
                     and (f.name.endswith((".tsv", ".tsv.gz", "ReadsPerGene.out.tab")))]
            return StarCountsReader(files)
        return StarCountsReader([path])
    raise CorruptInputError(f"{path}: unknown format {kind!r}.")
