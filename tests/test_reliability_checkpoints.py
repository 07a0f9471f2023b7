"""Untrusted checkpoints (issue 8, item 4): safetensors only, clear refusals, no silent remote code.

A checkpoint folder may come from anyone. ``load_model`` (and so ``embed(path, "folder")`` and
``txfm embed``) must refuse pickle weights, weights that do not match the config, and a processor
whose gene vocabulary differs from the model's — with :class:`TxFMCheckpointError` naming the folder —
and never fall back to random initialisation. Our own code never passes ``trust_remote_code=True``
except where documented below.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_config
from safetensors.torch import load_file, save_file

from modeling_txfm import TxFMCheckpointError, TxFMForMaskedExpressionModeling, TxFMProcessor, load_model

GENES = [f"ENSG{50_000_000_000 + i:011d}" for i in range(30)]


def _model(**overrides) -> TxFMForMaskedExpressionModeling:
    torch.manual_seed(0)
    settings = dict(hidden_size=16, num_attention_heads=2, decoder_hidden_size=16)
    settings.update(overrides)
    return TxFMForMaskedExpressionModeling(tiny_config(GENES, **settings)).eval()


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "good"
    model = _model()
    model.save_pretrained(folder)
    TxFMProcessor.from_config(model.config).save_pretrained(folder)
    return folder


def _copy(good: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(good, target)
    return target


def test_a_good_checkpoint_loads_without_unpickling(good, monkeypatch):
    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load (pickle) was called")

    monkeypatch.setattr(torch, "load", no_pickle)
    model = load_model(good)
    reference = load_file(good / "model.safetensors")
    assert torch.equal(model.state_dict()["txfm.embeddings.gene_embeddings.weight"],
                       reference["txfm.embeddings.gene_embeddings.weight"])


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "state.pkl", "last.ckpt"])
def test_pickle_weights_are_refused_even_beside_safetensors(good, tmp_path, name):
    folder = _copy(good, tmp_path, "pickled")
    torch.save(_model().state_dict(), folder / name)
    with pytest.raises(TxFMCheckpointError, match=rf"pickle weight files \['{name}'\]"):
        load_model(folder)
    (folder / "model.safetensors").unlink()  # only the pickle: still refused, never loaded
    with pytest.raises(TxFMCheckpointError, match="pickle"):
        load_model(folder)


def test_no_safetensors_at_all(good, tmp_path):
    folder = _copy(good, tmp_path, "empty")
    (folder / "model.safetensors").unlink()
    with pytest.raises(TxFMCheckpointError, match="no model.safetensors"):
        load_model(folder)


def test_weights_of_another_shape_are_refused(good, tmp_path):
    folder = _copy(good, tmp_path, "shape")
    bigger = _model(hidden_size=32)
    save_file({k: v.contiguous() for k, v in bigger.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(TxFMCheckpointError, match="shape mismatch .*file .*vs config"):
        load_model(folder)


@pytest.mark.parametrize("change", ["missing", "unexpected", "truncated"])
def test_missing_extra_or_truncated_tensors_are_refused(good, tmp_path, change):
    folder = _copy(good, tmp_path, change)
    tensors = load_file(folder / "model.safetensors")
    if change == "missing":
        tensors.pop("txfm.norm.weight")
    elif change == "unexpected":
        tensors["backdoor.weight"] = torch.zeros(2)
    if change == "truncated":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    match = {"missing": "missing tensors .*txfm.norm.weight", "unexpected": "unexpected tensors .*backdoor",
             "truncated": "not a readable safetensors"}[change]
    with pytest.raises(TxFMCheckpointError, match=match):
        load_model(folder)


def test_processor_vocabulary_must_match_the_model(good, tmp_path):
    folder = _copy(good, tmp_path, "vocab")
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    processor["gene_ids"] = processor["gene_ids"][1:] + processor["gene_ids"][:1]  # same genes, other order
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(TxFMCheckpointError, match="gene vocabulary .* differs"):
        load_model(folder)


def test_config_vocabulary_that_disagrees_with_the_weights(good, tmp_path):
    folder = _copy(good, tmp_path, "config_vocab")
    for name in ("config.json", "preprocessor_config.json"):  # consistent files, but 20 genes vs 30-row weights
        config = json.loads((folder / name).read_text())
        config["gene_ids"], config["gene_symbols"] = config["gene_ids"][:20], config["gene_symbols"][:20]
        if "vocab_size" in config:
            config["vocab_size"] = 20
        (folder / name).write_text(json.dumps(config))
    with pytest.raises(TxFMCheckpointError, match="gene_embeddings.weight: file \\(30, 15\\) vs config \\(20, 15\\)"):
        load_model(folder)


def test_broken_or_foreign_config(good, tmp_path):
    folder = _copy(good, tmp_path, "config")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(TxFMCheckpointError, match="config.json"):
        load_model(folder)
    with pytest.raises(TxFMCheckpointError, match="not a checkpoint folder"):
        load_model(tmp_path / "does-not-exist")


#: The only places our code may *contain* ``trust_remote_code=True``, and why (none of them may be a
#: call in our own process: the AST check below rejects any such call outright).
REMOTE_CODE_ALLOWED = {
    "model_card/push.py": "`txfm push` validation: a fresh subprocess loads the folder being published, "
                          "the user's own export, to prove it works for Hub users",
    "model_card/cards.py": "usage snippet in the generated model card",
    "training/export.py": "usage snippet in the exported model card",
    "training/pretrain.py": "log message telling the user how to load the export",
    "model_card/demo.py": "docstring",
    "modeling_txfm/__init__.py": "docstring",
}


def _our_python_files() -> list[Path]:
    packages = ["modeling_txfm", "dataset_builder", "training", "evaluation", "model_card", "benchmarks"]
    return sorted(p for package in packages for p in (REPO / package).rglob("*.py"))


def test_no_code_of_ours_turns_on_trust_remote_code():
    calls = []
    for path in _our_python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "trust_remote_code" and not (
                        isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                    ):
                        calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert calls == [], f"calls that may enable remote code: {calls}"
    mentions = {str(p.relative_to(REPO)) for p in _our_python_files() if "trust_remote_code=True" in p.read_text()}
    assert mentions <= set(REMOTE_CODE_ALLOWED), f"undocumented trust_remote_code=True in {mentions - set(REMOTE_CODE_ALLOWED)}"
    assert "safe_loading" in (REPO / "modeling_txfm" / "embedding.py").read_text()
