"""Training configuration: one flat dataclass, filled from a YAML file, then from ``--key value`` flags.

Why a dataclass and not free-form YAML: every key has a documented default and a type, so a typo in
the YAML or on the command line is an error (with a suggestion), and a command-line value is parsed
with the type of its default (``--max_steps 50`` is an int, ``--resume`` alone is ``True``). Model
settings beyond the preset go in the ``model`` mapping (``--model.num_visible_genes 128``); their
values are parsed as YAML scalars because :class:`~modeling_txfm.TxFMConfig` owns their types.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    """Every setting of ``training/pretrain.py``. Defaults are the paper's recipe (TXFM_SPEC §1)."""

    # --- data ---
    corpus: str | None = None  # corpus folder from `txfm build-corpus`, or a Hub dataset id
    streaming: bool = False  # stream the shards instead of memory-mapping them
    num_workers: int = 0  # DataLoader worker processes per training process
    # --- model ---
    preset: str = "txfm-b"
    model: dict = field(default_factory=dict)  # TxFMConfig overrides, e.g. {num_visible_genes: 1024}
    init_from: str | None = None  # a saved model folder: continue its objective on `corpus` (SSL fine-tuning)
    # --- optimisation (paper: AdamW, lr 1e-3, betas (0.9, 0.999), eps 1e-6, wd 1/(lr·steps)) ---
    seed: int = 0
    epochs: float = 200.0
    max_steps: int | None = None  # optimizer steps; sets the schedule length when given
    global_batch_size: int = 1536  # = micro batch × processes × gradient accumulation
    per_device_batch_size: int = 32  # upper bound on the micro batch (memory); accumulation makes up the rest
    learning_rate: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-6
    weight_decay: float | None = None  # None: the paper's 1 / (learning_rate × total steps)
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    # --- performance ---
    mixed_precision: str = "auto"  # auto = bf16 on CUDA, no (fp32) otherwise; or no / bf16 / fp16
    compile: bool = False
    gradient_checkpointing: bool = False
    # --- output, checkpoints, logging ---
    output_dir: str = "runs/txfm"
    checkpoint_every: int = 1000  # optimizer steps; 0 = only at the end (and on SIGTERM/SIGINT)
    keep_last: int = 3
    resume: bool = False  # continue from the newest complete checkpoint in output_dir/checkpoints
    eval_every: int = 1000  # optimizer steps; 0 = only at the end
    eval_batch_size: int | None = None  # default: per_device_batch_size
    max_eval_samples: int = 4096  # validation samples per evaluation (all processes together)
    log_every: int = 10
    trackers: list = field(default_factory=lambda: ["tensorboard", "csv"])
    progress_bar: bool = True
    record_rows: bool = False  # debugging/tests: each process writes the corpus rows of every step to logs/
    # --- publishing ---
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False

    def validate(self) -> None:
        if not self.corpus:
            raise ConfigError("No corpus: pass --corpus PATH_OR_HUB_ID (a folder made by `txfm build-corpus`).")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("--push_to_hub needs --hub_model_id USER/NAME.")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        for name in ("global_batch_size", "per_device_batch_size", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("max_steps must be at least 1")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("warmup_ratio must be in [0, 1)")

    def to_flat_dict(self) -> dict[str, Any]:
        """Scalars only (what trackers' hyper-parameter tables accept)."""
        flat: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            elif isinstance(value, list):
                flat[key] = ",".join(map(str, value))
            else:
                flat[key] = value
        return {k: ("" if v is None else v) for k, v in flat.items()}


class ConfigError(ValueError):
    """A configuration that cannot be run; the message says which key and what to do."""


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch is split: ``global = micro × processes × accumulation``."""

    micro_batch_size: int
    num_processes: int
    accumulation_steps: int

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.num_processes * self.accumulation_steps


def plan_batches(global_batch_size: int, per_device_batch_size: int, num_processes: int) -> BatchPlan:
    """The largest micro batch ≤ ``per_device_batch_size`` that divides the per-process share exactly.

    The same global batch on 1 or N processes means the same optimisation (and, with our data order,
    the same samples per step), so the global batch must split evenly; otherwise say how to fix it.
    """
    if global_batch_size % num_processes:
        raise ConfigError(
            f"global_batch_size {global_batch_size} is not divisible by {num_processes} processes; "
            "choose a multiple of the number of processes."
        )
    per_process = global_batch_size // num_processes
    micro = min(per_device_batch_size, per_process)
    while per_process % micro:
        micro -= 1
    return BatchPlan(micro, num_processes, per_process // micro)


def _field_type(name: str) -> Any:
    hints = typing.get_type_hints(TrainConfig)
    hint = hints[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return args[0]
    return hint


def _parse_value(name: str, text: str) -> Any:
    """Parse a command-line string with the type of the field's default."""
    kind = _field_type(name)
    if text.lower() in ("none", "null") and kind not in (str,):
        return None
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{name} expects true/false, got {text!r}")
    if kind is int:
        return int(float(text)) if "e" in text.lower() else int(text)
    if kind is float:
        return float(text)
    if kind is list:
        return [item for item in text.split(",") if item]
    if kind is dict:
        value = yaml.safe_load(text)
        if not isinstance(value, dict):
            raise ConfigError(f"--{name} expects a mapping like '{{key: value}}', got {text!r}")
        return value
    return text


def _check_key(name: str) -> None:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean --{close[0]}?" if close else ""
        raise ConfigError(f"Unknown setting {name!r}.{hint} Known settings: {', '.join(names)}")


def _coerce(name: str, value: Any) -> Any:
    """Values from YAML: accept ints for floats, and check the rest against the field type."""
    kind = _field_type(name)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        return float(value)  # YAML reads "1e-3" as a string
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind in (int, float, str, list, dict) and not isinstance(value, kind):
        raise ConfigError(f"{name} must be of type {kind.__name__}, got {value!r}")
    return value


def parse_overrides(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """``[--config FILE] [--key value | --flag | --model.key value] ...`` → (config file, overrides)."""
    config_file: str | None = None
    overrides: dict[str, Any] = {}
    model: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ConfigError(f"Expected --key value pairs, got {token!r}")
        key, _, inline = token[2:].partition("=")
        key = key.replace("-", "_") if not key.startswith("model.") else key
        has_inline = bool(_)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        takes_next = nxt is not None and not nxt.startswith("--")
        if key == "config":
            config_file = inline if has_inline else nxt
            i += 1 if has_inline else 2
            continue
        if key.startswith("model."):
            if not (has_inline or takes_next):
                raise ConfigError(f"--{key} needs a value")
            model[key[len("model."):]] = yaml.safe_load(inline if has_inline else nxt)
            i += 1 if has_inline else 2
            continue
        _check_key(key)
        if has_inline:
            overrides[key] = _parse_value(key, inline)
            i += 1
        elif _field_type(key) is bool and not (takes_next and nxt.lower() in ("true", "false", "1", "0", "yes", "no")):
            overrides[key] = True  # a bare flag: --resume, --push_to_hub, --compile
            i += 1
        elif takes_next:
            overrides[key] = _parse_value(key, nxt)
            i += 2
        else:
            raise ConfigError(f"--{key} needs a value")
    if model:
        overrides["model"] = model
    return config_file, overrides


def load_config(argv: list[str]) -> TrainConfig:
    """Defaults ← YAML file (``--config``) ← command-line overrides; ``model`` mappings are merged."""
    config_file, overrides = parse_overrides(argv)
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.exists():
            raise ConfigError(f"Config file {path} does not exist (see training/configs/).")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must be a mapping of settings")
        for key, value in loaded.items():
            _check_key(key)
            values[key] = _coerce(key, value)
    model = {**values.get("model", {}), **overrides.pop("model", {})}
    values.update(overrides)
    values["model"] = model
    config = TrainConfig(**values)
    config.validate()
    return config


def total_optimizer_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The schedule length: ``max_steps`` when given, else ``epochs`` × optimizer steps per epoch."""
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * steps_per_epoch))
