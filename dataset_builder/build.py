"""The corpus build pipeline: readers → harmonise → curate → split → Parquet shards.

Three passes over each input, each in bounded row blocks:

1. **scan** — validate counts, harmonise genes, and record per-sample statistics (non-zero genes,
   library size, a 128-bit content hash) and per-gene sample counts. Saved to ``OUT/.work`` so a
   killed build does not redo it.
2. **curate** — decide, from those statistics only, which samples and genes each rule removes
   (plus a recount pass when genes were removed, and the K562 phenoprint embedding pass); build
   the vocabulary; assign the train/validation split by held-out batch.
3. **write** — a deterministic *shard plan* (which input rows go into which shard) is fixed
   before any shard is written; each shard is then produced independently, written to a temporary
   name, checksummed and renamed. A re-run with the same inputs and options skips every shard
   whose recorded SHA-256 verifies, so a build killed at any point resumes without duplicating or
   losing samples; a re-run with different inputs rebuilds from scratch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from modeling_txfm.gene_annotation import GeneAnnotation

from . import storage
from .errors import CorpusBuildError
from .harmonise import GeneMap, count_mappable, default_annotation, harmonise
from .readers import MatrixReader, open_reader, to_counts

LOGGER = logging.getLogger(__name__)
BUILDER_VERSION = "1.0.0"
DEFAULT_CONTROL_VALUES = ("non-targeting", "non_targeting", "nontargeting", "control", "ctrl", "nt", "dmso", "vehicle")
WORK_DIR = ".work"


# ------------------------------------------------------------------------------------------ options


@dataclass
class InputSpec:
    """One input file (or folder) and how to read its metadata.

    ``*_key`` options take comma-separated candidate ``obs`` columns; the first present one is
    used, so one option set serves several heterogeneous files. ``constants`` fill metadata that a
    file lacks (e.g. ``{"tissue": "Lung"}``).
    """

    path: str
    source: str
    format: str = "auto"
    layer: str = "auto"
    gene_column: str = "auto"
    samples_as_rows: bool | None = None
    batch_key: str | None = "batch"
    batch_pattern: str | None = None  # regex on sample ids whose first group is the batch (no batch column)
    cell_type_key: str | None = "cell_type"
    tissue_key: str | None = "tissue"
    perturbation_key: str | None = None
    control_key: str | None = None
    control_values: tuple[str, ...] = DEFAULT_CONTROL_VALUES
    constants: dict[str, str] = field(default_factory=dict)
    sample_annotation: str | None = None
    sample_annotation_key: str | None = None
    min_genes: int = 0
    min_cells: int = 0
    phenoprint: dict[str, Any] | None = None


@dataclass
class BuildOptions:
    """Options that apply to the whole corpus."""

    vocabulary: str | None = None  # fixed vocabulary: vocabulary.json or a checkpoint folder
    validation_fraction: float = 0.1
    validation_batches: dict[str, list[str]] | None = None  # source -> held-out batches
    rows_per_shard: int = 20_000
    block_nnz: int = 4_000_000  # non-zeros per read block: bounds peak memory
    block_rows: int = 8_192
    allow_non_integer: bool = False
    drop_duplicates: bool = True
    # threads that read, transform and encode blocks / shards; results are consumed in order, so
    # the output does not depend on it (it is left out of the build fingerprint)
    workers: int = field(default_factory=lambda: max(1, min(2, os.cpu_count() or 1)))
    sources_info: dict[str, dict] = field(default_factory=dict)  # citation/licence for the card
    dataset_name: str = "TxFM corpus"
    progress: bool = True
    work_dir: str | None = None  # set by build_corpus: OUT/.work (resumable scratch space)


@dataclass
class BuildResult:
    out: Path
    n_samples: dict[str, int]
    n_genes: int
    report: dict
    resumed_shards: int = 0
    written_shards: int = 0


# ------------------------------------------------------------------------------------ small helpers


def _block_ranges(cost: np.ndarray, budget: float, max_rows: int, rows: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Split rows (all, or the sorted subset ``rows``) into contiguous read ranges within a cost budget.

    A range ``[start, stop)`` may contain rows that are not needed (they are read and discarded);
    its cost counts every row in it, so memory stays bounded however the needed rows are spread.
    """
    if rows is None:
        rows = np.arange(len(cost))
    if len(rows) == 0:
        return []
    cumulative = np.concatenate([[0.0], np.cumsum(cost, dtype=np.float64)])
    ranges = []
    i = 0
    while i < len(rows):
        start = int(rows[i])
        limit = cumulative[start] + max(budget, cost[start])
        j_cost = int(np.searchsorted(rows, np.searchsorted(cumulative, limit, side="right") - 1, side="left"))
        j = max(i + 1, min(j_cost, i + max_rows))
        ranges.append((start, int(rows[j - 1]) + 1))
        i = j
    return ranges


def _row_cost(reader: MatrixReader, n_genes: int, raw_nnz: np.ndarray | None = None) -> np.ndarray:
    """Per-row read cost in stored values (non-zeros for sparse storage, all genes for dense)."""
    if reader.dense:
        return np.full(reader.n_samples, float(n_genes))
    known = reader.row_nnz() if raw_nnz is None else raw_nnz
    if known is not None:
        return known.astype(np.float64)
    return np.full(reader.n_samples, float(max(1, n_genes // 10)))


def _segment_sums(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Per-row sums of ``values`` (wrapping uint64) from one cumulative sum; empty rows give 0."""
    cumulative = np.empty(len(values) + 1, dtype=values.dtype)
    cumulative[0] = 0
    np.cumsum(values, out=cumulative[1:])
    return cumulative[indptr[1:]] - cumulative[indptr[:-1]]


def _row_hashes(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit content hashes per row (order-free sums of mixed (gene, count) pairs).

    Why this shape: one hash per *element* then a segment sum is vectorised and independent of
    the order of genes within a row (the scan pass does not sort). The (gene, count) pair is packed
    into one uint64 by writing the two int32 halves in place (no shift/or temporaries), mixed once
    with the splitmix64 finaliser for the first hash and re-mixed by a second bijection for the
    second, all in place: ~10 passes over the block instead of ~18 with two separate seeds.
    """
    n = len(matrix.indices)
    key = np.empty(n, dtype=np.uint64)
    halves = key.view(np.uint32).reshape(n, 2)
    halves[:, 0] = matrix.data  # counts ≥ 0 (checked by to_counts): the uint32 cast is exact
    halves[:, 1] = matrix.indices
    scratch = np.empty_like(key)

    def xorshift(x: np.ndarray, bits: int) -> None:
        np.right_shift(x, np.uint64(bits), out=scratch)
        x ^= scratch

    key += np.uint64(0x9E3779B97F4A7C15)
    xorshift(key, 30)
    key *= np.uint64(0xBF58476D1CE4E5B9)
    xorshift(key, 27)
    key *= np.uint64(0x94D049BB133111EB)
    xorshift(key, 31)
    first = _segment_sums(key, matrix.indptr)
    key *= np.uint64(0xD1B54A32D192ED03)
    xorshift(key, 29)
    return first, _segment_sums(key, matrix.indptr)


def _gene_samples(mapped: sp.csr_matrix, row_nnz: np.ndarray, min_genes: int, n_genes: int) -> np.ndarray:
    """Samples expressing each gene, among samples passing ``min_genes`` (≥ 1 gene always).

    Without a ``min_genes`` threshold every non-empty row passes and empty rows add nothing, so
    the mask (a repeat and a gather over every non-zero) is skipped.
    """
    if min_genes <= 1:
        return np.bincount(mapped.indices, minlength=n_genes)
    passing = np.repeat(row_nnz >= min_genes, row_nnz)
    return np.bincount(mapped.indices[passing], minlength=n_genes)


def _ordered_map(function: Callable, items: Iterable, workers: int) -> Iterator[tuple]:
    """Yield ``(item, function(item))`` in input order, computing up to ``workers`` at once.

    Why threads: the heavy steps (h5py reads, numpy/scipy kernels, the Parquet encoder) release
    the GIL, and threads keep one process, one peak RSS and no pickling. At most ``2 × workers``
    items are submitted ahead of the consumer, so memory stays bounded. The first failure in input
    order is raised (later work is cancelled), so errors are deterministic too.
    """
    if workers <= 1:
        for item in items:
            yield item, function(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="corpus")
    pending: deque[tuple[object, Future]] = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(function, item)))
            if len(pending) >= 2 * workers:
                head, future = pending.popleft()
                yield head, future.result()
        while pending:
            head, future = pending.popleft()
            yield head, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _first_column(obs: pd.DataFrame, keys: str | None) -> pd.Series | None:
    if not keys:
        return None
    for key in keys.split(","):
        key = key.strip()
        if key and key in obs.columns:
            return obs[key]
    return None


def _as_strings(series: pd.Series | None, constant: str | None, n: int) -> np.ndarray:
    """Object array of str / None for a metadata column (missing values become None)."""
    if series is None:
        return np.full(n, constant, dtype=object)
    values = series.astype(object).to_numpy()
    out = np.empty(n, dtype=object)
    for i, value in enumerate(values):
        out[i] = None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    if constant is not None:
        out[out == None] = constant  # noqa: E711 - elementwise comparison on an object array
    return out


def _input_fingerprint(path: Path) -> list:
    """Name, size and mtime of every file of an input (content hashing would cost a full read)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


# -------------------------------------------------------------------------------- the input object


class PreparedInput:
    """An opened input: reader, gene map, metadata arrays, and the statistics of the scan pass."""

    def __init__(self, index: int, spec: InputSpec, annotation: GeneAnnotation, options: BuildOptions):
        self.index, self.spec, self.options = index, spec, options
        self.path = Path(spec.path)
        self.reader = open_reader(
            self.path,
            format=spec.format,
            layer=spec.layer,
            gene_column=spec.gene_column,
            samples_as_rows=spec.samples_as_rows,
            gene_mapper=lambda names: count_mappable(names, annotation),
            cache_dir=Path(options.work_dir) / f"text-{index:03d}" if options.work_dir else None,
            allow_non_integer=options.allow_non_integer,
        )
        self.gene_map: GeneMap = harmonise(self.reader.gene_names, self.path, annotation)
        self.n = self.reader.n_samples
        self.metadata = self._metadata()
        self.stats: dict[str, np.ndarray] = {}
        self.keep = np.ones(self.n, dtype=bool)
        self.split = np.full(self.n, -1, dtype=np.int8)  # 0 train, 1 validation, -1 removed
        self.gene_keep = np.ones(len(self.gene_map.gene_ids), dtype=bool)
        self.report: dict[str, Any] = {"file": str(self.path), "reader": self.reader.describe(), "rules": {}}
        self.profile_map: GeneMap | None = None
        self.profile_positions: np.ndarray | None = None
        self._read_lock = threading.Lock()  # readers are not all thread-safe (h5py, open text files)

    def _metadata(self) -> dict[str, np.ndarray]:
        obs = self.reader.obs.copy()
        spec = self.spec
        if spec.sample_annotation:
            table = pd.read_csv(spec.sample_annotation, sep=None, engine="python", dtype=str)
            key = spec.sample_annotation_key or table.columns[0]
            table = table.drop_duplicates(key).set_index(key)
            obs = obs.join(table, how="left", rsuffix="_annotation")
        n = len(obs)
        constants = spec.constants
        perturbation = _as_strings(_first_column(obs, spec.perturbation_key), constants.get("perturbation"), n)
        control_column = _first_column(obs, spec.control_key)
        if control_column is not None:
            is_control = control_column.astype(str).str.lower().isin(["true", "1", "yes", "control"]).to_numpy()
        else:
            lowered = {v.lower() for v in spec.control_values}
            is_control = np.array([p is not None and p.lower() in lowered for p in perturbation], dtype=bool)
        batch_column = _first_column(obs, spec.batch_key)
        if batch_column is None and spec.batch_pattern:
            pattern = re.compile(spec.batch_pattern)
            matches = [pattern.search(str(s)) for s in obs.index]
            batch_column = pd.Series([m.group(1) if m else None for m in matches], index=obs.index)
        return {
            "sample_id": np.array([str(s) for s in obs.index], dtype=object),
            "batch": _as_strings(batch_column, constants.get("batch", spec.source), n),
            "perturbation": perturbation,
            "is_control": is_control,
            "cell_type": _as_strings(_first_column(obs, spec.cell_type_key), constants.get("cell_type"), n),
            "tissue": _as_strings(_first_column(obs, spec.tissue_key), constants.get("tissue"), n),
        }

    # ---- pass 1
    def scan(self, work: Path) -> None:
        """Validate counts and collect per-sample / per-gene statistics (cached in ``work``)."""
        cache = work / f"scan-{self.index:03d}.npz"
        if cache.exists():
            with np.load(cache) as saved:
                self.stats = {k: saved[k] for k in saved.files}
            return
        stats = {name: np.zeros(self.n, dtype=dtype) for name, dtype in self._row_statistics().items()}
        if self._needs_gene_samples:
            stats["gene_samples"] = np.zeros(len(self.gene_map.gene_ids), dtype=np.int64)
        ranges = self._ranges(None)
        with self._bar(self.n, f"scan {self.path.name}") as bar:
            # blocks are read and reduced on worker threads, consumed in order: the first bad
            # block in file order is the one reported, and every statistic is an exact integer
            for (start, stop), block in _ordered_map(self._scan_block, ranges, self.options.workers):
                for name, values in block.items():
                    if name == "gene_samples":
                        stats[name] += values
                    else:
                        stats[name][start:stop] = values
                bar.update(stop - start)
        storage.save_npz_atomic(cache, **stats)
        self.stats = stats

    @property
    def _needs_gene_samples(self) -> bool:
        """Per-gene sample counts only feed ``min_cells`` and the phenoprint gene choice."""
        return self.spec.min_cells > 0 or bool(self.spec.phenoprint)

    def _row_statistics(self) -> dict[str, type]:
        """The per-sample statistics the scan records (hashes only when duplicates are dropped)."""
        names = {"raw_nnz": np.int64, "nnz": np.int64, "total": np.int64}
        if self.options.drop_duplicates:
            names.update(hash1=np.uint64, hash2=np.uint64)
        return names

    def _scan_block(self, block_range: tuple[int, int]) -> dict[str, np.ndarray]:
        """Statistics of one row range (runs on a worker thread: touches no shared state)."""
        start, stop = block_range
        counts = self._read(start, stop, validated=False)
        mapped = self.gene_map.apply(counts, sort=False)
        row_nnz = np.diff(mapped.indptr)
        block = {"raw_nnz": np.diff(counts.indptr), "nnz": row_nnz, "total": np.asarray(mapped.sum(axis=1)).ravel()}
        if self.options.drop_duplicates:
            block["hash1"], block["hash2"] = _row_hashes(mapped)
        if self._needs_gene_samples:
            block["gene_samples"] = _gene_samples(mapped, row_nnz, self.spec.min_genes, len(self.gene_map.gene_ids))
        return block

    def _ranges(self, rows: np.ndarray | None) -> list[tuple[int, int]]:
        """Contiguous read ranges covering ``rows`` (all rows if None) within the block budget.

        The ``block_nnz`` budget is shared by the worker threads (each reads blocks of
        ``block_nnz / workers``), so peak memory does not grow with ``workers``. Block boundaries
        never reach the output: shards are re-cut into fixed 1,024-row groups.
        """
        reader, options = self.reader, self.options
        cost = _row_cost(reader, len(reader.gene_names), self.stats.get("raw_nnz"))
        scale = 16 if reader.full_pass_per_block else 1
        budget = options.block_nnz * scale / max(1, options.workers)
        return _block_ranges(cost, budget, options.block_rows * scale, rows)

    def _bar(self, total: int, label: str) -> tqdm:
        return tqdm(total=total, desc=label, unit="sample", disable=not self.options.progress, leave=False)

    def _read(self, start: int, stop: int, validated: bool) -> sp.csr_matrix:
        """Rows ``start:stop`` as int32 counts (thread-safe: reader access is serialised).

        ``validated=True`` (after the scan pass checked every value) only rounds to integers.
        """
        with self._read_lock:
            block = self.reader.read_rows(start, stop)
        if validated:
            data = block.data if block.data.dtype.kind in "iu" else np.rint(block.data)
            counts = sp.csr_matrix((data.astype(np.int32), block.indices, block.indptr), shape=block.shape)
            counts.eliminate_zeros()
            return counts
        return to_counts(block, self.path, start, self.options.allow_non_integer)

    def blocks(self, rows: np.ndarray | None, label: str, validated: bool = False):
        """Yield ``(start, stop, counts)`` over row ranges covering ``rows`` (all rows if None)."""
        with self._bar(self.n if rows is None else len(rows), label) as bar:
            for start, stop in self._ranges(rows):
                yield start, stop, self._read(start, stop, validated)
                bar.update(stop - start if rows is None else int(np.count_nonzero((rows >= start) & (rows < stop))))

    # ---- pass 2 helpers
    def remove(self, rule: str, mask: np.ndarray, detail: dict | None = None) -> None:
        """Apply a sample rule: ``mask`` marks samples the rule removes (among those still kept)."""
        removed = mask & self.keep
        self.keep &= ~mask
        entry = {"samples_removed": int(removed.sum()), "genes_removed": 0}
        entry.update(detail or {})
        self.report["rules"][rule] = entry

    def remove_genes(self, rule: str, mask: np.ndarray, detail: dict | None = None) -> None:
        removed = mask & self.gene_keep
        self.gene_keep &= ~mask
        examples = [self.gene_map.gene_ids[i] for i in np.nonzero(removed)[0][:10]]
        entry = {"samples_removed": 0, "genes_removed": int(removed.sum()), "examples": examples}
        entry.update(detail or {})
        self.report["rules"][rule] = entry

    def recount(self, kept_genes: np.ndarray) -> np.ndarray:
        """Non-zero genes per sample over ``kept_genes`` (an extra read; only when genes were removed)."""
        restricted = self.gene_map.restrict(kept_genes)
        nnz = np.zeros(self.n, dtype=np.int64)
        rows = np.nonzero(self.keep)[0]
        for start, stop, counts in self.blocks(rows, f"recount {self.path.name}", validated=True):
            nnz[start:stop] = np.diff(restricted.apply(counts, sort=False).indptr)
        return nnz

    def transformed_rows(self, rows: np.ndarray):
        """Yield (rows, CSR over the profile columns) for the requested sorted rows."""
        for start, stop, counts in self.blocks(rows, f"write {self.path.name}", validated=True):
            wanted = rows[(rows >= start) & (rows < stop)]
            if len(wanted) == 0:
                continue
            block = counts if len(wanted) == stop - start else counts[wanted - start]
            yield wanted, self.profile_map.apply(block)

    def close(self) -> None:
        self.reader.close()


# -------------------------------------------------------------------------------------- curation


def curate(item: PreparedInput, vocabulary_index: dict[str, int] | None) -> None:
    """Apply the QC rules to one input; every rule records the samples and genes it removed."""
    stats, spec = item.stats, item.spec
    item.report["mapping"] = item.gene_map.report
    item.report["samples_in"] = item.n
    item.remove("empty_after_harmonisation", stats["total"] == 0, {"description": "no counts on any mapped gene"})
    if spec.min_genes > 0:
        item.remove(
            "min_genes_per_sample",
            stats["nnz"] < spec.min_genes,
            {"threshold": spec.min_genes, "description": "samples expressing fewer genes than the threshold"},
        )
    if spec.phenoprint:
        from .phenoprint import apply_phenoprint

        apply_phenoprint(item, spec.phenoprint)
    if item.options.drop_duplicates:
        item.remove("exact_duplicates", _duplicate_mask(stats, item.keep), {"description": "identical count vectors (128-bit content hash)"})
    if spec.min_cells > 0:
        item.remove_genes(
            "min_samples_per_gene",
            stats["gene_samples"] < spec.min_cells,
            {"threshold": spec.min_cells, "description": "genes expressed in fewer samples (among those passing the sample filter)"},
        )
    if vocabulary_index is not None:
        outside = np.array([g not in vocabulary_index for g in item.gene_map.gene_ids], dtype=bool)
        item.remove_genes("outside_vocabulary", outside, {"description": "genes not in the fixed vocabulary"})
    if not item.gene_keep.all() and item.keep.any():
        remaining = item.recount(item.gene_keep)
        item.remove("empty_after_gene_filter", remaining == 0, {"description": "no counts left on kept genes"})


def _duplicate_mask(stats: dict[str, np.ndarray], keep: np.ndarray) -> np.ndarray:
    """Later copies of an identical count vector among kept samples (the first copy stays)."""
    rows = np.nonzero(keep)[0]
    keys = np.stack([stats["hash1"][rows], stats["hash2"][rows]], axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    mask = np.zeros(len(keep), dtype=bool)
    duplicate = np.ones(len(rows), dtype=bool)
    duplicate[first] = False
    mask[rows[duplicate]] = True
    return mask


# ---------------------------------------------------------------------------------------- splitting


def _hash_fraction(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def assign_split(items: Sequence[PreparedInput], source: str, options: BuildOptions) -> dict:
    """Validation = held-out batches of this source; a single batch falls back to a sample hash.

    Batches are visited in SHA-256 order of their names (deterministic, independent of file order)
    and held out while the validation share stays within 1.5 × the target fraction; if none fits,
    the smallest batch is held out (at least one batch always stays in train).
    """
    batches = np.concatenate([it.metadata["batch"][it.keep] for it in items]) if items else np.array([])
    names, sizes = np.unique(batches.astype(str), return_counts=True) if len(batches) else (np.array([]), np.array([]))
    total = int(sizes.sum())
    explicit = (options.validation_batches or {}).get(source)
    info: dict[str, Any] = {"n_batches": len(names)}
    if explicit is not None:
        held = set(explicit)
        unknown = held - set(names.tolist())
        if unknown:
            raise CorpusBuildError(f"source {source!r}: validation batches {sorted(unknown)} do not exist; batches: {names.tolist()[:20]}")
        info["method"] = "explicit held-out batches"
    elif len(names) >= 2 and options.validation_fraction > 0:
        order = sorted(range(len(names)), key=lambda i: hashlib.sha256(f"{source}/{names[i]}".encode()).hexdigest())
        held, taken = set(), 0
        for i in order:
            if taken + sizes[i] <= 1.5 * options.validation_fraction * total and len(held) < len(names) - 1:
                held.add(str(names[i]))
                taken += int(sizes[i])
        if not held:
            smallest = min(order, key=lambda i: sizes[i])
            held.add(str(names[smallest]))
        info["method"] = "held-out batches"
    else:
        held = None
        info["method"] = (
            f"single batch: deterministic hash split of sample ids (fraction {options.validation_fraction})"
            if len(names) < 2 else "no validation"
        )
    fractions = [np.array([_hash_fraction(f"{source}/{s}") for s in it.metadata["sample_id"]]) for it in items] if held is None else []
    if held is None and options.validation_fraction > 0 and sum(int(it.keep.sum()) for it in items) >= 2:
        # a tiny single-batch source still gets one validation sample (the lowest hash): an empty
        # split cannot be loaded by `datasets`
        if not any(((f < options.validation_fraction) & it.keep).any() for f, it in zip(fractions, items)):
            best = min((f[it.keep].min(), k) for k, (f, it) in enumerate(zip(fractions, items)) if it.keep.any())
            fractions[best[1]] = np.where(fractions[best[1]] == best[0], -1.0, fractions[best[1]])
    for k, it in enumerate(items):
        if held is not None:
            validation = np.array([b in held for b in it.metadata["batch"]], dtype=bool)
        else:
            validation = fractions[k] < options.validation_fraction
        it.split[:] = -1
        it.split[it.keep & ~validation] = 0
        it.split[it.keep & validation] = 1
    info["validation_batches"] = sorted(held) if held is not None else []
    info["samples"] = {
        "train": int(sum((it.split == 0).sum() for it in items)),
        "validation": int(sum((it.split == 1).sum() for it in items)),
    }
    return info


# -------------------------------------------------------------------------------------- vocabulary


def load_vocabulary(path: str | Path) -> tuple[list[str], list[str]]:
    """A fixed vocabulary from ``vocabulary.json``, a corpus folder or a model checkpoint folder."""
    path = Path(path)
    candidates = [path] if path.is_file() else [path / "vocabulary.json", path / "config.json"]
    for candidate in candidates:
        if not candidate.exists():
            continue
        payload = json.loads(candidate.read_text())
        ids = payload.get("gene_ids")
        symbols = payload.get("symbols", payload.get("gene_symbols"))
        if ids:
            symbols = symbols if symbols and len(symbols) == len(ids) else [""] * len(ids)
            return [str(g) for g in ids], [str(s) for s in symbols]
    raise CorpusBuildError(
        f"{path}: no vocabulary found. Pass a vocabulary.json ({{'gene_ids': [...], 'symbols': [...]}}), "
        "a corpus folder, or a TxFM checkpoint folder whose config.json has 'gene_ids'."
    )


def union_vocabulary(items: Sequence[PreparedInput], annotation: GeneAnnotation) -> tuple[list[str], list[str]]:
    genes: set[str] = set()
    for it in items:
        if it.keep.any():
            genes.update(g for g, k in zip(it.gene_map.gene_ids, it.gene_keep) if k)
    gene_ids = sorted(genes)
    return gene_ids, annotation.symbols_for(gene_ids)


# ------------------------------------------------------------------------------------------ writing


@dataclass
class Shard:
    split: str
    number: int
    of: int
    segments: list[tuple[int, np.ndarray]]  # (input index, sorted rows)

    @property
    def name(self) -> str:
        return f"{self.split}-{self.number:05d}-of-{self.of:05d}.parquet"

    @property
    def n_rows(self) -> int:
        return int(sum(len(r) for _, r in self.segments))


def plan_shards(items: Sequence[PreparedInput], rows_per_shard: int) -> list[Shard]:
    """Cut each split's rows (inputs in order, rows in file order) into fixed-size shards."""
    shards: list[Shard] = []
    for code, split in ((0, "train"), (1, "validation")):
        sequence = [(it.index, np.nonzero(it.split == code)[0]) for it in items]
        n_rows = sum(len(rows) for _, rows in sequence)
        count = max(1, math.ceil(n_rows / rows_per_shard))
        current: list[tuple[int, np.ndarray]] = []
        filled, number = 0, 0
        for index, rows in sequence:
            position = 0
            while position < len(rows):
                take = min(rows_per_shard - filled, len(rows) - position)
                current.append((index, rows[position : position + take]))
                position += take
                filled += take
                if filled == rows_per_shard:
                    shards.append(Shard(split, number, count, current))
                    current, filled, number = [], 0, number + 1
        if current:  # an empty split gets no shard (datasets cannot load an empty split)
            shards.append(Shard(split, number, count, current))
    return shards


def write_shard(shard: Shard, items: Sequence[PreparedInput], path: Path) -> str:
    writer = storage.ShardWriter(path)
    try:
        for index, rows in shard.segments:
            item = items[index]
            for wanted, matrix in item.transformed_rows(rows):
                metadata = {name: values[wanted] for name, values in item.metadata.items()}
                metadata["profile_id"] = np.full(len(wanted), index, dtype=np.int32)
                metadata["source"] = np.full(len(wanted), item.spec.source, dtype=object)
                gene_index = item.profile_positions[matrix.indices]
                writer.write(storage.sparse_rows_table(matrix.indptr, gene_index, matrix.data, metadata))
        return writer.close()
    except BaseException:
        writer.abort()
        raise


# ------------------------------------------------------------------------------------------- driver


def _fingerprint(specs: Sequence[InputSpec], options: BuildOptions, vocabulary: list[str] | None) -> str:
    payload = {
        "builder": BUILDER_VERSION,
        "inputs": [{**asdict(s), "files": _input_fingerprint(Path(s.path))} for s in specs],
        "options": {k: v for k, v in asdict(options).items() if k not in ("progress", "sources_info", "dataset_name", "work_dir", "workers")},
        "vocabulary": hashlib.sha256("\n".join(vocabulary).encode()).hexdigest() if vocabulary else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _verified(path: Path, expected: str | None) -> bool:
    return expected is not None and path.exists() and storage.sha256_file(path) == expected


def build_corpus(
    specs: Sequence[InputSpec],
    out: str | Path,
    options: BuildOptions | None = None,
    annotation: GeneAnnotation | None = None,
) -> BuildResult:
    """Build (or resume, or verify) the corpus of ``specs`` into ``out``.

    Returns per-split sample counts, the vocabulary size and the curation report. Raises a
    :class:`~dataset_builder.errors.CorpusBuildError` subclass naming the file on bad inputs.
    """
    options = options or BuildOptions()
    if not specs:
        raise CorpusBuildError("no input files: give at least one h5ad / 10x / GCT / STAR / CSV input.")
    out = Path(out)
    data_dir, work = out / "data", out / WORK_DIR
    fixed = load_vocabulary(options.vocabulary) if options.vocabulary else None
    fingerprint = _fingerprint(specs, options, fixed[0] if fixed else None)

    manifest_path = out / "manifest.json"
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") == fingerprint and all(
            _verified(out / s["path"], s["sha256"]) for s in manifest["shards"]
        ):
            LOGGER.info("%s is complete and verified; nothing to do", out)
            report = json.loads((out / "curation_report.json").read_text())
            return BuildResult(out, manifest["samples"], manifest["n_genes"], report, resumed_shards=len(manifest["shards"]))
        if manifest.get("fingerprint") == fingerprint:  # a shard was damaged: rebuild only what fails
            state = {"fingerprint": fingerprint, "shards": {Path(s["path"]).name: s["sha256"] for s in manifest["shards"]}}
        manifest_path.unlink()
    if state.get("fingerprint") != fingerprint:  # different inputs/options: start afresh
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        state = {"fingerprint": fingerprint, "shards": {}}
    work.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    storage.write_json(state_path, state)

    annotation = annotation or default_annotation()
    options = dataclasses.replace(options, work_dir=str(work))
    items: list[PreparedInput] = []
    try:
        for index, spec in enumerate(specs):
            items.append(PreparedInput(index, spec, annotation, options))
        for item in items:
            item.scan(work)
        vocabulary_index = {g: i for i, g in enumerate(fixed[0])} if fixed else None
        for item in items:
            curate(item, vocabulary_index)
        gene_ids, symbols = fixed if fixed else union_vocabulary(items, annotation)
        if not gene_ids:
            raise CorpusBuildError("no gene survives curation in any input: lower --min-cells or check the inputs.")
        vocabulary_index = {g: i for i, g in enumerate(gene_ids)}
        for item in items:
            positions = np.array([vocabulary_index.get(g, -1) for g in item.gene_map.gene_ids], dtype=np.int64)
            item.profile_map = item.gene_map.restrict(item.gene_keep & (positions >= 0), order=positions)
            item.profile_positions = np.array([vocabulary_index[g] for g in item.profile_map.gene_ids], dtype=np.int32)
        split_info = {}
        for source in dict.fromkeys(spec.source for spec in specs):
            split_info[source] = assign_split([it for it in items if it.spec.source == source], source, options)

        if not any(it.keep.any() for it in items):
            raise CorpusBuildError("no sample survives curation: lower --min-genes or check the curation report rules.")
        shards = plan_shards(items, options.rows_per_shard)
        planned = {s.name for s in shards}
        for stray in data_dir.iterdir():  # shards of an older plan, temporary files of a killed run
            if stray.name not in planned:
                stray.unlink()
        todo = [s for s in shards if not _verified(data_dir / s.name, state["shards"].get(s.name))]
        resumed, written = len(shards) - len(todo), 0
        with tqdm(total=len(shards), initial=resumed, desc="shards", unit="shard", disable=not options.progress) as bar:
            # shards are independent files: encode up to `workers` at once, record them in order
            for shard, digest in _ordered_map(lambda s: write_shard(s, items, data_dir / s.name), todo, options.workers):
                state["shards"][shard.name] = digest
                storage.write_json(state_path, state)
                written += 1
                bar.update(1)

        report = _report(items, split_info, gene_ids, fixed is not None)
        samples = {"train": sum(s.n_rows for s in shards if s.split == "train"),
                   "validation": sum(s.n_rows for s in shards if s.split == "validation")}
        _write_metadata(out, items, gene_ids, symbols, report, options)
        from .card import write_card

        write_card(out, report, samples, len(gene_ids), options)
        manifest = {
            "builder_version": BUILDER_VERSION,
            "fingerprint": fingerprint,
            "samples": samples,
            "n_genes": len(gene_ids),
            "shards": [
                {"path": f"data/{s.name}", "split": s.split, "rows": s.n_rows, "sha256": state["shards"][s.name]}
                for s in shards
            ],
            "files": {name: storage.sha256_file(out / name) for name in ("vocabulary.json", "profiles.json", "curation_report.json")},
        }
        storage.write_json(manifest_path, manifest)  # written last: its presence marks a complete build
        shutil.rmtree(work, ignore_errors=True)
        return BuildResult(out, samples, len(gene_ids), report, resumed, written)
    finally:
        for item in items:
            item.close()


def _report(items: Sequence[PreparedInput], split_info: dict, gene_ids: list[str], fixed: bool) -> dict:
    sources: dict[str, dict] = {}
    for it in items:
        entry = sources.setdefault(it.spec.source, {"inputs": [], "split": split_info[it.spec.source]})
        it.report["profile_id"] = it.index
        it.report["samples_out"] = int(it.keep.sum())
        it.report["profiled_genes"] = len(it.profile_positions)
        entry["inputs"].append(it.report)
    for entry in sources.values():
        entry["samples_out"] = sum(i["samples_out"] for i in entry["inputs"])
        entry["samples_in"] = sum(i["samples_in"] for i in entry["inputs"])
        union = set()
        for it in items:
            if it.report in entry["inputs"]:
                union.update(it.profile_positions.tolist())
        entry["profiled_genes"] = len(union)
    return {
        "builder_version": BUILDER_VERSION,
        "vocabulary": {"n_genes": len(gene_ids), "kind": "fixed" if fixed else "union of curated source genes"},
        "samples_total": sum(e["samples_out"] for e in sources.values()),
        "sources": sources,
    }


def _write_metadata(out: Path, items, gene_ids, symbols, report, options) -> None:
    storage.write_json(out / "vocabulary.json", {"gene_ids": gene_ids, "symbols": symbols}, indent=None)
    profiles = [
        {"profile_id": it.index, "source": it.spec.source, "file": Path(it.spec.path).name,
         "gene_index": it.profile_positions.tolist()}
        for it in items
    ]
    storage.write_json(out / "profiles.json", {"profiles": profiles}, indent=None)
    storage.write_json(out / "curation_report.json", report)
