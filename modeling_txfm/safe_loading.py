"""Checks a TxFM checkpoint folder *before* any weight is loaded: safetensors only, consistent shapes and vocabulary.

Why: a checkpoint folder may come from anyone. A pickle file (``*.bin``, ``*.pt``, …) can execute code
when loaded, so a folder that holds one is refused outright rather than trusted to be ignored. And
``from_pretrained`` treats a tensor missing from, or shaped differently in, the file as "initialise
randomly" or fails with a generic report — either way the user gets no clear reason, or worse, an
embedding from random weights. Here every tensor's name and shape is read from the safetensors
headers (no data is loaded) and compared with the model the config describes, and the config's gene
vocabulary must be the processor's: a model and processor that disagree on what column i means would
embed every sample wrongly.

This module never enables ``trust_remote_code``: our loading uses our own classes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

#: weight formats that unpickle (and can therefore run code) when loaded
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class TxFMCheckpointError(ValueError):
    """A checkpoint folder that must not be loaded: the message names the file and the problem."""


def _safetensors_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as error:
            raise TxFMCheckpointError(f"{index} is not a valid safetensors shard index ({error}).") from error
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise TxFMCheckpointError(
            f"{folder} has no model.safetensors: TxFM loads safetensors weights only (never pickle files)."
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        try:
            with safe_open(str(folder / name), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as error:  # safetensors raises its own SafetensorError, OSError, ...
            raise TxFMCheckpointError(f"{folder / name} is not a readable safetensors file ({error}).") from error
    return shapes


def check_checkpoint(path: str | os.PathLike, model_class: type) -> None:
    """Raise :class:`TxFMCheckpointError` unless ``path`` is a safe, self-consistent TxFM checkpoint."""
    from .configuration_txfm import TxFMConfig

    folder = Path(path)
    if not folder.is_dir():
        raise TxFMCheckpointError(f"{folder} is not a checkpoint folder (expected config.json + model.safetensors).")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise TxFMCheckpointError(
            f"{folder} contains pickle weight files {pickles}: they can run arbitrary code when loaded, and TxFM "
            "loads safetensors only. Remove them (or convert them to model.safetensors in a trusted environment)."
        )
    try:
        config = TxFMConfig.from_pretrained(str(folder))
    except Exception as error:
        raise TxFMCheckpointError(f"{folder / 'config.json'} is missing or not a valid TxFM config ({error}).") from error
    if config.model_type != "txfm":
        raise TxFMCheckpointError(f"{folder} holds a {config.model_type!r} model, not TxFM.")
    processor_file = folder / "preprocessor_config.json"
    if processor_file.exists():
        try:
            processor_genes = json.loads(processor_file.read_text()).get("gene_ids")
        except ValueError as error:
            raise TxFMCheckpointError(f"{processor_file} is not valid JSON ({error}).") from error
        if processor_genes is not None and list(processor_genes) != list(config.gene_ids or []):
            raise TxFMCheckpointError(
                f"{folder}: the processor's gene vocabulary ({len(processor_genes):,} genes, preprocessor_config.json) "
                f"differs from the model's ({len(config.gene_ids or []):,} genes, config.json): the model would read "
                "genes from the wrong columns. Re-export the checkpoint."
            )
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
    stored = _safetensors_shapes(folder)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
    if missing or unexpected or wrong:
        details = []
        if wrong:
            details.append("shape mismatch " + ", ".join(f"{k}: file {stored[k]} vs config {expected[k]}" for k in wrong[:3]))
        if missing:
            details.append(f"missing tensors {missing[:3]}")
        if unexpected:
            details.append(f"unexpected tensors {unexpected[:3]}")
        raise TxFMCheckpointError(
            f"{folder}: the weights do not match config.json ({'; '.join(details)}; {len(wrong)} mismatched, "
            f"{len(missing)} missing, {len(unexpected)} unexpected). Loading would use random weights for them."
        )
