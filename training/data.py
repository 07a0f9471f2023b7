"""The corpus as training batches: which samples each process sees at each step.

**Data order** (map-style corpora). Epoch e visits the training rows in the order of a permutation
that is a pure function of (seed, e). Optimizer step s of the epoch takes the slice
``perm[s·G:(s+1)·G]`` (G = global batch); process r takes every W-th sample of it (W processes) and
cuts its share into ``accumulation_steps`` micro batches. Consequences:

* processes see disjoint samples, and together exactly the global batch;
* one process with batch 2b and two processes with batch b train on the *same samples per step*
  (with the collator's per-sample draws, on the same visible genes too);
* resuming needs only (epoch, step in epoch): the loader starts at that position without replaying.

**Streaming** corpora go through ``datasets.distributed.split_dataset_by_node`` and a seeded shuffle
buffer re-seeded per epoch; resume skips the rows already seen (read again, not trained on). Every
process stops an epoch after the same number of steps (from the row count), so no process waits
for a peer that has run out of data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, IterableDataset, load_dataset
from torch.utils.data import DataLoader

from .collator import TRAIN_TAG, VALIDATION_TAG, RaggedRows, TxFMCollator
from .config import BatchPlan

LOGGER = logging.getLogger(__name__)
ROW_COLUMNS = ["gene_index", "counts", "profile_id"]


class CorpusError(ValueError):
    """A corpus that training cannot use; the message names the file and the fix."""


@dataclass
class Corpus:
    """A corpus opened for training: the splits plus the vocabulary and the gene profiles."""

    train: Dataset | IterableDataset
    validation: Dataset | IterableDataset | None
    gene_ids: list[str]
    symbols: list[str]
    profiles: dict[int, np.ndarray]
    location: str
    num_train_rows: int
    num_validation_rows: int


# --------------------------------------------------------------------------------------------------
# Opening a corpus (local folder or Hub dataset)
# --------------------------------------------------------------------------------------------------


def _metadata_file(location: str, name: str) -> Path:
    local = Path(location) / name
    if Path(location).is_dir():
        if not local.exists():
            raise CorpusError(f"{local} is missing: is {location} a corpus made by `txfm build-corpus`?")
        return local
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(location, name, repo_type="dataset"))
    except Exception as error:  # offline, no such repo, no such file
        raise CorpusError(
            f"{location!r} is neither a local corpus folder nor a reachable Hub dataset with {name} "
            f"({type(error).__name__}: {error})"
        ) from error


def _parquet_row_count(files: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def open_corpus(location: str, streaming: bool = False) -> Corpus:
    """Open a corpus folder (``data/{train,validation}-*.parquet``, ``vocabulary.json``,
    ``profiles.json``) or a Hub dataset repository with the same layout."""
    vocabulary = json.loads(_metadata_file(location, "vocabulary.json").read_text())
    profiles_json = json.loads(_metadata_file(location, "profiles.json").read_text())
    gene_ids = [str(g) for g in vocabulary["gene_ids"]]
    symbols = [str(s or "") for s in vocabulary.get("symbols") or [""] * len(gene_ids)]
    profiles = {int(p["profile_id"]): np.asarray(p["gene_index"], dtype=np.int64) for p in profiles_json["profiles"]}

    if (Path(location) / "manifest.json").exists():  # a corpus from `txfm build-corpus`: its own loader
        from dataset_builder import load_corpus, read_manifest

        splits = load_corpus(location, streaming=streaming).dataset
        rows = {split: 0 for split in ("train", "validation")}
        for shard in read_manifest(location)["shards"]:
            rows[shard["split"]] += int(shard["rows"])
    elif Path(location).is_dir():  # the same on-disk layout without a manifest (e.g. training.synthetic)
        data = Path(location) / "data"
        files = {split: sorted(str(p) for p in data.glob(f"{split}-*.parquet")) for split in ("train", "validation")}
        if not files["train"]:
            raise CorpusError(f"No training shards {data}/train-*.parquet in {location}")
        data_files = {split: f for split, f in files.items() if f}
        rows = {split: _parquet_row_count(f) for split, f in data_files.items()}
        splits = load_dataset("parquet", data_files=data_files, streaming=streaming)
    else:  # a Hub dataset repository with the corpus layout
        splits = load_dataset(location, streaming=streaming)
        rows = {split: (splits[split].info.splits[split].num_examples if splits[split].info.splits else None)
                for split in splits}
        if rows.get("train") is None and not streaming:
            rows["train"] = len(splits["train"])
        if rows.get("train") is None:
            raise CorpusError(f"{location}: the dataset card does not record the train split's row count")
    if not rows.get("train"):
        raise CorpusError(f"{location} has no training rows")
    train = splits["train"].select_columns(ROW_COLUMNS)
    has_validation = "validation" in splits and rows.get("validation")
    validation = splits["validation"].select_columns(ROW_COLUMNS) if has_validation else None
    return Corpus(
        train=train,
        validation=validation,
        gene_ids=gene_ids,
        symbols=symbols,
        profiles=profiles,
        location=location,
        num_train_rows=int(rows["train"]),
        num_validation_rows=int(rows.get("validation") or 0),
    )


# --------------------------------------------------------------------------------------------------
# Training batches
# --------------------------------------------------------------------------------------------------


def epoch_permutation(seed: int, epoch: int, n_rows: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the rows: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, TRAIN_TAG, epoch]).permutation(n_rows)


class _EpochMicroBatches(torch.utils.data.Dataset):
    """Map-style view of one process's micro batches in one epoch: item b → collated micro batch b.

    Collation happens here (so in DataLoader workers when there are any): the workers read the rows
    and build the dense targets while the main process trains.
    """

    def __init__(self, rows: Dataset, collator: TxFMCollator, positions: np.ndarray, order: np.ndarray,
                 micro: int, seed: int, epoch: int):
        self.rows = rows
        self.collator = collator
        self.positions = positions  # positions in the epoch order owned by this process
        self.order = order
        self.micro = micro
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.positions) // self.micro

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        rows = self.order[self.positions[b * self.micro:(b + 1) * self.micro]]
        table = self.rows[rows.tolist()]
        keys = [(self.seed, TRAIN_TAG, self.epoch, int(r)) for r in rows]
        batch = self.collator(RaggedRows.from_arrow(table), keys)
        batch["row_index"] = torch.from_numpy(rows.astype(np.int64))
        return batch


class TrainBatches:
    """The training data of one process: ``steps_per_epoch`` optimizer steps per epoch, each made of
    ``plan.accumulation_steps`` micro batches of ``plan.micro_batch_size`` samples."""

    def __init__(self, corpus: Corpus, collator: TxFMCollator, plan: BatchPlan, rank: int, seed: int,
                 num_workers: int = 0, pin_memory: bool = False):
        self.corpus = corpus
        self.collator = collator
        self.plan = plan
        self.rank = rank
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.steps_per_epoch = corpus.num_train_rows // plan.global_batch_size
        if self.steps_per_epoch < 1:
            raise CorpusError(
                f"The corpus has {corpus.num_train_rows} training rows, fewer than one global batch "
                f"({plan.global_batch_size}); lower global_batch_size."
            )
        self.streaming = isinstance(corpus.train, IterableDataset)
        if not self.streaming:
            self.rows = corpus.train.with_format("arrow")
        if self.streaming and num_workers:
            LOGGER.warning("streaming corpora are read in the training process; ignoring num_workers=%d", num_workers)
            self.num_workers = 0

    @property
    def micro_batches_per_epoch(self) -> int:
        return self.steps_per_epoch * self.plan.accumulation_steps

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The micro batches of ``epoch`` from optimizer step ``start_step`` on, in training order."""
        if self.streaming:
            yield from self._stream_epoch(epoch, start_step)
            return
        order = epoch_permutation(self.seed, epoch, self.corpus.num_train_rows)
        used = self.steps_per_epoch * self.plan.global_batch_size
        positions = np.arange(self.rank, used, self.plan.num_processes)
        micro_batches = _EpochMicroBatches(
            self.rows, self.collator, positions, order, self.plan.micro_batch_size, self.seed, epoch
        )
        start = start_step * self.plan.accumulation_steps
        loader = DataLoader(
            micro_batches,
            batch_size=None,
            sampler=range(start, len(micro_batches)),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # A private generator: creating a loader must not consume the global torch RNG, or a
            # resumed run (which creates its loader mid-epoch) would drift from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed + epoch),
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None,
        )
        yield from loader

    def _stream_epoch(self, epoch: int, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        from datasets.distributed import split_dataset_by_node

        stream = split_dataset_by_node(self.corpus.train, rank=self.rank, world_size=self.plan.num_processes)
        stream = stream.shuffle(seed=self.seed, buffer_size=10_000)
        stream.set_epoch(epoch)
        micro = self.plan.micro_batch_size
        skip = start_step * self.plan.accumulation_steps * micro
        if skip:
            stream = stream.skip(skip)
        remaining = self.micro_batches_per_epoch - start_step * self.plan.accumulation_steps
        position = skip
        for columns in stream.iter(batch_size=micro, drop_last_batch=True):
            if remaining <= 0:
                return
            keys = [(self.seed, TRAIN_TAG, epoch, self.rank, position + i) for i in range(micro)]
            position += micro
            remaining -= 1
            yield self.collator(RaggedRows.from_columns(columns), keys)
        if remaining > 0:
            raise CorpusError(
                f"process {self.rank} ran out of streamed rows {remaining} micro batches before the end of "
                "epoch: the row count in the corpus metadata is larger than what the shards hold"
            )


# --------------------------------------------------------------------------------------------------
# Validation batches
# --------------------------------------------------------------------------------------------------


class ValidationBatches:
    """A fixed subset of the validation split, split evenly across processes, with fixed draws.

    The subset, its order and the visible genes are the same at every evaluation, so validation
    curves measure the model and not the luck of the draw. Every process gets the same number of
    samples (at most W − 1 are dropped) so that sharded models run the same number of forwards.
    """

    def __init__(self, corpus: Corpus, collator: TxFMCollator, batch_size: int, max_samples: int,
                 rank: int, world_size: int, seed: int):
        self.collator = collator
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.dataset = corpus.validation
        self.streaming = isinstance(self.dataset, IterableDataset)
        n_rows = corpus.num_validation_rows if self.dataset is not None else 0
        self.total = min(n_rows, max_samples) // world_size * world_size
        if self.dataset is not None and not self.streaming:
            chosen = np.sort(np.random.default_rng([seed, VALIDATION_TAG]).permutation(n_rows)[: self.total])
            self.rows = chosen[rank::world_size]
            self.arrow = self.dataset.with_format("arrow")

    def __len__(self) -> int:
        """Samples evaluated by this process."""
        return self.total // self.world_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if len(self) == 0:
            return
        if self.streaming:
            from datasets.distributed import split_dataset_by_node

            stream = split_dataset_by_node(self.dataset, rank=self.rank, world_size=self.world_size).take(len(self))
            position = 0
            for columns in stream.iter(batch_size=self.batch_size):
                n = len(columns["profile_id"])
                keys = [(self.seed, VALIDATION_TAG, self.rank, position + i) for i in range(n)]
                position += n
                yield self.collator(RaggedRows.from_columns(columns), keys)
            return
        for start in range(0, len(self.rows), self.batch_size):
            rows = self.rows[start:start + self.batch_size]
            keys = [(self.seed, VALIDATION_TAG, int(r)) for r in rows]
            yield self.collator(RaggedRows.from_arrow(self.arrow[rows.tolist()]), keys)
