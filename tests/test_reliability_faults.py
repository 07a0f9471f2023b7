"""Crash-safety under fault injection (issue 8, items 1, 2 and 5), as real processes.

* ``txfm build-corpus`` SIGKILLed at random moments, then re-run: byte-identical output.
* ``accelerate launch training/pretrain.py`` SIGKILLed (whole process group) at random moments,
  during checkpoint writes included; ``--resume`` starts from the newest complete checkpoint and logs
  the uninterrupted run's losses step by step. SIGTERM / SIGINT save a checkpoint and exit cleanly.
* ``txfm embed`` SIGKILLed mid-file; ``--resume`` does not recompute finished chunks.

A few trials here (``make test``); ``make reliability`` runs the full campaign
(``benchmarks/reliability_campaign.py``). The harness is :mod:`benchmarks.reliability_harness`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from benchmarks.reliability_harness import (
    REPO,
    corpus_campaign,
    signal_trial,
    subprocess_env,
    training_campaign,
)
from modeling_txfm import example_data
from training.synthetic import write_synthetic_corpus

TRIALS = int(os.environ.get("TXFM_FAULT_TRIALS", "2"))


@pytest.fixture(scope="module")
def synthetic_corpus(tmp_path_factory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("synthetic"), n_train=96, n_validation=32,
                                  n_genes=300, profile_sizes=(200, 120), seed=5)


def test_corpus_builder_killed_at_random_moments_rebuilds_identical_shards(tmp_path):
    inputs = [example_data.package_file(*example_data.AIRWAY), example_data.package_file(*example_data.GTEX_LUNG)]
    campaign = corpus_campaign(inputs, tmp_path, trials=TRIALS, seed=1)
    print(campaign.summary())
    assert campaign.failures == [] and campaign.trials == TRIALS


def test_pretraining_killed_at_random_moments_resumes_exactly(synthetic_corpus, tmp_path):
    campaign = training_campaign(synthetic_corpus, tmp_path, trials=TRIALS, seed=2, steps=10, checkpoint_every=2)
    print(campaign.summary())
    assert campaign.failures == [] and campaign.trials == TRIALS


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_preemption_signal_saves_a_checkpoint_and_resumes_exactly(synthetic_corpus, tmp_path, sig):
    result = signal_trial(synthetic_corpus, tmp_path, sig, steps=10, launcher="python", at_step=3)
    assert result["exit_code"] == 128 + sig, result  # pretrain.py's own exit code
    assert result["checkpoint"] == result["stopped_at"] >= 3 and result["message"], result
    assert result["resume_code"] == 0 and result["resumed_from"] == result["checkpoint"], result
    assert result["losses_match"], result


# ------------------------------------------------------------------------------------ txfm embed --resume

EMBED_HOOK = """
import sys, time
from modeling_txfm import embedding
real = embedding.embed_counts
def counted(counts, *args, **kwargs):
    with open(sys.argv[1], "a") as log:
        log.write(f"{counts.shape[0]}\\n")
    time.sleep(float(sys.argv[2]))
    return real(counts, *args, **kwargs)
embedding.embed_counts = counted
from modeling_txfm.cli import main
sys.exit(main(sys.argv[3:]))
"""


def write_counts_h5ad(path: Path, n_cells: int, genes: list[str], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    matrix = sp.random(n_cells, len(genes), density=0.05, format="csr", random_state=rng,
                       data_rvs=lambda n: rng.integers(1, 20, n)).astype(np.float32)
    matrix = sp.hstack([sp.csr_matrix(np.ones((n_cells, 1), np.float32)), matrix[:, 1:]]).tocsr()  # no empty cell
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    ad.AnnData(X=sp.csr_matrix(matrix), obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def embed_checkpoint(tmp_path_factory) -> Path:
    from conftest import tiny_config

    from modeling_txfm import TxFMForMaskedExpressionModeling, TxFMProcessor

    genes = [f"ENSG{50_000_000_000 + i:011d}" for i in range(200)]
    torch.manual_seed(0)
    model = TxFMForMaskedExpressionModeling(tiny_config(genes, hidden_size=16, num_attention_heads=2,
                                                        decoder_hidden_size=16, num_visible_genes=32))
    folder = tmp_path_factory.mktemp("embed_ckpt") / "model"
    model.save_pretrained(folder)
    TxFMProcessor.from_config(model.config).save_pretrained(folder)
    return folder


def _embed_command(log: Path, delay: float, source: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", EMBED_HOOK, str(log), str(delay), "embed", str(source), "--model", str(model),
            "--out", str(out), "--chunk-size", "500", "--batch-size", "250", "--device", "cpu", *extra]


def test_embed_killed_mid_file_resumes_without_recomputing_finished_chunks(embed_checkpoint, tmp_path):
    n_cells = 8_000
    genes = json.loads((embed_checkpoint / "config.json").read_text())["gene_ids"]
    source = write_counts_h5ad(tmp_path / "cells.h5ad", n_cells, genes)
    reference, out = tmp_path / "reference.h5ad", tmp_path / "out.h5ad"
    subprocess.run(_embed_command(tmp_path / "ref.log", 0.0, source, embed_checkpoint, reference), cwd=REPO,
                   env=subprocess_env(), check=True, capture_output=True, timeout=600)

    # run 1: killed once about half the chunks are recorded as done
    progress_file = Path(f"{out}.embed-progress") / "progress.json"
    process = subprocess.Popen(_embed_command(tmp_path / "run1.log", 0.05, source, embed_checkpoint, out),
                               cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    done = 0
    while done < n_cells // 2:
        assert process.poll() is None and time.time() < deadline, "embed ended before it could be killed"
        try:
            done = json.loads(progress_file.read_text())["rows_done"]
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()  # the output is atomic: absent until complete
    recorded = json.loads(progress_file.read_text())["rows_done"]
    assert n_cells // 2 <= recorded < n_cells

    # run 2: --resume computes only the rows not recorded as done
    subprocess.run(_embed_command(tmp_path / "run2.log", 0.0, source, embed_checkpoint, out, "--resume"), cwd=REPO,
                   env=subprocess_env(), check=True, capture_output=True, timeout=600)
    recomputed = sum(int(n) for n in (tmp_path / "run2.log").read_text().split())
    assert recomputed == n_cells - recorded
    got = ad.read_h5ad(out).obsm["X_txfm"]
    expected = ad.read_h5ad(reference).obsm["X_txfm"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not Path(f"{out}.embed-progress").exists()  # cleaned up once the output is complete
