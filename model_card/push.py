"""Publishing to the Hugging Face Hub: ``txfm push --model DIR`` / ``txfm push --dataset DIR``.

A push first assembles *exactly* the folder that will be uploaded (a staging copy; nothing in the
source folder is moved or changed) and validates it:

* model: safetensors weights only (a pickle file — ``*.bin``, ``*.pt``, ``*.pkl`` — is refused), the
  config with its vocabulary, the processor config, the remote-code files and the card; the folder
  must load with ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` in a fresh process;
* dataset: the Parquet shards, ``vocabulary.json``, ``profiles.json``, the curation report and card;
* both: the card's YAML metadata must parse with ``huggingface_hub``.

``--dry-run`` stops there and prints the folder. Otherwise the staging folder is uploaded with
``HfApi.upload_folder``; offline or without a token the error says so, and the local files are intact.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from huggingface_hub import DatasetCard, HfApi, ModelCard

MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "training_summary.json")
DATASET_FILES = ("vocabulary.json", "profiles.json", "curation_report.json", "README.md", "manifest.json")


class PushError(RuntimeError):
    """The folder cannot be published as it is, or the upload failed (local files are untouched)."""


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def stage_model(model_dir: str | os.PathLike, staging: str | os.PathLike) -> Path:
    """Copy the files that make a TxFM model repository into ``staging`` (replaced if present)."""
    from modeling_txfm import TxFMForMaskedExpressionModeling
    from modeling_txfm.safe_loading import TxFMCheckpointError, check_checkpoint

    model_dir, staging = Path(model_dir), Path(staging)
    try:  # the same checks as loading: no pickle files, weights matching config.json, one vocabulary
        check_checkpoint(model_dir, TxFMForMaskedExpressionModeling)
    except TxFMCheckpointError as error:
        raise PushError(f"{error} Only a safe, consistent checkpoint is published.") from error
    for required in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        if not (model_dir / required).exists():
            raise PushError(f"{model_dir} lacks {required}: is it a finished TxFM checkpoint (and does it have a card)?")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name in MODEL_FILES:
        if (model_dir / name).exists():
            _copy(model_dir / name, staging / name)
    for code in sorted(model_dir.glob("*.py")):
        _copy(code, staging / code.name)
    return staging


def stage_dataset(corpus_dir: str | os.PathLike, staging: str | os.PathLike) -> Path:
    """Copy the Parquet shards and the corpus metadata into ``staging``."""
    corpus_dir, staging = Path(corpus_dir), Path(staging)
    shards = sorted((corpus_dir / "data").glob("*.parquet"))
    if not shards:
        raise PushError(f"{corpus_dir}/data has no Parquet shards: build the corpus with `txfm build-corpus` first.")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for shard in shards:
        _copy(shard, staging / "data" / shard.name)
    for name in DATASET_FILES:
        if (corpus_dir / name).exists():
            _copy(corpus_dir / name, staging / name)
    if not (staging / "README.md").exists():
        raise PushError(f"{corpus_dir} has no README.md dataset card.")
    return staging


LOAD_CHECK = """
import json, sys
from transformers import AutoFeatureExtractor, AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
processor = AutoFeatureExtractor.from_pretrained(sys.argv[1], trust_remote_code=True)
print(json.dumps({"class": type(model).__name__, "vocab_size": model.config.vocab_size,
                  "processor_genes": len(processor.gene_ids)}))
"""


def validate_model_folder(folder: str | os.PathLike) -> dict:
    """Load the folder in a fresh process through remote code, and parse the card metadata."""
    folder = Path(folder)
    card = ModelCard.load(folder / "README.md")
    metadata = card.data.to_dict()
    for key in ("library_name", "pipeline_tag"):
        if not metadata.get(key):
            raise PushError(f"The model card in {folder} has no `{key}` metadata.")
    result = subprocess.run([sys.executable, "-c", LOAD_CHECK, str(folder)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise PushError(f"{folder} does not load with AutoModel.from_pretrained(trust_remote_code=True):\n{result.stderr[-2000:]}")
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    if loaded["vocab_size"] != loaded["processor_genes"]:
        raise PushError(f"{folder}: the processor's vocabulary ({loaded['processor_genes']}) differs from the model's ({loaded['vocab_size']}).")
    return {"card_metadata": metadata, "loaded": loaded}


def validate_dataset_folder(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    card = DatasetCard.load(folder / "README.md")
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(shard).metadata.num_rows for shard in (folder / "data").glob("*.parquet"))
    return {"card_metadata": card.data.to_dict(), "rows": rows}


def upload(folder: Path, repo_id: str, repo_type: str, token: str | None = None, private: bool = False) -> str:
    """Create the repository if needed and upload the staged folder; clear errors offline / without a token."""
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder),
                                 commit_message="Upload with `txfm push`")
    except Exception as error:  # network, auth and Hub errors all end the same way for the user
        text = f"{type(error).__name__}: {error}"
        hint = ("no Hugging Face token: run `hf auth login` or set HF_TOKEN" if "token" in text.lower() or "401" in text
                else "the Hub could not be reached (offline?)")
        raise PushError(f"Upload of {folder} to {repo_id} failed — {hint}. Nothing local was changed; the staged "
                        f"folder is {folder}. ({text[:300]})") from error
    return str(getattr(info, "commit_url", info))


def push(kind: str, source: str | os.PathLike, repo_id: str, staging: str | os.PathLike | None = None,
         dry_run: bool = False, token: str | None = None, private: bool = False) -> dict:
    """Stage, validate and (unless ``dry_run``) upload a model or dataset folder. Returns a report."""
    source = Path(source)
    staging = Path(staging) if staging else source.parent / f"{source.name}-hub-{kind}"
    if kind == "model":
        folder = stage_model(source, staging)
        checks = validate_model_folder(folder)
    elif kind == "dataset":
        folder = stage_dataset(source, staging)
        checks = validate_dataset_folder(folder)
    else:
        raise ValueError(f"kind must be 'model' or 'dataset', got {kind!r}")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    report = {"kind": kind, "repo_id": repo_id, "folder": str(folder), "files": files, "checks": checks}
    if not dry_run:
        report["url"] = upload(folder, repo_id, "model" if kind == "model" else "dataset", token, private)
    return report
