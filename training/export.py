"""Publishing the trained model: a ``save_pretrained`` folder that ``AutoModel`` loads, and the Hub push.

The folder holds ``config.json`` (with the vocabulary and ``auto_map``), ``model.safetensors`` (fp32),
the remote-code files, the processor config and a README model card. Files are written to a
temporary folder and moved in with ``config.json`` last: ``from_pretrained`` starts from
``config.json``, so a crash mid-export never leaves a folder that loads with missing weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

EXPORT_IGNORE = ["checkpoints/*", "logs/*", ".export-tmp/*"]


class HubPushError(RuntimeError):
    """The push failed; the local model folder is complete and the message says where it is."""


def export_pretrained(
    accelerator,
    model: torch.nn.Module,
    output_dir: str | os.PathLike,
    summary: dict[str, Any],
    train_config: dict[str, Any] | None = None,
) -> Path:
    """Save the model for ``from_pretrained``; every process calls (FSDP gathers the full weights).

    Beside the weights go ``training_summary.json`` (what was trained on what, for how long, final
    losses) and the model card generated from it by ``model_card`` (regenerated with evaluation results
    by ``txfm card`` once ``txfm evaluate`` has run).
    """
    from model_card import write_model_card
    from modeling_txfm import TxFMProcessor

    output_dir = Path(output_dir)
    state_dict = accelerator.get_state_dict(model)  # full fp32 weights on the main process
    if not accelerator.is_main_process:
        return output_dir
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    state_dict = {k.removeprefix("_orig_mod."): v.detach().to("cpu", torch.float32).contiguous()
                  for k, v in state_dict.items()}
    tmp = output_dir / ".export-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    TxFMProcessor.from_config(unwrapped.config).save_pretrained(tmp)
    (tmp / "training_summary.json").write_text(json.dumps({**summary, "training_config": train_config}, indent=1,
                                                         default=str))
    write_model_card(tmp)
    names = sorted(p.name for p in tmp.iterdir())
    for name in sorted(names, key=lambda n: n == "config.json"):  # config.json last
        target = output_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return output_dir


def push_to_hub(output_dir: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Upload the exported folder (not checkpoints or logs); raise :class:`HubPushError` on failure."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(output_dir),
            ignore_patterns=EXPORT_IGNORE,
            commit_message="Upload TxFM model (training/pretrain.py)",
        )
    except Exception as error:  # network, auth, permissions: all leave the local folder as it is
        raise HubPushError(
            f"Could not push {output_dir} to the Hub as {repo_id!r} ({type(error).__name__}: {error}). "
            f"The model folder {output_dir} is complete and loadable; push it later with "
            f"`huggingface-cli upload {repo_id} {output_dir}` (after `huggingface-cli login`), "
            "or check the network and your token (HF_TOKEN)."
        ) from error
    return str(getattr(info, "commit_url", info))
