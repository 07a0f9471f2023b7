"""The embedding API on real package-shipped h5ad data, checkpoints, and loading in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import torch
from conftest import python_env, tiny_config

from modeling_txfm import (
    TxFMForMaskedExpressionModeling,
    TxFMInputError,
    TxFMProcessor,
    embed,
    gene_representations,
    gene_representations_anndata,
    load_model,
)


@pytest.fixture()
def pbmc_file(pbmc, tmp_path):
    path = tmp_path / "pbmc_counts.h5ad"
    adata = pbmc.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.raw = adata
    adata.write_h5ad(path)
    return path


@pytest.fixture()
def checkpoint(tiny_model, tmp_path):
    path = tmp_path / "checkpoint"
    tiny_model.save_pretrained(path)
    TxFMProcessor.from_config(tiny_model.config).save_pretrained(path)
    return path


def test_embed_writes_obsm_and_returns_embeddings(pbmc, tiny_model):
    adata = pbmc[:100].copy()
    result = embed(adata, tiny_model, show_progress=False)
    assert result.shape == (100, tiny_model.config.hidden_size) and result.dtype == np.float32
    np.testing.assert_array_equal(adata.obsm["X_txfm"], result)
    assert np.isfinite(result).all() and result.std(0).mean() > 0


def test_embeddings_do_not_depend_on_batch_size_or_batch_mates(pbmc, tiny_model):
    adata = pbmc[:60].copy()
    reference = embed(adata, tiny_model, batch_size=60, key_added=None, show_progress=False)
    for batch_size in (1, 7, 32):
        np.testing.assert_allclose(
            embed(adata, tiny_model, batch_size=batch_size, key_added=None, show_progress=False), reference,
            atol=1e-5, rtol=1e-5,
        )
    shuffled = np.random.default_rng(0).permutation(60)
    alone = embed(adata[shuffled].copy(), tiny_model, batch_size=16, key_added=None, show_progress=False)
    np.testing.assert_allclose(alone, reference[shuffled], atol=1e-5, rtol=1e-5)


def test_embed_real_wu2020_counts(wu2020, annotation):
    ids, _ = annotation.to_ensembl(list(wu2020.var_names))
    vocabulary = sorted({g for g in ids if g})
    torch.manual_seed(0)
    model = TxFMForMaskedExpressionModeling(tiny_config(vocabulary, num_visible_genes=128)).eval()
    result = embed(wu2020, model, batch_size=50, show_progress=False)
    assert result.shape == (200, 32) and np.isfinite(result).all()
    # cells of different T-cell subtypes get different embeddings
    assert np.linalg.matrix_rank(result - result.mean(0)) > 10


def test_h5ad_path_and_backed_file_give_in_memory_result(pbmc, pbmc_file, tiny_model):
    in_memory = embed(pbmc.copy(), tiny_model, key_added=None, show_progress=False)
    from_path = embed(pbmc_file, tiny_model, chunk_size=128, batch_size=50, show_progress=False)
    np.testing.assert_allclose(from_path, in_memory, atol=1e-5, rtol=1e-5)
    backed = ad.read_h5ad(pbmc_file, backed="r")
    np.testing.assert_allclose(embed(backed, tiny_model, chunk_size=99, key_added=None, show_progress=False),
                               in_memory, atol=1e-5, rtol=1e-5)
    backed.file.close()
    for layer in ("counts", "raw"):
        np.testing.assert_allclose(embed(pbmc_file, tiny_model, layer=layer, show_progress=False), in_memory,
                                   atol=1e-5, rtol=1e-5)


def test_embed_errors_are_specific(pbmc_file, tiny_model, tmp_path):
    with pytest.raises(TxFMInputError, match="no 'layers/nope' matrix"):
        embed(pbmc_file, tiny_model, layer="nope", show_progress=False)
    with pytest.raises(TxFMInputError, match="var has no column"):
        embed(pbmc_file, tiny_model, gene_col="gene_symbols", show_progress=False)
    broken = tmp_path / "broken.h5ad"
    broken.write_bytes(pbmc_file.read_bytes()[:4096])
    with pytest.raises(TxFMInputError, match="not a readable .h5ad"):
        embed(broken, tiny_model, show_progress=False)


def test_save_and_load_round_trip_gives_identical_outputs(pbmc, tiny_model, checkpoint):
    loaded = load_model(checkpoint)
    processor = TxFMProcessor.from_pretrained(checkpoint)
    inputs = processor(pbmc.X[:20], list(pbmc.var_names))
    with torch.no_grad():
        before = tiny_model(**inputs).predictions
        after = loaded(**inputs).predictions
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert loaded.config.gene_ids == tiny_model.config.gene_ids
    assert (checkpoint / "model.safetensors").exists() and not list(checkpoint.glob("*.bin"))


FRESH_PROCESS = """
import importlib.abc, json, sys
class BlockOurPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "modeling_txfm":
            raise ImportError("this process must not import the TxFM package")
sys.meta_path.insert(0, BlockOurPackage())
import anndata as ad, numpy as np, torch
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForPreTraining
checkpoint, data, out = sys.argv[1:4]
model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
full = AutoModelForPreTraining.from_pretrained(checkpoint, trust_remote_code=True).eval()
processor = AutoFeatureExtractor.from_pretrained(checkpoint, trust_remote_code=True)
adata = ad.read_h5ad(data)
inputs = processor(adata.X, list(adata.var_names))
with torch.no_grad():
    embedding = model(**inputs).embedding.numpy()
    predictions = full(**inputs).predictions.numpy()
np.save(out, embedding)
np.save(out + ".predictions.npy", predictions)
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__,
                  "ours_imported": any(k.startswith("modeling_txfm") for k in sys.modules)}))
"""


def test_fresh_process_loads_with_trust_remote_code_and_embeds_a_real_h5ad(pbmc, tiny_model, checkpoint, tmp_path):
    data = tmp_path / "pbmc_200.h5ad"
    pbmc[:200].copy().write_h5ad(data)
    out = tmp_path / "embedding.npy"
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(checkpoint), str(data), str(out)],
        capture_output=True, text=True, env=python_env(), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info == {"class": "TxFMModel", "module": info["module"], "ours_imported": False}
    assert info["module"].startswith("transformers_modules.")
    expected = embed(pbmc[:200].copy(), tiny_model, key_added=None, show_progress=False)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        inputs = TxFMProcessor.from_config(tiny_model.config)(pbmc.X[:200], list(pbmc.var_names))
        predictions = tiny_model(**inputs).predictions.numpy()
    np.testing.assert_allclose(np.load(str(out) + ".predictions.npy"), predictions, atol=1e-5, rtol=1e-5)


def test_cli_embed_writes_an_h5ad_with_the_embedding(pbmc, pbmc_file, tiny_model, checkpoint, tmp_path):
    out = tmp_path / "embedded.h5ad"
    result = subprocess.run(
        [sys.executable, "-m", "modeling_txfm.cli", "embed", str(pbmc_file), "--model", str(checkpoint),
         "--out", str(out), "--batch-size", "32", "--chunk-size", "100"],
        capture_output=True, text=True, env=python_env(), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = ad.read_h5ad(out)
    assert written.shape == pbmc.shape and written.obsm["X_txfm"].shape == (700, 32)
    np.testing.assert_allclose(written.obsm["X_txfm"], embed(pbmc.copy(), tiny_model, show_progress=False),
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(written.layers["counts"].toarray(), pbmc.X.toarray())  # nothing lost
    assert not (tmp_path / "embedded.h5ad.partial").exists()


def test_gene_representations_are_keyed_by_ensembl_id(tiny_model):
    codebook = gene_representations(tiny_model, "codebook")
    decoder = gene_representations(tiny_model, "decoder")
    assert list(codebook.index) == tiny_model.config.gene_ids == list(decoder.index)
    assert codebook.shape[1] == tiny_model.config.hidden_size - 1
    assert decoder.shape[1] == tiny_model.config.decoder_hidden_size
    np.testing.assert_array_equal(codebook.to_numpy(), tiny_model.txfm.embeddings.gene_embeddings.weight.detach().numpy())
    genes = gene_representations_anndata(tiny_model)
    assert genes.varm["decoder"].shape == decoder.shape and list(genes.var["symbol"]) == tiny_model.config.gene_symbols
    with pytest.raises(ValueError, match="kind"):
        gene_representations(tiny_model, "attention")
