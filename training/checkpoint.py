"""Crash-safe training checkpoints: ``ckpt-XXXXXXXX/`` folders that are complete or absent.

A checkpoint is written into ``ckpt-XXXXXXXX.tmp/`` (``accelerator.save_state`` from every process,
plus ``trainer_state.json``), every file is fsync'ed, the ``COMPLETE`` marker is written last, and the
folder is renamed into place with ``os.replace`` (atomic on POSIX). A process killed at any moment
therefore leaves either a ``.tmp`` folder (ignored, removed by the next save) or a whole checkpoint:
resume takes the newest folder that has the marker, never a half-written one. Old checkpoints are
retired by deleting the marker *first*, so a deletion cut short cannot leave a folder that looks
complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^ckpt-(\d{8})$")


@dataclass
class TrainerState:
    """Where training stands; with the Accelerate state this is everything exact resume needs.

    ``epoch``/``step_in_epoch`` locate the next batch (data order is a function of seed and epoch,
    and the visible-gene draws a function of the sample and epoch, so no generator state is needed
    beyond the torch RNG that Accelerate saves per process).
    """

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    samples_seen: int = 0
    global_batch_size: int = 0
    num_processes: int = 1
    seed: int = 0
    total_steps: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_file(cls, path: Path) -> TrainerState:
        return cls(**json.loads(path.read_text()))


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}"


def complete_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_checkpoint(path: Path) -> None:
    """Marker first, then the files: an interrupted removal never leaves a 'complete' remnant."""
    marker = path / COMPLETE
    if marker.exists():
        marker.unlink()
        _fsync_dir(path)
    shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(accelerator, root: str | os.PathLike, state: TrainerState, keep_last: int) -> Path:
    """Write a checkpoint of everything registered with ``accelerator`` plus ``state``; all processes call."""
    root = Path(root)
    final = root / checkpoint_name(state.step)
    tmp = root / f"{final.name}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(output_dir=str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(state.to_json())
        _fsync_tree(tmp)
        (tmp / COMPLETE).write_text("ok\n")
        _fsync_tree(tmp)
        if final.exists():  # e.g. re-saving the step a resumed run started from
            remove_checkpoint(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for stale in root.glob("ckpt-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        for old in complete_checkpoints(root)[:-keep_last]:
            remove_checkpoint(old)
    accelerator.wait_for_everyone()
    return final
