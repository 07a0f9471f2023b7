"""Fault injection for issue 8: kill real `txfm build-corpus` and `accelerate launch training/pretrain.py`
processes at random moments, resume them, and compare with an uninterrupted run.

A preemption kills every process of a job at once, so a kill here is ``SIGKILL`` to the whole process
group (``accelerate launch`` and its training child together; killing only the launcher would leave
the child running and prove nothing). Kill times are uniform over the duration of the uninterrupted
run (one in five over the whole run, the others over the part after start-up, where files are
written), so they land during steps, evaluations and checkpoint writes in proportion to the time each
takes; at each kill the harness records whether a checkpoint was being written (a
``ckpt-*.tmp`` folder existed) and which complete checkpoint was newest, and checks that the resumed
run started exactly there.

Used by ``tests/test_reliability_faults.py`` (a few trials, ``make test``) and
``benchmarks/reliability_campaign.py`` (many, ``make reliability``).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "training" / "pretrain.py"
TINY = REPO / "training" / "configs" / "txfm-tiny.yaml"
ACCELERATE = Path(sys.executable).parent / "accelerate"
# a very small model: the harness is about process death, not learning
SMALL_MODEL = ["--model.hidden_size", "32", "--model.num_attention_heads", "2", "--model.decoder_hidden_size", "32",
               "--model.num_visible_genes", "64", "--model.drop_path_rate", "0.1", "--progress_bar", "false",
               "--trackers", "csv"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONHASHSEED="0")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class Campaign:
    """What happened, for RESULTS.md: every trial, every kill, and every failure with its reason."""

    name: str
    trials: int = 0
    kills: int = 0
    kills_during_checkpoint_write: int = 0
    kills_before_first_checkpoint: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"trials": self.trials, "kills": self.kills, "kills_during_checkpoint_write": self.kills_during_checkpoint_write,
                "kills_before_first_checkpoint": self.kills_before_first_checkpoint,
                "failures": len(self.failures), "failure_reasons": self.failures[:10], "seconds": round(self.seconds, 1)}


def _start(command: list[str], log: Path) -> subprocess.Popen:
    handle = open(log, "ab")  # noqa: SIM115 - owned by the child; closed with it
    return subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _wait_group(process: subprocess.Popen, timeout: float) -> int:
    """Wait for the process and every other member of its group (children of a killed launcher)."""
    deadline = time.time() + timeout
    code = None
    while time.time() < deadline:
        code = process.poll() if code is None else code
        if code is not None and not _group_alive(process.pid):
            return code
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    raise TimeoutError(f"{process.args} did not finish in {timeout:.0f} s")


def _run(command: list[str], log: Path, timeout: float = 600) -> int:
    return _wait_group(_start(command, log), timeout)


def _timed_reference(command: list[str], log: Path, marker: Path, timeout: float = 600) -> tuple[float, float]:
    """Run to completion; return (seconds until ``marker`` first existed, i.e. real work began; total seconds)."""
    began = time.time()
    process = _start(command, log)
    work_began = None
    while process.poll() is None:
        if work_began is None and marker.exists():
            work_began = time.time() - began
        time.sleep(0.01)
    code = _wait_group(process, timeout)
    if code != 0:
        raise RuntimeError(f"the reference run failed: {log.read_text()[-3000:]}")
    total = time.time() - began
    return (work_began if work_began is not None else 0.0), total


def kill_time(rng: random.Random, work_began: float, duration: float) -> float:
    """Uniform over the whole run one time in five (start-up included), else uniform over the part where
    files are being written — where a kill can do harm."""
    return rng.uniform(0.0, duration) if rng.random() < 0.2 else rng.uniform(work_began, duration)


def tree_checksums(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path → digest), skipping names starting with ``skip``."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if path.is_file() and not relative.startswith(skip):
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# ------------------------------------------------------------------------------------ corpus builder


def build_command(inputs: list[Path], out: Path, rows_per_shard: int) -> list[str]:
    return [sys.executable, "-m", "modeling_txfm.cli", "build-corpus", "--source", "local", "--data-dir",
            *map(str, inputs), "--out", str(out), "--batch-key", "cell", "--rows-per-shard", str(rows_per_shard),
            "--quiet"]


def corpus_campaign(inputs: list[Path], workdir: Path, trials: int, seed: int = 0, rows_per_shard: int = 4,
                    max_kills_per_trial: int = 3) -> Campaign:
    """Per trial: kill the build 1–``max_kills_per_trial`` times at uniform random moments, then let it finish;
    the output must be byte-identical to an uninterrupted build (every shard, vocabulary, report, card)."""
    campaign, rng, started = Campaign("corpus"), random.Random(seed), time.time()
    reference = workdir / "reference"
    work_began, duration = _timed_reference(build_command(inputs, reference, rows_per_shard),
                                            workdir / "reference.log", reference / "data")
    expected = tree_checksums(reference, skip=(".work",))
    for trial in range(trials):
        out, log = workdir / f"trial{trial:03d}", workdir / f"trial{trial:03d}.log"
        campaign.trials += 1
        try:
            for _ in range(rng.randint(1, max_kills_per_trial)):
                process = _start(build_command(inputs, out, rows_per_shard), log)
                time.sleep(kill_time(rng, work_began, duration))
                if process.poll() is None:
                    shards = len(list((out / "data").glob("*.parquet"))) if (out / "data").exists() else 0
                    writing = bool(list((out / "data").glob(".*.tmp"))) if (out / "data").exists() else False
                    campaign.kills_before_first_checkpoint += shards == 0  # no shard on disk yet
                    campaign.kills_during_checkpoint_write += writing  # a shard was being written
                    os.killpg(process.pid, signal.SIGKILL)
                    campaign.kills += 1
                _wait_group(process, 120)
            if _run(build_command(inputs, out, rows_per_shard), log) != 0:
                raise AssertionError(f"the rerun failed: {log.read_text()[-2000:]}")
            got = tree_checksums(out, skip=(".work",))
            if got != expected:
                differ = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
                raise AssertionError(f"output differs from the uninterrupted build: {differ[:5]}")
            from dataset_builder import load_corpus

            corpus = load_corpus(out)
            ids = [i for split in corpus.dataset for i in corpus.dataset[split]["sample_id"]]
            if len(ids) != len(set(ids)):
                raise AssertionError("duplicated samples")
        except Exception as error:  # noqa: BLE001 - a failed trial is data for the report
            campaign.failures.append(f"trial {trial}: {error}")
    campaign.seconds = time.time() - started
    return campaign


# ------------------------------------------------------------------------------------ pretraining


def pretrain_command(corpus: Path, out: Path, steps: int, checkpoint_every: int, launcher: str, *extra: str) -> list[str]:
    script = [str(PRETRAIN), "--config", str(TINY), "--corpus", str(corpus), "--output_dir", str(out), *SMALL_MODEL,
              "--global_batch_size", "16", "--per_device_batch_size", "16", "--max_steps", str(steps),
              "--checkpoint_every", str(checkpoint_every), "--keep_last", "2", "--log_every", "1",
              "--eval_every", str(max(steps // 2, 1)), "--max_eval_samples", "32", *extra]
    if launcher == "accelerate":
        return [str(ACCELERATE), "launch", "--num_processes", "1", "--cpu", "--num_cpu_threads_per_process", "1",
                *script]
    return [sys.executable, *script]


def logged_losses(out: Path, key: str = "train/loss") -> dict[int, float]:
    from training.tracking import read_metrics

    path = out / "logs" / "metrics.csv"
    return {int(r["step"]): r[key] for r in read_metrics(path) if key in r} if path.exists() else {}


def _newest_complete(out: Path) -> int:
    from training.checkpoint import latest_checkpoint

    found = latest_checkpoint(out / "checkpoints")
    return int(found.name.split("-")[1]) if found else 0


def _resumed_from(log_text: str) -> int | None:
    """The step the last run in the log resumed from: 0 when it started from scratch, None when it was
    killed before saying (then there is nothing to check about that run)."""
    last = log_text.split("HARNESS RUN")[-1]
    match = re.search(r"resumed from \S*ckpt-(\d{8})", last)
    if match:
        return int(match.group(1))
    return 0 if "no complete checkpoint" in last else None


def _compare(got: dict[int, float], expected: dict[int, float], rtol: float = 1e-6) -> str | None:
    if sorted(got) != sorted(expected):
        return f"logged steps differ: missing {sorted(set(expected) - set(got))[:5]}, extra {sorted(set(got) - set(expected))[:5]}"
    for step in sorted(expected):
        if abs(got[step] - expected[step]) > rtol * abs(expected[step]) + 1e-12:
            return f"step {step}: loss {got[step]!r} vs uninterrupted {expected[step]!r}"
    return None


def training_campaign(corpus: Path, workdir: Path, trials: int, seed: int = 0, steps: int = 12,
                      checkpoint_every: int = 2, launcher: str = "accelerate", max_kills_per_trial: int = 2) -> Campaign:
    """Per trial: SIGKILL the whole job at uniform random moments (1–``max_kills_per_trial`` times, resumed
    runs included), then ``--resume`` until it completes. Checked after every kill and at the end:

    * resume starts from the newest *complete* checkpoint present at the kill (never a ``.tmp`` one);
    * the losses logged step by step equal the uninterrupted run's (and the validation losses too).
    """
    campaign, rng, started = Campaign("training"), random.Random(seed), time.time()
    reference = workdir / "reference"
    work_began, duration = _timed_reference(pretrain_command(corpus, reference, steps, checkpoint_every, launcher),
                                            workdir / "reference.log", reference / "logs" / "metrics.csv")
    expected, expected_val = logged_losses(reference), logged_losses(reference, "val/loss")
    for trial in range(trials):
        out, log = workdir / f"trial{trial:03d}", workdir / f"trial{trial:03d}.log"
        campaign.trials += 1
        try:
            resume: list[str] = []
            for _ in range(rng.randint(1, max_kills_per_trial)):
                with open(log, "a") as handle:
                    handle.write("\nHARNESS RUN (killed)\n")
                process = _start(pretrain_command(corpus, out, steps, checkpoint_every, launcher, *resume), log)
                deadline = time.time() + kill_time(rng, work_began, duration)
                writing = False
                while time.time() < deadline and process.poll() is None:
                    time.sleep(0.005)
                if rng.random() < 1 / 3:  # aim at a checkpoint write: kill the moment the next .tmp folder appears
                    while process.poll() is None and not list((out / "checkpoints").glob("ckpt-*.tmp")):
                        time.sleep(0.0005)
                if process.poll() is None:
                    # what a preempted node leaves: look, then kill the whole job at once
                    writing = bool(list((out / "checkpoints").glob("ckpt-*.tmp"))) if (out / "checkpoints").exists() else False
                    os.killpg(process.pid, signal.SIGKILL)
                    campaign.kills += 1
                    campaign.kills_during_checkpoint_write += writing
                _wait_group(process, 300)
                newest = _newest_complete(out)
                campaign.kills_before_first_checkpoint += newest == 0
                resume = ["--resume"]
                with open(log, "a") as handle:
                    handle.write(f"\nHARNESS RUN (resume; newest complete checkpoint {newest})\n")
                if process.returncode == 0:  # the run ended before the kill: nothing left to resume
                    break
                # one resumed run, checked for where it started (it may be killed again in the next round)
                process = _start(pretrain_command(corpus, out, steps, checkpoint_every, launcher, "--resume"), log)
                if rng.random() < 0.5 and process.poll() is None:
                    time.sleep(kill_time(rng, work_began, duration))
                    if process.poll() is None:
                        os.killpg(process.pid, signal.SIGKILL)
                        campaign.kills += 1
                _wait_group(process, 300)
                started_at = _resumed_from(log.read_text())
                if started_at is not None and started_at != newest:
                    raise AssertionError(f"resumed from step {started_at}, newest complete checkpoint was {newest}")
                if process.returncode == 0:
                    break
            if process.returncode != 0:
                with open(log, "a") as handle:
                    handle.write("\nHARNESS RUN (final resume)\n")
                newest = _newest_complete(out)
                code = _run(pretrain_command(corpus, out, steps, checkpoint_every, launcher, "--resume"), log)
                if code != 0:
                    raise AssertionError(f"the final resume failed ({code}): {log.read_text()[-2000:]}")
                if _resumed_from(log.read_text()) != newest:
                    raise AssertionError(f"final resume started at {_resumed_from(log.read_text())}, expected {newest}")
            problem = _compare(logged_losses(out), expected) or _compare(logged_losses(out, "val/loss"), expected_val)
            if problem:
                raise AssertionError(problem)
            if list((out / "checkpoints").glob("ckpt-*.tmp")):
                raise AssertionError("a .tmp checkpoint was left behind after a complete run")
        except Exception as error:  # noqa: BLE001 - a failed trial is data for the report
            campaign.failures.append(f"trial {trial}: {error}")
    campaign.seconds = time.time() - started
    return campaign


def signal_trial(corpus: Path, workdir: Path, sig: int, steps: int = 12, checkpoint_every: int = 100,
                 launcher: str = "accelerate", at_step: int = 4) -> dict:
    """Preemption notice: ``sig`` to the whole job once step ``at_step`` is logged. The trainer must save a
    checkpoint at the step it stopped (checkpoints are otherwise rare here), exit cleanly, and resume exactly."""
    reference, out, log = workdir / "reference", workdir / f"signal{sig}", workdir / f"signal{sig}.log"
    if not (reference / "model.safetensors").exists():
        if _run(pretrain_command(corpus, reference, steps, checkpoint_every, launcher), workdir / "reference.log") != 0:
            raise RuntimeError((workdir / "reference.log").read_text()[-3000:])
    process = _start(pretrain_command(corpus, out, steps, checkpoint_every, launcher), log)
    deadline = time.time() + 300
    while max(logged_losses_safe(out), default=0) < at_step:
        if process.poll() is not None or time.time() > deadline:
            raise AssertionError(f"the run ended or stalled before step {at_step}: {log.read_text()[-2000:]}")
        time.sleep(0.01)
    os.killpg(process.pid, sig)
    code = _wait_group(process, 300)
    text = log.read_text()
    last_logged = max(logged_losses(out))
    saved = _newest_complete(out)
    resumed = _run(pretrain_command(corpus, out, steps, checkpoint_every, launcher, "--resume"), log)
    return {"signal": sig, "exit_code": code, "stopped_at": last_logged, "checkpoint": saved,
            "message": f"signal {int(sig)}: saved a checkpoint at step {saved}" in text,
            "resume_code": resumed, "resumed_from": _resumed_from(log.read_text()),
            "losses_match": _compare(logged_losses(out), logged_losses(reference)) is None}


def logged_losses_safe(out: Path) -> dict[int, float]:
    try:
        return logged_losses(out)
    except (ValueError, KeyError, OSError):  # caught mid-write
        return {}
