"""On-disk storage of the corpus: the row schema, fixed Parquet settings, atomic files, checksums.

Why fixed writer settings: the same inputs must give byte-identical shards (reproducible datasets,
cheap resume by checksum). Parquet bytes depend on the schema, the row-group boundaries, the
encodings and the compression codec/level — all pinned here. Nothing time- or host-dependent is
written (pyarrow's ``created_by`` string only depends on the pyarrow version).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, List, Value

#: The corpus row (see the contract in ``dataset_builder/__init__.py``).
FEATURES = Features(
    {
        "gene_index": List(Value("int32")),
        "counts": List(Value("int32")),
        "profile_id": Value("int32"),
        "source": Value("string"),
        "sample_id": Value("string"),
        "batch": Value("string"),
        "perturbation": Value("string"),
        "is_control": Value("bool"),
        "cell_type": Value("string"),
        "tissue": Value("string"),
    }
)
#: Arrow schema with the ``huggingface`` metadata, so ``load_dataset`` restores the exact features.
SCHEMA: pa.Schema = FEATURES.arrow_schema
STRING_COLUMNS = ("source", "sample_id", "batch", "perturbation", "cell_type", "tissue")

PARQUET_OPTIONS: dict[str, Any] = {
    # zstd level 1: the delta encoding already does most of the work, level 3 doubles write time
    "compression": "zstd",
    "compression_level": 1,
    # sorted gene positions delta-encode to a few bits each (2.3× smaller than PLAIN + zstd);
    # metadata strings dictionary-encode. Nested columns are addressed by their leaf path.
    "use_dictionary": ["source", "batch", "perturbation", "cell_type", "tissue"],
    "column_encoding": {
        "gene_index.list.element": "DELTA_BINARY_PACKED",
        "counts.list.element": "DELTA_BINARY_PACKED",
    },
    "write_statistics": False,
    "version": "2.6",
    "data_page_version": "1.0",
}
ROW_GROUP_ROWS = 1024


def sparse_rows_table(
    indptr: np.ndarray, gene_index: np.ndarray, counts: np.ndarray, metadata: dict[str, Any]
) -> pa.Table:
    """Build a batch of corpus rows from CSR arrays without a Python loop over rows."""
    offsets = pa.array(np.asarray(indptr, dtype=np.int32))
    columns = {
        "gene_index": pa.ListArray.from_arrays(offsets, pa.array(np.asarray(gene_index, dtype=np.int32))),
        "counts": pa.ListArray.from_arrays(offsets, pa.array(np.asarray(counts, dtype=np.int32))),
    }
    for name in SCHEMA.names[2:]:
        columns[name] = pa.array(metadata[name], type=SCHEMA.field(name).type)
    return pa.Table.from_pydict(columns, schema=SCHEMA)


class ShardWriter:
    """Writes one Parquet shard in fixed-size row groups, to a temporary file renamed on close."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self._writer = pq.ParquetWriter(self.tmp, SCHEMA, **PARQUET_OPTIONS)
        self._pending: list[pa.Table] = []
        self._n_pending = 0
        self.n_rows = 0

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._n_pending += table.num_rows
        while self._n_pending >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, n: int) -> None:
        merged = pa.concat_tables(self._pending).combine_chunks() if len(self._pending) > 1 else self._pending[0]
        head, rest = merged.slice(0, n), merged.slice(n)
        self._writer.write_table(head, row_group_size=n)
        self.n_rows += head.num_rows
        self._pending = [rest] if rest.num_rows else []
        self._n_pending = rest.num_rows

    def close(self) -> str:
        """Finish the file, fsync, rename into place atomically; return its SHA-256."""
        if self._n_pending:
            self._flush(self._n_pending)
        self._writer.close()
        digest = sha256_file(self.tmp)
        with open(self.tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self.tmp, self.path)
        return digest

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file so a kill leaves either the old or the new content, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; corpus files are meant to be shared
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any, indent: int | None = 1) -> None:
    write_atomic(path, json.dumps(payload, indent=indent, default=_json_default) + "\n")


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
