"""The demo in reduced form (every stage, few steps), the model card it writes, and `txfm push`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, python_env
from huggingface_hub import ModelCard

from model_card import PushError, push


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = subprocess.run([sys.executable, "-m", "model_card.demo", "--out", str(out), "--quick"], cwd=REPO,
                            capture_output=True, text=True, env=python_env(), timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (out / "stdout.txt").write_text(result.stdout)
    return out


def test_demo_goes_through_every_stage_and_prints_the_headline(demo):
    stdout = (demo / "stdout.txt").read_text()
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"=== {stage}" in stdout
    assert "TxFM demo finished" in stdout and "TxFM-tiny" in stdout and "lognorm" in stdout and "pca" in stdout
    for path in ("corpus/manifest.json", "model/model.safetensors", "model/README.md", "eval/results.json",
                 "hub-model/config.json"):
        assert (demo / path).exists(), path
    assert list((demo / "eval").glob("*.png"))


def test_model_card_metadata_parses_and_equals_results_json(demo):
    card = ModelCard.load(demo / "model" / "README.md")
    metadata = card.data.to_dict()
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "feature-extraction"
    results = json.loads((demo / "eval" / "results.json").read_text())
    txfm = results["models"]["TxFM-tiny"]["metrics"]
    reported = {r.metric_type: r.metric_value for r in card.data.eval_results}
    expected = {k: round(v["mean"], 4) for k, v in txfm.items() if v.get("mean") is not None}
    assert reported == expected
    text = card.text
    for baseline in results["models"]:  # the evaluation table, generated from results.json
        assert f"| {baseline} |" in text
    config = json.loads((demo / "model" / "config.json").read_text())
    assert f"{config['vocab_size']:,} genes" in text and "trust_remote_code=True" in text


FRESH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"modeling_txfm", "training", "dataset_builder", "evaluation", "model_card"}:
            raise ImportError(name)
sys.meta_path.insert(0, Block())
import anndata as ad, torch
from transformers import AutoFeatureExtractor, AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
processor = AutoFeatureExtractor.from_pretrained(sys.argv[1], trust_remote_code=True)
adata = ad.read_h5ad(sys.argv[2])
with torch.no_grad():
    embedding = model(**processor(adata.X[:50], list(adata.var_names))).embedding
assert embedding.shape == (50, model.config.hidden_size) and torch.isfinite(embedding).all()
print("ok", tuple(embedding.shape))
"""


def test_dry_run_folder_loads_in_a_fresh_process_and_embeds(demo):
    result = subprocess.run([sys.executable, "-c", FRESH, str(demo / "hub-model"),
                             str(demo / "inputs" / "pbmc68k_counts.h5ad")],
                            capture_output=True, text=True, env=python_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")
    staged = sorted(p.name for p in (demo / "hub-model").iterdir())
    assert "model.safetensors" in staged and "modeling_txfm.py" in staged
    assert not [name for name in staged if name.endswith((".bin", ".pt", ".pkl"))]
    assert "checkpoints" not in staged and "logs" not in staged  # training state stays local


def test_push_refuses_pickles_and_fails_clearly_offline(demo, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(demo / "model", model, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    (model / "pytorch_model.bin").write_bytes(b"not allowed")
    with pytest.raises(PushError, match="pickle"):
        push("model", model, "someone/txfm", dry_run=True)
    (model / "pytorch_model.bin").unlink()
    before = sorted(p.name for p in model.iterdir())
    with pytest.raises(PushError, match="Nothing local was changed"):
        push("model", model, "someone/txfm", staging=tmp_path / "staging", token="hf_invalid")
    assert sorted(p.name for p in model.iterdir()) == before and (tmp_path / "staging" / "config.json").exists()


def test_dataset_push_dry_run_stages_the_shards(demo, tmp_path):
    report = push("dataset", demo / "corpus", "someone/txfm-corpus", staging=tmp_path / "ds", dry_run=True)
    assert any(name.startswith("data/") and name.endswith(".parquet") for name in report["files"])
    assert "README.md" in report["files"] and "vocabulary.json" in report["files"]
    manifest = json.loads((demo / "corpus" / "manifest.json").read_text())
    assert report["checks"]["rows"] == sum(manifest["samples"].values())
