"""``TxFMCorpusBuilder``: the corpus as a Hugging Face ``datasets`` builder (datasets ≥ 5, no script).

::

    from dataset_builder import TxFMCorpusBuilder
    builder = TxFMCorpusBuilder(config_name="gtex", data_dir="downloads/", cache_dir="hf_cache/")
    builder.download_and_prepare()
    ds = builder.as_dataset()                      # DatasetDict: train / validation
    stream = builder.as_streaming_dataset()        # IterableDatasetDict

Configs: one per source of Table 1 (``sources.yaml``), ``diverse_rna_1.4m`` (their curated union)
and ``local`` (``data_dir`` = user files). Without ``data_dir`` the files that have a URL are
fetched by the builder's download manager; with one, nothing is downloaded and a missing file
raises an error saying what to get and where to put it.

The heavy lifting (read, harmonise, curate, shard) is :func:`~dataset_builder.build.build_corpus`,
which writes the Parquet corpus folder (``corpus_dir``, default ``<cache_dir>/txfm_corpus/<config>``)
with its vocabulary, profiles, card and manifest — resumable and deterministic. The builder then
re-emits the rows of those shards as examples, so ``as_dataset`` gets datasets' own Arrow cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq

from .build import BuildOptions, build_corpus
from .errors import CorpusBuildError
from .local import local_specs
from .sources import COLLECTION, load_manifest, resolve
from .storage import FEATURES


@dataclass
class TxFMCorpusConfig(datasets.BuilderConfig):
    """A source (or collection) plus the build options; extra fields are the CLI's options."""

    source: str = "local"
    corpus_dir: str | None = None
    vocabulary: str | None = None
    validation_fraction: float = 0.1
    min_genes: int | None = None
    min_cells: int | None = None
    rows_per_shard: int = 20_000
    allow_non_integer: bool = False
    local_options: dict[str, Any] = field(default_factory=dict)
    phenoprint: dict[str, Any] = field(default_factory=dict)


def _configs() -> list[TxFMCorpusConfig]:
    manifest = load_manifest()
    configs = [
        TxFMCorpusConfig(name=name, source=name, description=entry["title"], version=datasets.Version("1.0.0"))
        for name, entry in manifest["sources"].items()
    ]
    configs.append(
        TxFMCorpusConfig(name=COLLECTION, source=COLLECTION, description=manifest["collections"][COLLECTION]["title"],
                         version=datasets.Version("1.0.0"))
    )
    configs.append(TxFMCorpusConfig(name="local", source="local", description="user files (h5ad/10x/GCT/STAR/CSV)",
                                    version=datasets.Version("1.0.0")))
    return configs


class TxFMCorpusBuilder(datasets.GeneratorBasedBuilder):
    """DiverseRNA-1.4M and user corpora as a ``datasets`` builder (see module docstring)."""

    BUILDER_CONFIG_CLASS = TxFMCorpusConfig
    BUILDER_CONFIGS = _configs()
    DEFAULT_CONFIG_NAME = COLLECTION

    def _info(self) -> datasets.DatasetInfo:
        entry = load_manifest()["sources"].get(self.config.source, {})
        return datasets.DatasetInfo(
            description=self.config.description or "TxFM RNA-seq corpus",
            features=FEATURES,
            citation=entry.get("citation", ""),
            homepage=entry.get("homepage", ""),
            license=entry.get("licence", ""),
        )

    def corpus_dir(self) -> Path:
        if self.config.corpus_dir:
            return Path(self.config.corpus_dir)
        return Path(self._cache_dir_root) / "txfm_corpus" / self.config.name

    def _fetch(self, dl_manager):
        """Download one manifest entry with the download manager and link it under its expected name."""

        def fetch(item: dict, folder: Path) -> Path:
            folder.mkdir(parents=True, exist_ok=True)
            url = item["url"]
            local = dl_manager.download_and_extract(url) if item.get("archive") else dl_manager.download(url)
            target = folder / item["filename"].rstrip("/")
            if not target.exists():
                os.symlink(os.path.abspath(local), target)
            return target

        return fetch

    def _split_generators(self, dl_manager):
        config = self.config
        overrides = {k: v for k, v in (("min_genes", config.min_genes), ("min_cells", config.min_cells)) if v is not None}
        if config.phenoprint:
            overrides["phenoprint"] = config.phenoprint
        if config.source == "local":
            local = dict(config.local_options)
            local.update(overrides)
            local.pop("phenoprint", None)
            paths = local.pop("paths", None) or ([config.data_dir] if config.data_dir else None)
            if not paths:
                raise CorpusBuildError(
                    "the 'local' config needs data_dir= (a file or folder) or local_options={'paths': [...]}."
                )
            specs, info = local_specs(paths, **local), {}
        else:
            data_dir = config.data_dir
            fetch = None if data_dir else self._fetch(dl_manager)
            download_root = Path(data_dir) if data_dir else self.corpus_dir().parent / "downloads"
            specs, info = resolve(config.source, download_root, fetch=fetch, overrides=overrides)
        options = BuildOptions(
            vocabulary=config.vocabulary,
            validation_fraction=config.validation_fraction,
            rows_per_shard=config.rows_per_shard,
            allow_non_integer=config.allow_non_integer,
            sources_info=info,
            dataset_name=f"TxFM corpus: {config.name}",
        )
        result = build_corpus(specs, self.corpus_dir(), options)
        files = sorted((result.out / "data").glob("*.parquet"))
        return [
            datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"files": [str(f) for f in files if f.name.startswith("train-")]}),
            datasets.SplitGenerator(name=datasets.Split.VALIDATION, gen_kwargs={"files": [str(f) for f in files if f.name.startswith("validation-")]}),
        ]

    def _generate_examples(self, files: list[str]):
        for shard, path in enumerate(files):
            row = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for example in batch.to_pylist():
                    yield datasets.builder.Key(shard, row), example
                    row += 1
