"""The README's Python examples run as written (in a folder holding the files they name)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, python_env

from modeling_txfm import TxFMProcessor

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, pbmc, pbmc_vocabulary) -> Path:
    """A folder with `runs/demo/model` (a small untrained checkpoint) and `my_counts.h5ad` (real PBMCs)."""
    import torch
    from conftest import tiny_config

    from modeling_txfm import TxFMForMaskedExpressionModeling

    folder = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    model = TxFMForMaskedExpressionModeling(tiny_config(*pbmc_vocabulary))
    model.save_pretrained(folder / "runs/demo/model")
    TxFMProcessor.from_config(model.config).save_pretrained(folder / "runs/demo/model")
    pbmc[:150].copy().write_h5ad(folder / "my_counts.h5ad")
    return folder


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs(index, workdir):
    result = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=workdir, capture_output=True, text=True,
                            env=python_env(), timeout=300)
    assert result.returncode == 0, f"README example {index} failed:\n{BLOCKS[index]}\n{result.stderr[-3000:]}"


def test_readme_results_block_is_generated_from_committed_results():
    from model_card.readme_results import END, START, results_block

    files = sorted((REPO / "benchmarks" / "results").glob("*.json"))
    assert files, "benchmarks/results/ holds the results.json files the README tables come from"
    text = (REPO / "README.md").read_text()
    block = START + text.split(START, 1)[1].split(END, 1)[0] + END
    assert block == results_block([f.relative_to(REPO) for f in files])
