"""TxFM corpus builder: public RNA-seq files → DiverseRNA-1.4M-style sparse Parquet corpus.

CORPUS CONTRACT (training and evaluation rely on exactly this)
================================================================

A corpus is a folder ``OUT/`` holding:

``data/train-NNNNN-of-NNNNN.parquet``, ``data/validation-NNNNN-of-NNNNN.parquet``
    Parquet shards (delta-encoded lists, zstd, row groups of 1,024 rows, deterministic bytes).
    A split with no samples has no shard; a source with ≥ 2 samples always gives validation at
    least one. One row per sample:

    ============== ================ =========================================================
    ``gene_index`` list<int32>      sorted positions in the vocabulary, non-zero genes only
    ``counts``     list<int32>      raw counts (> 0), same length as ``gene_index``
    ``profile_id`` int32            the gene set the sample's input measured (``profiles.json``)
    ``source``     string           source dataset (the input file's name for ``local``)
    ``sample_id``  string           cell barcode / sample id in the source
    ``batch``      string           experimental batch; validation = held-out batches per source
    ``perturbation`` string | null  perturbed gene / compound
    ``is_control`` bool             non-targeting / vehicle control
    ``cell_type``  string | null
    ``tissue``     string | null
    ============== ================ =========================================================

    A vocabulary gene in the sample's profile but absent from ``gene_index`` is a *measured zero*;
    a gene outside the profile was *not measured* (the loss must skip it).
``vocabulary.json``
    ``{"gene_ids": [unversioned Ensembl IDs, in vocabulary order], "symbols": [parallel list]}``.
    Built corpora use the sorted union of the sources' curated genes, or a fixed vocabulary given
    with ``--vocabulary`` (a vocabulary.json, a corpus folder or a checkpoint folder whose
    ``config.json`` has ``gene_ids`` / ``gene_symbols``) — genes outside it are dropped and reported.
``profiles.json``
    ``{"profiles": [{"profile_id": int, "source": str, "file": str, "gene_index": [sorted int]}]}``.
``curation_report.json``
    Per source and input: the gene mapping report and, per rule, ``samples_removed`` /
    ``genes_removed``; the split method and held-out batches.
``README.md``
    Dataset card: YAML ``configs`` (so ``load_dataset(OUT)`` finds the splits), schema,
    per-source counts, citations and licences.
``manifest.json``
    Builder version, input fingerprint, per-split counts, SHA-256 of every shard and metadata
    file. Written last: a folder without it is an incomplete (resumable) build.

Loading
-------
* ``dataset_builder.load_corpus(OUT, split=None, streaming=False)`` → :class:`Corpus`
  ``(dataset, gene_ids, symbols, profiles, path)`` with ``profiles[profile_id]`` an int64 array of
  vocabulary positions. This is the entry point for training.
* ``datasets.load_dataset(str(OUT))`` (uses the card's YAML configs) and
  ``datasets.load_dataset("parquet", data_dir=str(OUT / "data"))`` (split names from the shard file
  names) both work, streaming included.

Building
--------
``txfm build-corpus --source local --data-dir FILES_OR_DIR --out OUT`` (any h5ad / 10x / GCT /
STAR / CSV files), ``--source NAME`` for the nine paper sources and ``diverse_rna_1.4m`` (see
``sources.yaml``), or in Python :func:`build_corpus` / :class:`TxFMCorpusBuilder` (a
``datasets.GeneratorBasedBuilder``).
"""

from __future__ import annotations

from .build import BuildOptions, BuildResult, InputSpec, build_corpus, load_vocabulary
from .corpus import Corpus, load_corpus, read_manifest, verify_corpus
from .errors import (
    CorpusBuildError,
    CorpusFormatError,
    CorruptInputError,
    GeneMappingError,
    MissingSourceFilesError,
    NotCountsError,
)
from .local import local_specs
from .storage import FEATURES

__all__ = [
    "FEATURES",
    "BuildOptions",
    "BuildResult",
    "Corpus",
    "CorpusBuildError",
    "CorpusFormatError",
    "CorruptInputError",
    "GeneMappingError",
    "InputSpec",
    "MissingSourceFilesError",
    "NotCountsError",
    "TxFMCorpusBuilder",
    "build_corpus",
    "load_corpus",
    "load_vocabulary",
    "local_specs",
    "read_manifest",
    "verify_corpus",
]


def __getattr__(name: str):
    if name == "TxFMCorpusBuilder":  # imported lazily: the builder module pulls in the source manifest
        from .builder import TxFMCorpusBuilder

        return TxFMCorpusBuilder
    raise AttributeError(name)
