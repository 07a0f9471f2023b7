"""The nine paper sources and the ``diverse_rna_1.4m`` collection, resolved from ``sources.yaml``.

Resolution turns a source name and a ``data_dir`` into :class:`~dataset_builder.build.InputSpec`
objects. Files are looked up in ``DATA_DIR/<source>/`` and then ``DATA_DIR/``; a missing file
raises :class:`MissingSourceFilesError` listing, for every missing file, where to get it and where
to put it. Downloading (when no ``data_dir`` is given) is done by the caller's ``fetch`` callable —
the ``datasets`` download manager in :class:`~dataset_builder.builder.TxFMCorpusBuilder`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .build import InputSpec
from .errors import CorpusBuildError, MissingSourceFilesError

MANIFEST_PATH = Path(__file__).with_name("sources.yaml")
COLLECTION = "diverse_rna_1.4m"
_INPUT_FIELDS = {
    "format", "layer", "gene_column", "samples_as_rows", "batch_key", "batch_pattern", "cell_type_key",
    "tissue_key", "perturbation_key", "control_key", "constants", "sample_annotation_key",
}


@functools.lru_cache(maxsize=1)
def load_manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST_PATH.read_text())


def paper_sources() -> list[str]:
    return list(load_manifest()["sources"])


def source_names() -> list[str]:
    return [*paper_sources(), *load_manifest()["collections"], "local"]


def members(name: str) -> list[str]:
    manifest = load_manifest()
    if name in manifest["collections"]:
        return list(manifest["collections"][name]["sources"])
    if name in manifest["sources"]:
        return [name]
    raise CorpusBuildError(f"unknown source {name!r}; choose one of {source_names()}.")


def source_info(name: str) -> dict[str, Any]:
    entry = load_manifest()["sources"][name]
    return {k: entry.get(k) for k in ("title", "citation", "licence", "homepage", "expected", "mode")}


def _source_dir(data_dir: Path, name: str) -> Path:
    return data_dir / name if (data_dir / name).is_dir() else data_dir


def _missing_message(name: str, missing: list[dict], folder: Path) -> str:
    entry = load_manifest()["sources"][name]
    lines = [f"source {name!r} ({entry['title']}): {len(missing)} file(s) missing from {folder}:"]
    for item in missing:
        where = item.get("url") or item.get("manual") or entry["homepage"]
        lines.append(f"  - {item['filename']}  [{item.get('format', '')}]\n      get it from: {where}")
    lines.append(
        f"Put the files in {folder} (or DATA_DIR/{name}/) and re-run, or run without --data-dir to let "
        "the download manager fetch the files that have a URL."
    )
    return "\n".join(lines)


def resolve_source(
    name: str,
    data_dir: str | Path | None,
    fetch: Callable[[dict, Path], Path] | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[InputSpec]:
    """Input specs of one paper source. ``fetch(download_entry, folder)`` downloads a missing file."""
    entry = load_manifest()["sources"][name]
    folder = _source_dir(Path(data_dir), name) if data_dir is not None else None
    if folder is None or not folder.exists():
        if fetch is None:
            raise MissingSourceFilesError(_missing_message(name, entry["downloads"], Path(str(data_dir))))
        folder = folder or Path(".")
    missing = [d for d in entry["downloads"] if not list(folder.glob(d["filename"].rstrip("/")))]
    if missing and fetch is not None:
        still = []
        for item in missing:
            if item.get("url"):
                fetch(item, folder)
            else:
                still.append(item)
        missing = still
    if missing:
        raise MissingSourceFilesError(_missing_message(name, missing, folder))
    qc = dict(entry.get("qc") or {})
    overrides = overrides or {}
    specs = []
    for declared in entry["inputs"]:
        paths = sorted(folder.glob(declared["path"].rstrip("/"))) if any(c in declared["path"] for c in "*?[") else [folder / declared["path"]]
        if not paths:
            raise MissingSourceFilesError(_missing_message(name, entry["downloads"], folder))
        for path in paths:
            fields = {k: v for k, v in declared.items() if k in _INPUT_FIELDS}
            if "control_values" in declared:
                fields["control_values"] = tuple(declared["control_values"])
            annotation = declared.get("sample_annotation")
            if annotation:
                base = path if path.is_dir() else folder
                candidate = base / annotation
                fields["sample_annotation"] = str(candidate if candidate.exists() else folder / annotation)
            spec = InputSpec(
                path=str(path),
                source=name,
                min_genes=int(overrides.get("min_genes", qc.get("min_genes", 0))),
                min_cells=int(overrides.get("min_cells", qc.get("min_cells", 0))),
                phenoprint=({**qc["phenoprint"], **(overrides.get("phenoprint") or {})} if qc.get("phenoprint") else None),
                **fields,
            )
            specs.append(spec)
    return specs


def resolve(name: str, data_dir, fetch=None, overrides=None) -> tuple[list[InputSpec], dict[str, dict]]:
    """Specs and card info of a paper source or of the whole collection."""
    specs: list[InputSpec] = []
    info = {}
    missing: list[str] = []
    for member in members(name):
        try:
            specs.extend(resolve_source(member, data_dir, fetch, overrides))
        except MissingSourceFilesError as error:  # list every missing file of the collection at once
            missing.append(str(error))
        info[member] = source_info(member)
    if missing:
        raise MissingSourceFilesError("\n\n".join(missing))
    return specs, info
