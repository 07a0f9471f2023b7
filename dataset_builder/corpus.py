"""Reading a built corpus: :func:`load_corpus` is the one entry point training and evaluation use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import storage
from .errors import CorpusFormatError

SPLITS = ("train", "validation")


class Corpus(NamedTuple):
    """A loaded corpus. Unpack it (``dataset, gene_ids, symbols, profiles, path = corpus``) or use fields.

    ``dataset`` is a ``DatasetDict`` (both splits), a ``Dataset`` (one split), or their
    ``Iterable…`` forms when streaming. ``profiles`` maps ``profile_id`` to the sorted int64
    vocabulary positions that the sample's input measured.
    """

    dataset: Any
    gene_ids: list[str]
    symbols: list[str]
    profiles: dict[int, np.ndarray]
    path: Path

    def profile_mask(self, profile_id: int) -> np.ndarray:
        """Boolean mask over the vocabulary: True where the profile measured the gene."""
        mask = np.zeros(len(self.gene_ids), dtype=bool)
        mask[self.profiles[int(profile_id)]] = True
        return mask


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    manifest = path / "manifest.json"
    if not manifest.exists():
        partial = (path / ".work").exists()
        raise CorpusFormatError(
            f"{path}: no manifest.json, so this is not a complete TxFM corpus"
            + (" (a build was interrupted: re-run the same `txfm build-corpus` command to resume)." if partial else
               ". Build one with `txfm build-corpus --source local --data-dir FILES --out DIR`.")
        )
    return json.loads(manifest.read_text())


def read_vocabulary(path: str | Path) -> tuple[list[str], list[str]]:
    payload = json.loads((Path(path) / "vocabulary.json").read_text())
    return payload["gene_ids"], payload["symbols"]


def read_profiles(path: str | Path) -> dict[int, np.ndarray]:
    payload = json.loads((Path(path) / "profiles.json").read_text())
    return {int(p["profile_id"]): np.asarray(p["gene_index"], dtype=np.int64) for p in payload["profiles"]}


def verify_corpus(path: str | Path) -> list[str]:
    """Shards whose SHA-256 differs from the manifest (empty list: the corpus is intact)."""
    path = Path(path)
    manifest = read_manifest(path)
    return [s["path"] for s in manifest["shards"] if storage.sha256_file(path / s["path"]) != s["sha256"]]


def load_corpus(path: str | Path, split: str | None = None, streaming: bool = False, **load_kwargs) -> Corpus:
    """Load a corpus folder written by ``txfm build-corpus``.

    ``split``: ``"train"``, ``"validation"`` or None for both. ``streaming=True`` returns
    ``IterableDataset``s read shard by shard (nothing converted or cached). Extra keyword
    arguments go to ``datasets.load_dataset`` (e.g. ``cache_dir``).
    """
    from datasets import load_dataset

    path = Path(path)
    manifest = read_manifest(path)
    if split is not None and split not in SPLITS:
        raise CorpusFormatError(f"unknown split {split!r}; the corpus has {SPLITS}.")
    data_files = {
        name: [str(path / s["path"]) for s in manifest["shards"] if s["split"] == name] for name in SPLITS
    }
    data_files = {name: files for name, files in data_files.items() if files}  # a split may be empty
    if split is not None and split not in data_files:
        raise CorpusFormatError(f"{path}: the {split!r} split of this corpus is empty.")
    missing = [f for files in data_files.values() for f in files if not Path(f).exists()]
    if missing:
        raise CorpusFormatError(f"{path}: shards listed in manifest.json are missing: {missing[:5]}; rebuild the corpus.")
    dataset = load_dataset(
        "parquet", data_files=data_files, split=split, streaming=streaming, features=storage.FEATURES, **load_kwargs
    )
    gene_ids, symbols = read_vocabulary(path)
    return Corpus(dataset, gene_ids, symbols, read_profiles(path), path)
