"""The benchmarks end to end: simulated Perturb-seq, real cell types (pbmc68k, wu2020), reports, CLI, modules."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from evaluation import (
    PerturbationProtocol,
    headline_table,
    make_embedder,
    run_celltype_benchmark,
    run_perturbation_benchmark,
    simulate_perturb_seq,
    write_report,
)
from evaluation.embedders import LogNormEmbedder, PCAEmbedder, TxFMEmbedder


@pytest.fixture(scope="module")
def simulated(gene_relationships_dir):
    return simulate_perturb_seq(n_cells=1200, n_genes=400, n_batches=4, effect_size=1.5, seed=0, relationships_dir=str(gene_relationships_dir))


def test_simulator_layout(simulated):
    obs = simulated.obs
    assert {"perturbation", "is_control", "batch", "complex"} <= set(obs.columns)
    assert obs["is_control"].mean() == pytest.approx(0.2, abs=0.05)
    assert obs.groupby("batch")["is_control"].sum().min() > 0
    assert np.allclose(simulated.X.data, np.round(simulated.X.data))  # raw integer counts
    complexes = json.loads(simulated.uns["simulation"])["complexes"]
    assert all(len(m) >= 3 for m in complexes.values())


def test_perturbation_benchmark_end_to_end(simulated, gene_relationships_dir, tmp_path):
    protocol = PerturbationProtocol(seeds=[0], n_null=1000, probe_epochs=5, inv_genes=200, postprocessings=["center", "tvn"])
    results = run_perturbation_benchmark(
        simulated, [LogNormEmbedder(n_hvg=300)], protocol, relationships_dir=str(gene_relationships_dir), dataset_name="simulated"
    )
    model = results["models"]["lognorm_hvg300"]
    metrics = {k: v["mean"] for k, v in model["metrics"].items()}
    # known by construction: complexes share programmes, so CORUM pairs sit in the top tail
    assert model["recall_per_database"]["CORUM"]["mean"] > 40  # chance is 10 %
    assert metrics["pcst"] > 10 and metrics["knn"] > 30 and metrics["lin"] > 30
    assert 0 < metrics["ilisi"] <= 1 and 50 < metrics["inv"] <= 100
    assert set(model["best_postprocessing"]) == {"ilisi", "lin", "knn", "pcst", "bmdb", "inv"}
    assert set(model["best_postprocessing"].values()) <= {"center", "tvn"}
    expected_avg = np.mean([metrics["ilisi"] * 100] + [metrics[k] for k in ("lin", "knn", "pcst", "bmdb", "inv")])
    assert metrics["avg"] == pytest.approx(expected_avg)

    written = write_report(results, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["task"] == "perturbation" and saved["protocol"]["seeds"] == [0]
    assert "| lognorm_hvg300 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "recall_by_database.png").stat().st_size > 1000
    assert written["scatter_lognorm_hvg300"].exists()


def test_centering_restores_batch_mixing(simulated, gene_relationships_dir):
    """The simulator's batch effects keep batches apart until per-batch centring on controls."""
    from evaluation import metrics as M
    from evaluation.postprocess import postprocess

    emb = make_embedder("pca").fit(eval_data=simulated).embed(simulated)
    batches = simulated.obs["batch"].to_numpy()
    controls = simulated.obs["is_control"].to_numpy()
    before = M.ilisi(emb, batches)
    after = M.ilisi(postprocess(emb, "center", controls, batches), batches)
    assert after > before + 0.2


def test_backed_file_gives_same_embeddings(simulated, tmp_path):
    path = tmp_path / "sim.h5ad"
    simulated.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    embedder = PCAEmbedder(n_components=16)
    np.testing.assert_allclose(embedder.fit(eval_data=simulated).embed(backed), embedder.embed(simulated), atol=1e-4)


def test_celltype_benchmark_on_pbmc68k(pbmc, tmp_path):
    results = run_celltype_benchmark(pbmc, [PCAEmbedder(n_components=32)], seeds=[0], dataset_name="pbmc68k")
    for name in ("pca",):
        metrics = results["models"][name]["metrics"]
        assert metrics["nmi"]["mean"] > 45 and metrics["linear_accuracy"]["mean"] > 70
        assert metrics["batch_asw"]["mean"] is None  # one batch
    assert results["protocol"]["split"].startswith("stratified cell-level")
    assert any("single batch" in note for note in results["protocol"]["notes"])
    write_report(results, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models"]["pca"]["metrics"]["batch_asw"]["mean"] is None
    assert "fitted on" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "scatter_pca.png").exists()
    table = headline_table(saved)
    assert "pca" in table and "NMI" in table


def test_celltype_benchmark_on_wu2020_uses_batch_split(wu2020):
    results = run_celltype_benchmark(wu2020, [make_embedder("pca")], seeds=[0], keep_embeddings=False)
    assert results["protocol"]["split"].startswith("batch-level")
    metrics = results["models"]["pca"]["metrics"]
    assert metrics["batch_asw"]["mean"] is not None and 0 <= metrics["nmi"]["mean"] <= 100


def test_txfm_embedder_in_celltype_benchmark(pbmc, tiny_model):
    subset = pbmc[:120].copy()
    embedder = TxFMEmbedder(tiny_model, batch_size=32)
    emb = embedder.embed(subset)
    assert emb.shape == (120, tiny_model.config.hidden_size) and np.isfinite(emb).all()
    results = run_celltype_benchmark(subset, [embedder], seeds=[0], keep_embeddings=False)
    assert results["models"]["TxFM"]["metrics"]["nmi"]["mean"] is not None


def test_gene_recall_of_model_parameters(tiny_model, pbmc, gene_relationships_dir):
    from evaluation import run_gene_benchmark

    results = run_gene_benchmark(tiny_model, pbmc, relationships_dir=str(gene_relationships_dir), components={"codebook": 8, "decoder": 8}, pca_components=16)
    assert len(results["models"]) == 3
    for model in results["models"].values():
        assert set(model["recall_curve"]) == {"CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB"}
        assert model["metrics"]["mean"]["mean"] is not None


def test_cli_celltype_writes_report(tmp_path, capsys):
    from modeling_txfm.cli import main

    assert main(["evaluate", "celltype", "--data", "example:pbmc68k", "--baselines", "lognorm_hvg1024", "--seeds", "1", "--out", str(tmp_path)]) == 0
    assert "lognorm_hvg1024" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["dataset"]["name"] == "pbmc68k"


def test_evaluate_modules_load_from_local_files():
    from evaluation import metrics as M
    from evaluation.metric_modules import load

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(90, 4)).astype(np.float32)
    batches = np.repeat(["a", "b", "c"], 30)
    module = load("txfm_ilisi")
    assert module.compute(predictions=emb.tolist(), references=batches.tolist())["ilisi"] == pytest.approx(M.ilisi(emb, batches), abs=1e-5)
    labels = np.repeat(["x", "y", "z"], 30)
    centred = emb + np.repeat(np.eye(4)[:3] * 10, 30, axis=0)
    clustering = load("txfm_clustering").compute(predictions=centred.tolist(), references=labels.tolist(), batches=batches.tolist())
    assert clustering["nmi"] == pytest.approx(1.0)
