"""Known gene–gene relationship databases (CORUM, HuMAP, Reactome, SIGNOR, StringDB).

The files are data, not code: they are read from a directory and never copied into the repository
(licences differ per file). The directory is, in order: the ``directory`` argument (CLI
``--relationships``), the ``TXFM_GENE_RELATIONSHIPS`` environment variable, then
``../shared/data/gene_relationships`` next to the repository (the test set-up).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pandas as pd

from .errors import RelationshipDataError

DATABASES = ("CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB")
ENV_VAR = "TXFM_GENE_RELATIONSHIPS"


def _candidates(directory: str | os.PathLike | None) -> list[Path]:
    if directory is not None:
        return [Path(directory)]
    found = []
    if os.environ.get(ENV_VAR):
        found.append(Path(os.environ[ENV_VAR]))
    repo = Path(__file__).resolve().parents[1]
    found += [repo.parent / "shared" / "data" / "gene_relationships", Path.cwd().parent / "shared" / "data" / "gene_relationships"]
    return found


def relationships_dir(directory: str | os.PathLike | None = None) -> Path:
    """The directory holding ``<DB>.txt`` files; raises a message that says where it looked."""
    tried = _candidates(directory)
    for path in tried:
        if (path / "CORUM.txt").is_file():
            return path
    raise RelationshipDataError(
        "Gene relationship databases (CORUM.txt, HuMAP.txt, …) not found; looked in: "
        + ", ".join(str(p) for p in tried)
        + f". Pass --relationships DIR or set {ENV_VAR}. They are the `bmdb_database/` files of "
        "github.com/valence-labs/Tx-Evaluation."
    )


@lru_cache(maxsize=16)
def _load_pairs(path: str) -> frozenset[tuple[str, str]]:
    frame = pd.read_csv(path, dtype=str).dropna()
    if not {"entity1", "entity2"} <= set(frame.columns):
        raise RelationshipDataError(f"{path} must be a CSV with columns entity1,entity2.")
    pairs = {tuple(sorted((a.strip(), b.strip()))) for a, b in zip(frame["entity1"], frame["entity2"])}
    return frozenset(p for p in pairs if p[0] != p[1])


def load_relationships(
    directory: str | os.PathLike | None = None, databases: tuple[str, ...] | list[str] = DATABASES
) -> dict[str, frozenset[tuple[str, str]]]:
    """Undirected, de-duplicated, non-self symbol pairs per database."""
    root = relationships_dir(directory)
    out = {}
    for db in databases:
        path = root / f"{db}.txt"
        if not path.is_file():
            raise RelationshipDataError(f"{path} is missing (databases expected: {', '.join(databases)}).")
        out[db] = _load_pairs(str(path))
    return out


def load_corum_complexes(directory: str | os.PathLike | None = None, min_size: int = 2) -> dict[str, list[str]]:
    """CORUM complexes (name → member symbols) from ``CORUM_clusters.tsv``."""
    path = relationships_dir(directory) / "CORUM_clusters.tsv"
    if not path.is_file():
        raise RelationshipDataError(f"{path} is missing: the simulator needs the CORUM complexes.")
    complexes = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            name, _, members = line.rstrip("\n").partition("\t")
            genes = list(dict.fromkeys(members.split()))
            if len(genes) >= min_size:
                complexes[name] = genes
    return complexes
