"""Pretraining end to end, as real processes: `accelerate launch` on a corpus built from package-shipped
data, exact resume after SIGTERM and SIGKILL, and a 2-process (gloo) run against 1 process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, python_env
from safetensors.numpy import load_file

from training.checkpoint import latest_checkpoint
from training.synthetic import write_synthetic_corpus
from training.tracking import read_metrics

PRETRAIN = str(REPO / "training" / "pretrain.py")
TINY = str(REPO / "training" / "configs" / "txfm-tiny.yaml")
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
# a small, fast model for the process-level tests (the tiny preset with a narrower width)
SMALL = ["--model.hidden_size", "32", "--model.num_attention_heads", "2", "--model.decoder_hidden_size", "32",
         "--progress_bar", "false", "--trackers", "csv"]


def env() -> dict[str, str]:
    e = python_env()
    e.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return e


def run(args: list[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def losses(output_dir: Path, key: str = "train/loss") -> dict[int, float]:
    return {int(r["step"]): r[key] for r in read_metrics(output_dir / "logs" / "metrics.csv") if key in r}


@pytest.fixture(scope="module")
def package_corpus(tmp_path_factory) -> Path:
    """A corpus built by `txfm build-corpus --source local` from package-shipped GTEx lung + PBMC files."""
    from dataset_builder.examples import EXAMPLE_BATCH_KEYS, EXAMPLE_CELL_TYPE_KEYS, example_inputs

    root = tmp_path_factory.mktemp("package_corpus")
    inputs = [p for p in example_inputs(root / "inputs") if "gtex_lung" in p.name or "pbmc68k" in p.name]
    out = root / "corpus"
    run([sys.executable, "-m", "modeling_txfm.cli", "build-corpus", "--source", "local", "--data-dir",
         *map(str, inputs), "--out", str(out), "--batch-key", EXAMPLE_BATCH_KEYS,
         "--cell-type-key", EXAMPLE_CELL_TYPE_KEYS, "--quiet"])
    return out


@pytest.fixture(scope="module")
def synthetic_corpus(tmp_path_factory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("synthetic"), n_train=256, n_validation=32,
                                  n_genes=1500, profile_sizes=(1200, 300), seed=3)


def test_accelerate_launch_tiny_trains_validates_and_exports(package_corpus, tmp_path):
    out = tmp_path / "model"
    result = run([ACCELERATE, "launch", "--num_processes", "1", "--cpu", "--num_cpu_threads_per_process", "2",
                  PRETRAIN, "--config", TINY, "--corpus", str(package_corpus), "--output_dir", str(out),
                  "--max_steps", "20", "--global_batch_size", "16", "--eval_every", "10", "--checkpoint_every", "10",
                  "--log_every", "2",
                  "--progress_bar", "false", "--push_to_hub", "--hub_model_id", "txfm-tests/offline"], check=False)
    # offline: the push fails with a clear message (pretrain.py exits 2; `accelerate launch` reports 1),
    # after the local export is complete
    assert result.returncode != 0 and "exit status 2" in result.stderr, result.stderr[-3000:]
    assert "Could not push" in result.stderr and "is complete and loadable" in result.stderr
    train = losses(out)
    first, last = np.mean([train[s] for s in (2, 4, 6)]), np.mean([train[s] for s in (16, 18, 20)])
    assert last < first, train
    validation = losses(out, "val/loss")
    assert sorted(validation) == [0, 10, 20] and validation[20] < validation[10] < validation[0]
    assert 0.0 < losses(out, "val/masked_pearson")[20] <= 1.0
    assert latest_checkpoint(out / "checkpoints").name == "ckpt-00000020"
    assert (out / "logs" / "tensorboard").is_dir() and (out / "README.md").exists()
    # a fresh process, remote code only: AutoModel + AutoFeatureExtractor embed package data
    script = f"""
import sys, numpy as np
from transformers import AutoModel, AutoFeatureExtractor
model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)
processor = AutoFeatureExtractor.from_pretrained({str(out)!r}, trust_remote_code=True)
assert type(model).__name__ == "TxFMModel", type(model)
assert "modeling_txfm" not in sys.modules, "must load as remote code, not the installed package"
rng = np.random.default_rng(0)
genes = model.config.gene_ids[:300]
counts = rng.poisson(2.0, size=(4, len(genes))).astype(np.float32)
embedding = model(**processor(counts, genes)).embedding
assert embedding.shape == (4, model.config.hidden_size) and bool(embedding.isfinite().all())
print("OK", type(model).__module__)
"""
    loaded = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env(), capture_output=True, text=True,
                            timeout=300)
    assert loaded.returncode == 0 and "OK" in loaded.stdout, loaded.stderr[-3000:]


def _pretrain(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, PRETRAIN, "--config", TINY, "--corpus", str(corpus), "--output_dir", str(out), *SMALL,
            "--model.num_visible_genes", "64", "--model.drop_path_rate", "0.1", "--global_batch_size", "16",
            "--per_device_batch_size", "16", "--max_steps", "30", "--checkpoint_every", "5", "--log_every", "1",
            "--eval_every", "10", "--max_eval_samples", "32", *extra]


def _interrupt(args: list[str], when, sig: int) -> int:
    """Start a run, send ``sig`` once ``when()`` holds, return its exit code."""
    process = subprocess.Popen(args, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not when():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before it could be interrupted:\n{process.stderr.read()[-3000:]}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the run to reach the interruption point")
        time.sleep(0.01)
    process.send_signal(sig)
    process.wait(timeout=120)
    return process.returncode


def test_interrupted_and_resumed_runs_log_the_same_losses(synthetic_corpus, tmp_path):
    reference = tmp_path / "uninterrupted"
    run(_pretrain(synthetic_corpus, reference))
    expected = losses(reference)
    assert sorted(expected) == list(range(1, 31))  # 30 steps, 16 steps per epoch: crosses an epoch boundary

    def logged_step(out: Path) -> int:
        path = out / "logs" / "metrics.csv"
        try:
            return max(losses(out), default=0) if path.exists() else 0
        except (ValueError, KeyError):  # caught mid-write
            return 0

    # SIGTERM: finish the step, save a checkpoint, exit 128 + 15; --resume continues exactly
    graceful = tmp_path / "sigterm"
    code = _interrupt(_pretrain(synthetic_corpus, graceful), lambda: logged_step(graceful) >= 7, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    stopped_at = int(latest_checkpoint(graceful / "checkpoints").name.split("-")[1])
    assert 7 <= stopped_at < 30
    run(_pretrain(synthetic_corpus, graceful, "--resume"))

    # SIGKILL (no warning, possibly mid-save): resume from the newest *complete* checkpoint
    killed = tmp_path / "sigkill"

    def has_checkpoint() -> bool:
        found = latest_checkpoint(killed / "checkpoints")
        return found is not None and int(found.name.split("-")[1]) >= 10

    _interrupt(_pretrain(synthetic_corpus, killed), has_checkpoint, signal.SIGKILL)
    run(_pretrain(synthetic_corpus, killed, "--resume"))

    for out in (graceful, killed):
        got = losses(out)
        assert sorted(got) == sorted(expected)
        np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(expected)], rtol=1e-6)
        np.testing.assert_allclose(list(losses(out, "val/loss").values()), list(losses(reference, "val/loss").values()),
                                   rtol=1e-6)
        final, reference_weights = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
        assert all(np.allclose(final[k], reference_weights[k], rtol=1e-5, atol=1e-7) for k in reference_weights)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows_per_step(out: Path, rank: int) -> dict[int, list[int]]:
    rows: dict[int, list[int]] = {}
    for line in (out / "logs" / f"rows-rank{rank}.txt").read_text().splitlines():
        step, *indices = map(int, line.split())
        rows.setdefault(step, []).extend(indices)
    return rows


def test_two_processes_train_on_disjoint_shards_like_one_process(synthetic_corpus, tmp_path):
    common = ["--corpus", str(synthetic_corpus), *SMALL, "--config", TINY, "--model.num_visible_genes", "64",
              "--model.drop_path_rate", "0.0", "--global_batch_size", "16", "--max_steps", "12",
              "--checkpoint_every", "0", "--eval_every", "6", "--max_eval_samples", "32", "--log_every", "1",
              "--record_rows"]
    single, double = tmp_path / "one", tmp_path / "two"
    run([sys.executable, PRETRAIN, *common, "--output_dir", str(single), "--per_device_batch_size", "16"])
    # `accelerate launch --cpu` starts one process whatever --num_processes says (accelerate#2741);
    # --multi_gpu launches through torchrun, and pretrain.py picks gloo when there is no GPU
    run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_cpu_threads_per_process", "1",
         "--main_process_port", str(_free_port()), PRETRAIN, *common, "--output_dir", str(double),
         "--per_device_batch_size", "8"])
    reference, shards = _rows_per_step(single, 0), [_rows_per_step(double, r) for r in (0, 1)]
    for step, rows in reference.items():
        assert len(shards[0][step]) == len(shards[1][step]) == 8
        assert not set(shards[0][step]) & set(shards[1][step])  # disjoint
        assert sorted(shards[0][step] + shards[1][step]) == sorted(rows)  # together: the same global batch
    one, two = losses(single), losses(double)
    assert sorted(one) == sorted(two) == list(range(1, 13))
    np.testing.assert_allclose([two[s] for s in range(1, 13)], [one[s] for s in range(1, 13)], rtol=1e-4)
    assert np.mean([two[s] for s in (10, 11, 12)]) < np.mean([two[s] for s in (1, 2, 3)])
    np.testing.assert_allclose(losses(double, "val/loss")[12], losses(single, "val/loss")[12], rtol=1e-4)
    assert (double / "model.safetensors").exists() and not os.path.exists(double / "checkpoints" / "ckpt-00000012.tmp")

    # SSL fine-tuning: --init_from continues the saved model (same vocabulary) with a fresh schedule
    tuned = tmp_path / "tuned"
    run([sys.executable, PRETRAIN, *common, "--output_dir", str(tuned), "--per_device_batch_size", "16",
         "--init_from", str(single), "--max_steps", "2"])
    assert losses(tuned)[1] < one[1]  # starts from the trained weights, not from scratch
    from training.config import TrainConfig
    from training.data import CorpusError
    from training.pretrain import build_model

    with pytest.raises(CorpusError, match="different gene vocabulary"):
        build_model(TrainConfig(corpus="elsewhere", init_from=str(single)), ["ENSG00000000003"], [""])
