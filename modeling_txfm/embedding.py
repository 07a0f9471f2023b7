"""Embedding API: sample embeddings for AnnData / ``.h5ad`` files, and gene representations.

``embed(adata, model)`` writes one TxFM embedding per sample into ``adata.obsm["X_txfm"]`` (the
scvi-tools convention) and returns it. ``.h5ad`` paths are read chunk by chunk straight from the
HDF5 file, so memory is bounded by the chunk, not the file. The embedding of a sample does not
depend on the batch size or on the other samples (see the processor's inference gene choice).

``gene_representations(model, kind)`` returns the two per-gene parameter sets of the paper — the
encoder codebook and the decoder's per-gene reconstruction weights — keyed by Ensembl ID.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from .hdf5_probe import HDF5ProbeError, probe_hdf5
from .processing_txfm import TxFMInputError, TxFMProcessor

DEFAULT_CHUNK_SIZE = 4096


def load_model(path: str | os.PathLike, device: str | torch.device | None = None):
    """Load a TxFM checkpoint folder with our own classes (safetensors only; no remote code).

    The folder is checked first (:func:`safe_loading.check_checkpoint`): pickle files, weights that do not
    match the config, or a processor vocabulary that differs from the model's raise TxFMCheckpointError.
    """
    from .modeling_txfm import TxFMForMaskedExpressionModeling
    from .safe_loading import check_checkpoint

    check_checkpoint(path, TxFMForMaskedExpressionModeling)
    model = TxFMForMaskedExpressionModeling.from_pretrained(str(path), use_safetensors=True)
    return model.to(device or "cpu").eval()


def _encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The encoder of either model class (duck-typed: remote-code classes are other class objects)."""
    return getattr(model, "txfm", model)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------------
# Reading rows in chunks
# --------------------------------------------------------------------------------------------------


class _H5adRows:
    """Row-chunk reader over an ``.h5ad`` file's X, a layer or raw/X, without loading the matrix."""

    def __init__(self, path: str | os.PathLike, layer: str | None):
        self.path = Path(path)
        try:
            if self.path.is_file():
                probe_hdf5(self.path)  # a file that would crash libhdf5 fails here, in a child process
            self.file = h5py.File(self.path, "r")
        except HDF5ProbeError as error:
            raise TxFMInputError(str(error)) from error
        except (OSError, ValueError) as error:
            raise TxFMInputError(f"{self.path} is not a readable .h5ad (HDF5) file: {error}") from error
        try:
            self._open(layer)
        except TxFMInputError:
            self.file.close()
            raise
        except Exception as error:  # h5py/anndata/pandas on a damaged file: many types, one meaning
            self.file.close()
            raise TxFMInputError(
                f"{self.path} is damaged or not a valid .h5ad ({type(error).__name__}: {error}). Re-download or "
                "re-write it with anndata."
            ) from error

    def _open(self, layer: str | None) -> None:
        key = {None: "X", "raw": "raw/X"}.get(layer, f"layers/{layer}")
        if key not in self.file:
            raise TxFMInputError(f"{self.path} has no {key!r} matrix (layer={layer!r}).")
        element = self.file[key]
        self.matrix = ad.io.sparse_dataset(element) if isinstance(element, h5py.Group) else element
        self.shape = tuple(self.matrix.shape)
        if len(self.shape) != 2:
            raise TxFMInputError(f"{self.path}: {key!r} has shape {self.shape}, not samples × genes.")
        self.obs_names = np.asarray(ad.io.read_elem(self.file["obs"]).index)
        var_group = self.file["raw/var"] if layer == "raw" else self.file["var"]
        self.var = ad.io.read_elem(var_group)
        if self.shape != (len(self.obs_names), len(self.var)):
            raise TxFMInputError(
                f"{self.path}: {key!r} has shape {self.shape} but obs/var have {len(self.obs_names)}/"
                f"{len(self.var)} rows: the file is inconsistent (damaged or half-written)."
            )
        if isinstance(element, h5py.Group):
            self._check_sparse(element, key)

    def _check_sparse(self, group: h5py.Group, key: str) -> None:
        """Structural checks of a CSR/CSC group, so that a damaged index can never become a wrong embedding."""
        indptr = np.asarray(group["indptr"][:])
        n_major = self.shape[0] if self.matrix.format == "csr" else self.shape[1]
        n_stored = (group["data"].shape[0], group["indices"].shape[0])
        problem = None
        if len(indptr) != n_major + 1:
            problem = f"indptr has {len(indptr)} entries, expected {n_major + 1}"
        elif len(indptr) and (indptr[0] != 0 or (np.diff(indptr) < 0).any()):
            problem = "indptr is not a non-decreasing sequence starting at 0"
        elif n_stored[0] != n_stored[1] or (len(indptr) and indptr[-1] != n_stored[0]):
            problem = f"indptr ends at {indptr[-1] if len(indptr) else 0} but {n_stored} values/indices are stored"
        if problem:
            raise TxFMInputError(f"{self.path}: sparse matrix {key!r} is damaged ({problem}). Re-download the file.")

    def __getitem__(self, rows: slice):
        try:
            chunk = self.matrix[rows]
        except Exception as error:
            raise TxFMInputError(
                f"{self.path}: reading rows {rows.start}:{rows.stop} failed ({type(error).__name__}: {error}); the "
                "file is damaged. Re-download it."
            ) from error
        if sp.issparse(chunk) and chunk.nnz and (chunk.indices.min() < 0 or chunk.indices.max() >= self.shape[1]):
            raise TxFMInputError(f"{self.path}: rows {rows.start}:{rows.stop} index genes outside the matrix; damaged file.")
        return chunk

    def close(self) -> None:
        self.file.close()


def _gene_names(var: pd.DataFrame, gene_col: str | None) -> list[str]:
    if gene_col is None:
        return [str(name) for name in var.index]
    if gene_col not in var.columns:
        raise TxFMInputError(f"var has no column {gene_col!r}; available: {list(var.columns)}")
    return [str(name) for name in var[gene_col]]


def _in_memory_matrix(adata: ad.AnnData, layer: str | None):
    if layer is None:
        return adata.X, adata.var
    if layer == "raw":
        if adata.raw is None:
            raise TxFMInputError("layer='raw' was asked for but adata.raw is empty")
        return adata.raw.X, adata.raw.var
    if layer not in adata.layers:
        raise TxFMInputError(f"adata has no layer {layer!r}; layers: {list(adata.layers)}")
    return adata.layers[layer], adata.var


def iter_row_chunks(matrix, n_rows: int, chunk_size: int, first: int = 0) -> Iterator[tuple[int, int, object]]:
    for start in range(first, n_rows, chunk_size):
        stop = min(start + chunk_size, n_rows)
        yield start, stop, matrix[start:stop]


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


@torch.inference_mode()
def embed_counts(
    counts,
    gene_names: list[str],
    model: torch.nn.Module,
    processor: TxFMProcessor,
    batch_size: int = 64,
    counts_are_normalized: bool = False,
    sample_names=None,
) -> np.ndarray:
    """Embeddings [n, d] (float32) of a counts matrix already in memory, in mini-batches."""
    encoder = _encoder(model)
    device = _device_of(encoder)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    outputs = []
    for start in range(0, counts.shape[0], batch_size):
        stop = min(start + batch_size, counts.shape[0])
        names = sample_names[start:stop] if sample_names is not None else None
        inputs = processor(counts[start:stop], gene_names, counts_are_normalized=counts_are_normalized, sample_names=names)
        with autocast:
            embedding = encoder(
                gene_ids=inputs["gene_ids"].to(device),
                values=inputs["values"].to(device),
                attention_mask=inputs["attention_mask"].to(device),
            ).embedding
        outputs.append(embedding.float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, encoder.config.hidden_size), np.float32)


def embed(
    adata: ad.AnnData | str | os.PathLike,
    model: torch.nn.Module | str | os.PathLike,
    processor: TxFMProcessor | None = None,
    batch_size: int = 64,
    gene_col: str | None = None,
    key_added: str | None = "X_txfm",
    layer: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    counts_are_normalized: bool = False,
    show_progress: bool = True,
    resume_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Embed every sample (row) of ``adata`` with a TxFM model.

    Args:
        adata: an ``AnnData`` (in memory or backed) or the path of an ``.h5ad`` file (read in chunks).
        model: a TxFM model, or the path of a checkpoint folder.
        processor: defaults to the one matching the model's config.
        batch_size: samples per forward pass; it does not change the result.
        gene_col: ``var`` column holding gene identifiers (default: ``var_names``).
        key_added: ``adata.obsm`` key to write (AnnData input only); ``None`` to skip.
        layer: matrix of raw counts: ``None`` (X), a ``layers`` key, or ``"raw"``.
        chunk_size: rows read from disk at a time (bounds memory for files).
        counts_are_normalized: accept non-integer, library-size-normalised (not logged) values.
        resume_dir: keep finished chunks in this folder (a memory-mapped ``embeddings.npy`` and an
            atomically replaced ``progress.json``, both fsync'ed). If it already holds progress for the
            same input, model and settings, those rows are not recomputed: an interrupted run continues.

    Returns:
        float32 array [n_samples, hidden_size].
    """
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    model.eval()
    processor = processor or TxFMProcessor.from_config(model.config)
    if isinstance(adata, (str, os.PathLike)):
        reader = _H5adRows(adata, layer)
        matrix, n_rows, obs_names, var = reader, reader.shape[0], reader.obs_names, reader.var
    else:
        reader = None
        if adata.isbacked and layer is None:
            matrix = adata.X
        else:
            matrix, _ = _in_memory_matrix(adata, layer)
        var = _in_memory_matrix(adata, layer)[1] if layer == "raw" else adata.var
        n_rows, obs_names = adata.n_obs, np.asarray(adata.obs_names)
    gene_names = _gene_names(var, gene_col)
    store = None
    try:
        processor.match_genes(gene_names)  # fail fast, before any compute
        if resume_dir is not None:
            fingerprint = _fingerprint(adata, model, processor, gene_names, obs_names,
                                       dict(layer=layer, gene_col=gene_col, normalized=counts_are_normalized))
            store = ChunkStore(resume_dir, n_rows, model.config.hidden_size, fingerprint)
            embeddings, first = store.embeddings, store.rows_done
        else:
            embeddings, first = np.zeros((n_rows, model.config.hidden_size), dtype=np.float32), 0
        progress = tqdm(total=n_rows, initial=first, desc="txfm embed", unit="sample", disable=not show_progress)
        for start, stop, chunk in iter_row_chunks(matrix, n_rows, chunk_size, first):
            embeddings[start:stop] = embed_counts(
                _as_matrix(chunk), gene_names, model, processor, batch_size, counts_are_normalized, obs_names[start:stop]
            )
            if store is not None:
                store.commit(stop)
            progress.update(stop - start)
        progress.close()
        if store is not None:
            embeddings = np.array(store.embeddings)
    except TxFMInputError as error:
        if reader is not None and str(reader.path) not in str(error):  # say which file, not only which sample
            raise TxFMInputError(f"{reader.path}: {error}") from error
        raise
    finally:
        if reader is not None:
            reader.close()
        if store is not None:
            store.close()
    if key_added and isinstance(adata, ad.AnnData):
        adata.obsm[key_added] = embeddings
    return embeddings


class ChunkStore:
    """Finished rows of an ``embed`` run on disk, so that a killed run continues where it stopped.

    ``embeddings.npy`` is a memory-mapped [n, d] float32 array; ``progress.json`` says how many leading
    rows are final. A row count is only ever recorded *after* those rows are msync'ed, and the record is
    replaced atomically (write, fsync, rename, fsync the folder), so a kill at any instant leaves either
    the old or the new count, each describing rows that are really on disk. Rows after the recorded count
    may be half-written: they are recomputed. The fingerprint (input, model weights, settings) decides
    whether existing progress belongs to this run; otherwise it starts over.
    """

    def __init__(self, folder: str | os.PathLike, n_rows: int, width: int, fingerprint: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.array_path, self.state_path = self.folder / "embeddings.npy", self.folder / "progress.json"
        self.fingerprint, self.n_rows = fingerprint, n_rows
        state = self._read_state()
        self.embeddings: np.memmap | None = None
        if state and state.get("fingerprint") == fingerprint and 0 <= state.get("rows_done", -1) <= n_rows:
            try:
                array = np.lib.format.open_memmap(self.array_path, mode="r+")
                if array.shape == (n_rows, width) and array.dtype == np.float32:
                    self.embeddings, self.rows_done = array, int(state["rows_done"])
            except (OSError, ValueError):
                pass
        if self.embeddings is None:
            self.state_path.unlink(missing_ok=True)  # never leave progress pointing at a fresh, empty array
            self.embeddings = np.lib.format.open_memmap(self.array_path, mode="w+", dtype=np.float32,
                                                        shape=(n_rows, width))
            self.rows_done = 0
            self._write_state(0)

    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def _write_state(self, rows_done: int) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with open(tmp, "w") as handle:
            json.dump({"fingerprint": self.fingerprint, "rows_done": rows_done, "n_rows": self.n_rows}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.state_path)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self, rows_done: int) -> None:
        """Rows [0, rows_done) are final: make them durable, then record it."""
        self.embeddings.flush()  # msync(MS_SYNC) of the mapping
        self._write_state(rows_done)
        self.rows_done = rows_done

    def close(self) -> None:
        if self.embeddings is not None:
            self.embeddings.flush()
            self.embeddings = None


def _fingerprint(source, model: torch.nn.Module, processor: TxFMProcessor, gene_names: list[str], obs_names,
                 settings: dict) -> str:
    """What makes stored rows valid: the input (file identity or names and shape), the weights, the settings."""
    digest = hashlib.sha256()
    if isinstance(source, (str, os.PathLike)):
        stat = Path(source).stat()
        digest.update(f"{Path(source).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    digest.update("\x00".join(map(str, obs_names)).encode())
    digest.update("\x00".join(gene_names).encode())
    for name, tensor in sorted(_encoder(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    digest.update(processor.to_json_string().encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _as_matrix(chunk):
    """Backed slices come back as scipy sparse, h5py arrays or anndata views: normalise to scipy/numpy."""
    if sp.issparse(chunk):
        return chunk
    return np.asarray(chunk)


def write_embedding_h5ad(source: str | os.PathLike, out: str | os.PathLike, embeddings: np.ndarray, key: str) -> None:
    """Copy ``source`` to ``out`` and add ``obsm[key]`` in place: the matrix is never loaded in memory."""
    source, out = Path(source), Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.copyfile(source, partial)
    with h5py.File(partial, "a") as handle:
        obsm = handle.require_group("obsm")
        if key in obsm:
            del obsm[key]
        ad.io.write_elem(obsm, key, embeddings)
    os.replace(partial, out)  # atomic: `out` is either complete or absent


def gene_representations(model: torch.nn.Module, kind: str = "codebook") -> pd.DataFrame:
    """Per-gene parameter vectors keyed by Ensembl ID (rows follow the vocabulary).

    kind: ``"codebook"`` — encoder input gene embeddings E [G, d-1]; ``"decoder"`` — the decoder's
    final-layer reconstruction weights [G, w] (needs the masked-expression model, not the bare encoder).
    """
    if kind == "codebook":
        weights = _encoder(model).embeddings.gene_embeddings.weight
    elif kind == "decoder":
        if not hasattr(model, "decoder"):
            raise ValueError("Decoder gene representations need TxFMForMaskedExpressionModeling, not the bare encoder")
        weights = model.decoder.output.weight
    else:
        raise ValueError(f"kind must be 'codebook' or 'decoder', got {kind!r}")
    matrix = weights.detach().float().cpu().numpy()
    index = pd.Index(model.config.gene_ids, name="ensembl_id")
    return pd.DataFrame(matrix, index=index, columns=[f"{kind}_{i}" for i in range(matrix.shape[1])])


def gene_representations_anndata(model: torch.nn.Module) -> ad.AnnData:
    """Genes as an AnnData's ``var`` (Ensembl IDs, symbols) with ``varm['codebook']`` and ``varm['decoder']``."""
    var = pd.DataFrame({"symbol": model.config.gene_symbols}, index=pd.Index(model.config.gene_ids, name="ensembl_id"))
    genes = ad.AnnData(X=sp.csr_matrix((0, len(var)), dtype=np.float32), var=var)
    genes.varm["codebook"] = gene_representations(model, "codebook").to_numpy()
    if hasattr(model, "decoder"):
        genes.varm["decoder"] = gene_representations(model, "decoder").to_numpy()
    return genes


# --------------------------------------------------------------------------------------------------
# txfm embed
# --------------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("embed", help="Embed every sample of an .h5ad file with a TxFM checkpoint")
    parser.add_argument("input", help="input .h5ad with raw counts")
    parser.add_argument("--model", required=True, help="TxFM checkpoint folder")
    parser.add_argument("--out", required=True, help="output .h5ad (the input plus obsm[KEY])")
    parser.add_argument("--key", default="X_txfm", help="obsm key (default: X_txfm)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--gene-col", default=None, help="var column with gene identifiers (default: var_names)")
    parser.add_argument("--layer", default=None, help="layer with raw counts ('raw' for raw/X; default: X)")
    parser.add_argument("--counts-are-normalized", action="store_true", help="accept non-integer normalised input")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run: reuse the chunks finished in OUT.embed-progress/")
    parser.set_defaults(func=_run_embed)


def progress_dir(out: str | os.PathLike) -> Path:
    """Where ``txfm embed`` keeps finished chunks until ``out`` is written (see :class:`ChunkStore`)."""
    return Path(f"{out}.embed-progress")


def _run_embed(args: argparse.Namespace) -> int:
    model = load_model(args.model, device=args.device)
    work = progress_dir(args.out)
    if not args.resume and work.exists():
        shutil.rmtree(work)
    embeddings = embed(
        args.input, model, batch_size=args.batch_size, gene_col=args.gene_col, layer=args.layer,
        chunk_size=args.chunk_size, counts_are_normalized=args.counts_are_normalized, resume_dir=work,
    )
    write_embedding_h5ad(args.input, args.out, embeddings, args.key)
    shutil.rmtree(work, ignore_errors=True)  # only once `out` is complete (atomic rename above)
    print(f"wrote {embeddings.shape[0]:,} embeddings of width {embeddings.shape[1]} to {args.out} (obsm[{args.key!r}])")
    return 0
