"""Corpus built from real data shipped in packages: harmonisation, exact round trip, splits, loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from dataset_builder import BuildOptions, build_corpus, load_corpus, local_specs
from dataset_builder.examples import EXAMPLE_BATCH_KEYS, EXAMPLE_CELL_TYPE_KEYS, example_inputs
from dataset_builder.harmonise import default_annotation
from modeling_txfm import example_data


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("package_corpus")
    paths = example_inputs(root / "inputs")
    specs = local_specs(paths, batch_key=EXAMPLE_BATCH_KEYS, cell_type_key=EXAMPLE_CELL_TYPE_KEYS)
    for spec in specs:
        spec.batch_pattern = r"^(GTEX-[^-]+)"
    result = build_corpus(specs, root / "corpus", BuildOptions(progress=False, rows_per_shard=500))
    return result, load_corpus(root / "corpus")


def _rows(corpus, source: str) -> dict[str, dict]:
    rows = {}
    for split in ("train", "validation"):
        part = corpus.dataset[split].filter(lambda s: s == source, input_columns="source")
        for row in part:
            rows[row["sample_id"]] = row
    return rows


def _expected(adata) -> tuple[list[str], sp.csr_matrix]:
    """Independent harmonisation: map identifiers, sum duplicates with a dense groupby."""
    mapped, _ = default_annotation().to_ensembl(list(map(str, adata.var_names)))
    genes = sorted({g for g in mapped if g})
    column = {g: i for i, g in enumerate(genes)}
    dense = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    dense = np.rint(dense).astype(np.int64)
    out = np.zeros((dense.shape[0], len(genes)), dtype=np.int64)
    for j, gene in enumerate(mapped):
        if gene:
            out[:, column[gene]] += dense[:, j]
    return genes, sp.csr_matrix(out)


def test_all_package_sources_built_without_loss(built):
    result, corpus = built
    expected = {"wu2020_200_v0_11": 200, "sample_cell_by_gene": 559, "airway": 8, "gtex_lung.first30.chr21": 30, "pbmc68k_counts": 700}
    per_source = {name: entry["samples_out"] for name, entry in result.report["sources"].items()}
    assert per_source == expected
    assert result.n_samples["train"] + result.n_samples["validation"] == sum(expected.values())
    assert corpus.dataset["train"].num_rows == result.n_samples["train"]
    assert corpus.gene_ids == sorted(corpus.gene_ids) and len(set(corpus.gene_ids)) == len(corpus.gene_ids)
    assert all(g.startswith("ENSG") and "." not in g for g in corpus.gene_ids)
    assert len(corpus.symbols) == len(corpus.gene_ids)
    assert set(corpus.profiles) == {0, 1, 2, 3, 4}
    for positions in corpus.profiles.values():
        assert positions.dtype == np.int64 and np.all(np.diff(positions) > 0)
    features = corpus.dataset["train"].features
    assert features["gene_index"].feature.dtype == "int32" and features["counts"].feature.dtype == "int32"


@pytest.mark.parametrize(
    "source, loader",
    [("wu2020_200_v0_11", example_data.wu2020), ("gtex_lung.first30.chr21", example_data.gtex_lung),
     ("sample_cell_by_gene", example_data.celltypist_sample)],
)
def test_sparse_round_trip_equals_input_counts(built, source, loader):
    """Symbols (wu2020, celltypist floats) and versioned Ensembl IDs (GTEx) come back exactly."""
    _, corpus = built
    adata = loader()
    genes, expected = _expected(adata)
    rows = _rows(corpus, source)
    profile = corpus.profiles[rows[adata.obs_names[0]]["profile_id"]]
    assert [corpus.gene_ids[p] for p in profile] == genes  # the profile is exactly the measured genes
    position = {p: i for i, p in enumerate(profile)}
    for i, sample in enumerate(adata.obs_names):
        row = rows[sample]
        assert all(c > 0 for c in row["counts"]) and row["gene_index"] == sorted(row["gene_index"])
        got = np.zeros(len(genes), dtype=np.int64)
        got[[position[g] for g in row["gene_index"]]] = row["counts"]
        np.testing.assert_array_equal(got, expected[i].toarray().ravel())


def test_metadata_and_split_by_held_out_batch(built):
    result, corpus = built
    wu = _rows(corpus, "wu2020_200_v0_11")
    adata = example_data.wu2020()
    for sample in adata.obs_names[:20]:
        assert wu[sample]["batch"] == adata.obs.loc[sample, "batch"]
        assert wu[sample]["cell_type"] == adata.obs.loc[sample, "cell_type"]
    splits = result.report["sources"]
    for source in ("wu2020_200_v0_11", "airway", "gtex_lung.first30.chr21"):
        info = splits[source]["split"]
        assert info["method"] == "held-out batches" and info["validation_batches"]
        train = set(corpus.dataset["train"].filter(lambda s, name=source: s == name, input_columns="source")["batch"])
        validation = set(corpus.dataset["validation"].filter(lambda s, name=source: s == name, input_columns="source")["batch"])
        assert validation == set(info["validation_batches"]) and not train & validation
    assert "single batch" in splits["sample_cell_by_gene"]["split"]["method"]
    assert splits["sample_cell_by_gene"]["split"]["samples"]["validation"] > 0


def test_corpus_files_and_hf_loading_paths(built):
    import datasets

    result, corpus = built
    out = result.out
    assert json.loads((out / "vocabulary.json").read_text())["gene_ids"] == corpus.gene_ids
    report = json.loads((out / "curation_report.json").read_text())
    mapping = report["sources"]["sample_cell_by_gene"]["inputs"][0]["mapping"]
    assert mapping["n_mapped_by_symbol"] > 15_000 and mapping["n_unmapped"] > 0
    assert "configs:" in (out / "README.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["path"] for s in manifest["shards"]] == sorted(str(p.relative_to(out)) for p in (out / "data").glob("*.parquet"))
    by_card = datasets.load_dataset(str(out))
    by_glob = datasets.load_dataset("parquet", data_dir=str(out / "data"))
    for loaded in (by_card, by_glob):
        assert loaded["train"].num_rows == result.n_samples["train"]
        assert loaded["validation"].num_rows == result.n_samples["validation"]
    stream = load_corpus(out, split="validation", streaming=True).dataset
    first = next(iter(stream))
    assert set(first) == set(corpus.dataset["train"].features)


def test_cli_local_source_with_thresholds(tmp_path):
    from modeling_txfm.cli import main

    gtex = example_data.package_file(*example_data.GTEX_LUNG)
    out = tmp_path / "cli"
    code = main(["build-corpus", "--source", "local", "--data-dir", str(gtex), "--out", str(out), "--quiet",
                 "--min-genes", "355", "--min-cells", "10", "--batch-pattern", r"^(GTEX-[^-]+)"])
    assert code == 0
    report = json.loads((out / "curation_report.json").read_text())
    rules = report["sources"]["gtex_lung.first30.chr21"]["inputs"][0]["rules"]
    frame = example_data.gtex_lung()
    nnz = (np.asarray(frame.X) > 0).sum(axis=1)
    assert rules["min_genes_per_sample"]["samples_removed"] == int((nnz < 355).sum())
    kept = np.asarray(frame.X)[nnz >= 355]
    assert rules["min_samples_per_gene"]["genes_removed"] == int(((kept > 0).sum(axis=0) < 10).sum())
    assert load_corpus(Path(out)).dataset["train"].num_rows > 0
