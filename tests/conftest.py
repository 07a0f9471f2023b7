"""Shared fixtures: real package-shipped data and small TxFM models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GENE_RELATIONSHIPS = Path(os.environ.get("TXFM_GENE_RELATIONSHIPS", SHARED / "data" / "gene_relationships"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def gene_relationships_dir() -> Path:
    if not GENE_RELATIONSHIPS.exists():
        pytest.fail(f"gene relationship databases not found at {GENE_RELATIONSHIPS} (set TXFM_GENE_RELATIONSHIPS)")
    return GENE_RELATIONSHIPS


@pytest.fixture(scope="session")
def annotation():
    from modeling_txfm.gene_annotation import GeneAnnotation

    return GeneAnnotation.load()


@pytest.fixture(scope="session")
def pbmc():
    from modeling_txfm import example_data

    return example_data.pbmc68k()


@pytest.fixture(scope="session")
def wu2020():
    from modeling_txfm import example_data

    return example_data.wu2020()


@pytest.fixture(scope="session")
def pbmc_vocabulary(pbmc, annotation) -> tuple[list[str], list[str]]:
    """The Ensembl IDs of the pbmc68k genes plus a few hundred genes it does not measure."""
    ids, _ = annotation.to_ensembl(list(pbmc.var_names))
    measured = {g for g in ids if g}
    extra = [g for g in annotation.table["ensembl_id"][:300] if g not in measured]
    vocabulary = sorted(measured | set(extra))
    return vocabulary, annotation.symbols_for(vocabulary)


def tiny_config(gene_ids, gene_symbols=None, **overrides):
    from modeling_txfm import TxFMConfig

    settings = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_visible_genes=64,
                    decoder_hidden_size=48, drop_path_rate=0.1)
    settings.update(overrides)
    return TxFMConfig.from_preset("txfm-tiny", gene_ids=gene_ids, gene_symbols=gene_symbols, **settings)


@pytest.fixture()
def tiny_model(pbmc_vocabulary):
    from modeling_txfm import TxFMForMaskedExpressionModeling

    torch.manual_seed(0)
    return TxFMForMaskedExpressionModeling(tiny_config(*pbmc_vocabulary)).eval()


def python_env() -> dict[str, str]:
    """Environment for subprocesses: the same interpreter, no inherited coverage/pytest plugins."""
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env
