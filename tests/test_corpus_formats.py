"""Every reader on small files in each real on-disk layout, and the nine paper sources end to end.

The files are tiny but structurally faithful: AnnData h5ad layouts (CSR / dense / CSC X,
``layers["counts"]``, ``raw``), CellRanger v3 ``.h5``, 10x ``matrix.mtx.gz`` folders (and GEO's
renamed variant), GCT 1.2, GDC STAR ``augmented_star_gene_counts.tsv`` with a sample sheet, CSV/TSV
in both orientations.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from dataset_builder import BuildOptions, TxFMCorpusBuilder, build_corpus, load_corpus, local_specs
from dataset_builder.harmonise import default_annotation

N_CELLS, N_GENES = 60, 120


@pytest.fixture(scope="module")
def genes() -> pd.DataFrame:
    table = default_annotation().table
    coding = table[(table["biotype"] == "protein_coding") & table["symbol"].notna()]
    coding = coding[~coding["symbol"].duplicated(keep=False)]
    return coding.iloc[:N_GENES].reset_index(drop=True)


@pytest.fixture(scope="module")
def counts() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    dense = rng.negative_binomial(1, 0.6, size=(N_CELLS, N_GENES)) * (rng.random((N_CELLS, N_GENES)) < 0.4)
    dense[:, 0] += 1  # no empty cell
    return sp.csr_matrix(dense.astype(np.float32))


def obs_frame(n: int = N_CELLS) -> pd.DataFrame:
    return pd.DataFrame(
        {"batch": [f"b{i % 3}" for i in range(n)], "cell_type": [f"t{i % 2}" for i in range(n)]},
        index=[f"cell{i:03d}" for i in range(n)],
    )


def write_h5ad_variants(folder: Path, counts, genes) -> dict[str, Path]:
    var = pd.DataFrame(index=genes["symbol"].to_numpy())
    normalised = sp.csr_matrix(np.log1p(counts.toarray() / counts.sum(1).A * 1e4).astype(np.float32))
    paths = {}
    variants = {
        "csr": ad.AnnData(X=counts.copy(), obs=obs_frame(), var=var),
        "dense": ad.AnnData(X=counts.toarray(), obs=obs_frame(), var=var),
        "csc": ad.AnnData(X=sp.csc_matrix(counts), obs=obs_frame(), var=var),
        "layer": ad.AnnData(X=normalised, obs=obs_frame(), var=var, layers={"counts": counts.copy()}),
    }
    raw = ad.AnnData(X=counts.copy(), obs=obs_frame(), var=var.assign(gene_ids=genes["ensembl_id"].to_numpy()))
    with_raw = ad.AnnData(X=normalised[:, :50], obs=obs_frame(), var=var.iloc[:50])
    with_raw.raw = raw
    variants["raw"] = with_raw
    for name, adata in variants.items():
        paths[name] = folder / f"{name}.h5ad"
        adata.write_h5ad(paths[name])
    return paths


def write_10x_h5(path: Path, counts, genes, barcodes) -> None:
    """CellRanger v3 layout: genes × cells CSC, plus one antibody feature that must be dropped."""
    extra = sp.csr_matrix(np.full((counts.shape[0], 1), 7, dtype=np.int32))
    matrix = sp.csc_matrix(sp.hstack([counts, extra]).T.astype(np.int32))
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group["data"], group["indices"], group["indptr"] = matrix.data, matrix.indices, matrix.indptr
        group["shape"] = np.array(matrix.shape, dtype=np.int32)
        group["barcodes"] = np.array(barcodes, dtype="S")
        features = group.create_group("features")
        features["id"] = np.array([*genes["ensembl_id"], "CD3_TotalSeqB"], dtype="S")
        features["name"] = np.array([*genes["symbol"], "CD3"], dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * len(genes) + ["Antibody Capture"], dtype="S")
        features["genome"] = np.array(["GRCh38"] * (len(genes) + 1), dtype="S")


def write_mtx_folder(folder: Path, counts, genes, barcodes, geo_names: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = ("count_matrix_sparse.mtx", "count_matrix_genes.tsv", "count_matrix_barcodes.tsv") if geo_names else (
        "matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz")
    buffer = io.BytesIO()
    scipy.io.mmwrite(buffer, sp.coo_matrix(counts.T.astype(np.int64)), field="integer")

    def write(name: str, payload: bytes) -> None:
        (gzip.open if name.endswith(".gz") else open)(folder / name, "wb").write(payload)

    write(names[0], buffer.getvalue())
    if geo_names:
        write(names[1], "\n".join(genes["symbol"]).encode() + b"\n")
    else:
        lines = [f"{g}\t{s}\tGene Expression" for g, s in zip(genes["ensembl_id"], genes["symbol"])]
        write(names[1], ("\n".join(lines) + "\n").encode())
    write(names[2], ("\n".join(barcodes) + "\n").encode())


def write_gct(path: Path, counts, genes, samples) -> None:
    lines = ["#1.2", f"{counts.shape[1]}\t{counts.shape[0]}", "Name\tDescription\t" + "\t".join(samples)]
    dense = counts.toarray().astype(np.int64).T
    for j, (gene, symbol) in enumerate(zip(genes["ensembl_id"], genes["symbol"])):
        lines.append(f"{gene}.7\t{symbol}\t" + "\t".join(map(str, dense[j])))
    payload = ("\n".join(lines) + "\n").encode()
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(payload)


STAR_HEADER = "gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\ttpm_unstranded\tfpkm_unstranded\tfpkm_uq_unstranded"


def write_star_folder(folder: Path, counts, genes, samples) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sheet = ["File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\tSample Type"]
    dense = counts.toarray().astype(np.int64)
    for i, sample in enumerate(samples):
        name = f"{i:08x}-uuid.rna_seq.augmented_star_gene_counts.tsv"
        lines = ["# gene-model: GENCODE v36", STAR_HEADER]
        lines += [f"{n}\t\t\t{v}\t{v}\t{v}\t\t\t" for n, v in (("N_unmapped", 9), ("N_multimapping", 8), ("N_noFeature", 7), ("N_ambiguous", 6))]
        for j, (gene, symbol) in enumerate(zip(genes["ensembl_id"], genes["symbol"])):
            v = dense[i, j]
            lines.append(f"{gene}.5\t{symbol}\tprotein_coding\t{v}\t{v // 2}\t{v - v // 2}\t1.0\t0.5\t0.6")
        (folder / name).write_text("\n".join(lines) + "\n")
        project = "TCGA-BRCA" if i % 2 else "TCGA-LUAD"
        sheet.append(f"uuid{i}\t{name}\tTranscriptome Profiling\tGene Expression Quantification\t{project}\tcase{i}\t{sample}\tPrimary Tumor")
    (folder / "gdc_sample_sheet.2024-01-01.tsv").write_text("\n".join(sheet) + "\n")


def corpus_matrix(corpus, split_rows=None) -> tuple[list[str], dict[str, np.ndarray]]:
    """sample id → dense counts over the vocabulary genes."""
    rows = {}
    for split in ("train", "validation"):
        for row in corpus.dataset[split]:
            dense = np.zeros(len(corpus.gene_ids), dtype=np.int64)
            dense[row["gene_index"]] = row["counts"]
            rows[row["sample_id"]] = dense
    return corpus.gene_ids, rows


def assert_matches(corpus, counts, genes, samples):
    gene_ids, rows = corpus_matrix(corpus)
    order = [gene_ids.index(g) for g in genes["ensembl_id"]]
    dense = counts.toarray().astype(np.int64)
    assert len(rows) == len(samples)
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(rows[sample][order], dense[i])


@pytest.mark.parametrize("variant", ["csr", "dense", "csc", "layer", "raw"])
def test_h5ad_layouts_round_trip(tmp_path, counts, genes, variant):
    path = write_h5ad_variants(tmp_path, counts, genes)[variant]
    build_corpus(local_specs([path]), tmp_path / "out", BuildOptions(progress=False, block_nnz=500))
    corpus = load_corpus(tmp_path / "out")
    assert_matches(corpus, counts, genes, obs_frame().index)
    row = corpus.dataset["train"][0]
    assert row["batch"].startswith("b") and row["cell_type"] in ("t0", "t1")


@pytest.mark.parametrize("kind", ["10x_h5", "mtx", "gct", "star", "csv_rows", "tsv_genes"])
def test_other_formats_round_trip(tmp_path, counts, genes, kind):
    samples = [f"TCGA-A{i % 4}-{i:04d}-01A" for i in range(N_CELLS)] if kind == "star" else [f"S{i:03d}" for i in range(N_CELLS)]
    if kind == "10x_h5":
        path = tmp_path / "filtered_feature_bc_matrix.h5"
        write_10x_h5(path, counts, genes, samples)
    elif kind == "mtx":
        path = tmp_path / "filtered_feature_bc_matrix"
        write_mtx_folder(path, counts, genes, samples)
    elif kind == "gct":
        path = tmp_path / "reads.gct.gz"
        write_gct(path, counts, genes, samples)
    elif kind == "star":
        path = tmp_path / "star"
        write_star_folder(path, counts, genes, samples)
    elif kind == "csv_rows":
        path = tmp_path / "matrix.csv"
        pd.DataFrame(counts.toarray(), index=samples, columns=genes["symbol"]).to_csv(path)
    else:
        path = tmp_path / "matrix.tsv.gz"
        pd.DataFrame(counts.toarray().T.astype(int), index=genes["ensembl_id"], columns=samples).to_csv(path, sep="\t")
    result = build_corpus(local_specs([path]), tmp_path / "out", BuildOptions(progress=False))
    assert_matches(load_corpus(tmp_path / "out"), counts, genes, samples)
    if kind == "star":
        corpus = load_corpus(tmp_path / "out")
        row = corpus.dataset["train"][0]
        assert row["tissue"] in ("TCGA-BRCA", "TCGA-LUAD") and row["batch"].startswith("A")
        assert result.report["sources"]["star"]["split"]["method"] == "held-out batches"


def test_fixed_vocabulary_drops_and_reports_genes(tmp_path, counts, genes):
    path = write_h5ad_variants(tmp_path, counts, genes)["csr"]
    vocabulary = {"gene_ids": list(genes["ensembl_id"][::-2]), "symbols": list(genes["symbol"][::-2])}  # unsorted
    (tmp_path / "vocab.json").write_text(__import__("json").dumps(vocabulary))
    result = build_corpus(local_specs([path]), tmp_path / "out", BuildOptions(progress=False, vocabulary=str(tmp_path / "vocab.json")))
    corpus = load_corpus(tmp_path / "out")
    assert corpus.gene_ids == vocabulary["gene_ids"]
    rules = result.report["sources"]["csr"]["inputs"][0]["rules"]
    assert rules["outside_vocabulary"]["genes_removed"] == N_GENES // 2
    dense = counts.toarray().astype(np.int64)
    column = {g: j for j, g in enumerate(genes["ensembl_id"])}
    for row in corpus.dataset["train"].select(range(5)):
        assert row["gene_index"] == sorted(row["gene_index"])
        sample = int(row["sample_id"][4:])
        for position, value in zip(row["gene_index"], row["counts"]):
            assert dense[sample, column[corpus.gene_ids[position]]] == value


def test_duplicates_and_thresholds_report_exact_counts(tmp_path, counts, genes):
    doubled = sp.vstack([counts, counts[:5]]).tocsr()
    obs = pd.concat([obs_frame(), obs_frame(5).rename(index=lambda s: s + "_dup")])
    ad.AnnData(X=doubled, obs=obs, var=pd.DataFrame(index=genes["ensembl_id"].to_numpy())).write_h5ad(tmp_path / "d.h5ad")
    specs = local_specs([tmp_path / "d.h5ad"], min_genes=20, min_cells=8)
    result = build_corpus(specs, tmp_path / "out", BuildOptions(progress=False))
    rules = result.report["sources"]["d"]["inputs"][0]["rules"]
    nnz = np.diff(doubled.indptr)
    passing = nnz >= 20
    assert rules["min_genes_per_sample"]["samples_removed"] == int((~passing).sum())
    assert rules["exact_duplicates"]["samples_removed"] == int(passing[N_CELLS:].sum())
    gene_cells = np.asarray((doubled[passing] > 0).sum(axis=0)).ravel()
    assert rules["min_samples_per_gene"]["genes_removed"] == int((gene_cells < 8).sum())
    assert result.n_samples["train"] + result.n_samples["validation"] == int(passing[:N_CELLS].sum())


# ------------------------------------------------------------------------------- paper sources


def write_paper_sources(root: Path, counts, genes) -> None:
    rng = np.random.default_rng(1)
    symbols, ensembl = genes["symbol"].to_numpy(), genes["ensembl_id"].to_numpy()
    cells = [f"AAAC{i:04d}-1" for i in range(N_CELLS)]
    # K562: Replogle raw single-cell h5ad (X counts, obs gene / gem_group, var index Ensembl + gene_name)
    n_per, perturbations = 30, ["G1", "G2", "G3", "N1", "N2", "N3"]
    labels = ["non-targeting"] * 90 + [p for p in perturbations for _ in range(n_per)]
    base = rng.poisson(3.0, size=(len(labels), N_GENES)).astype(np.float32)
    for k, p in enumerate(perturbations[:3]):  # strong, consistent phenotypes
        rows = [i for i, label in enumerate(labels) if label == p]
        base[np.ix_(rows, range(10 * k, 10 * k + 10))] *= 8
    obs = pd.DataFrame({"gene": labels, "gem_group": [f"{1 + i % 2}" for i in range(len(labels))]},
                       index=[f"k562_{i}" for i in range(len(labels))])
    (root / "k562_gwps").mkdir(parents=True)
    ad.AnnData(X=sp.csr_matrix(base), obs=obs, var=pd.DataFrame({"gene_name": symbols}, index=ensembl)).write_h5ad(
        root / "k562_gwps" / "K562_gwps_raw_singlecell_01.h5ad")
    # CELLxGENE-style h5ads: normalised X, counts in raw
    def cellxgene(path: Path, extra: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        obs = obs_frame().assign(donor_id=[f"d{i % 4}" for i in range(N_CELLS)], **extra)
        adata = ad.AnnData(X=sp.csr_matrix(np.log1p(counts.toarray())), obs=obs, var=pd.DataFrame(index=ensembl))
        adata.raw = ad.AnnData(X=counts.copy(), obs=obs, var=pd.DataFrame(index=ensembl))
        adata.write_h5ad(path)

    cellxgene(root / "glioblastoma" / "gbmap_core.h5ad", {"tissue": "brain"})
    cellxgene(root / "gastric_metaplasia" / "gastric_metaplasia.h5ad", {"tissue": "stomach"})
    sciplex = ad.AnnData(X=counts.copy(), obs=obs_frame().assign(perturbation=["control", "drugA", "drugB"] * 20,
                         replicate=["r1", "r2"] * 30, cell_line=["A549"] * N_CELLS), var=pd.DataFrame(index=symbols))
    (root / "sciplex").mkdir()
    sciplex.write_h5ad(root / "sciplex" / "SrivatsanTrapnell2020_sciplex3.h5ad")
    (root / "tumour_microenvironment").mkdir()
    write_10x_h5(root / "tumour_microenvironment" / "tme_filtered_feature_bc_matrix.h5", counts, genes,
                 [f"AAAC{i:04d}-{1 + i % 3}" for i in range(N_CELLS)])
    for experiment in ("expt1", "expt2"):
        write_mtx_folder(root / "mixseq" / experiment, counts, genes, cells)
        pd.DataFrame({"barcode": cells, "singlet_ID": ["LINE_A", "LINE_B"] * 30, "treatment": ["DMSO", "idasanutlin"] * 30}).to_csv(
            root / "mixseq" / experiment / "classifications.csv", index=False)
    wu = root / "breast_cancer" / "Wu_etal_2021_BRCA_scRNASeq"
    write_mtx_folder(wu, counts, genes, cells, geo_names=True)
    pd.DataFrame({"orig.ident": [f"CID{i % 3}" for i in range(N_CELLS)], "celltype_major": ["T-cells"] * N_CELLS},
                 index=cells).to_csv(wu / "metadata.csv")
    write_star_folder(root / "tcga" / "star_counts", counts, genes, [f"TCGA-A{i % 4}-{i:04d}-01A" for i in range(N_CELLS)])
    (root / "gtex").mkdir()
    samples = [f"GTEX-{i % 5:04d}-0001-SM-{i:04d}" for i in range(N_CELLS)]
    write_gct(root / "gtex" / "GTEx_Analysis_2017-06-05_v8_RNASeQCv1.1.9_gene_reads.gct.gz", counts, genes, samples)
    pd.DataFrame({"SAMPID": samples, "SMTSD": ["Lung"] * N_CELLS, "SMGEBTCH": [f"LCSET-{i % 4}" for i in range(N_CELLS)]}).to_csv(
        root / "gtex" / "GTEx_Analysis_v8_Annotations_SampleAttributesDS.txt", sep="\t", index=False)


def test_diverse_rna_collection_through_the_datasets_builder(tmp_path, counts, genes):
    write_paper_sources(tmp_path / "downloads", counts, genes)
    builder = TxFMCorpusBuilder(
        config_name="diverse_rna_1.4m", data_dir=str(tmp_path / "downloads"), cache_dir=str(tmp_path / "hf"),
        min_genes=5, min_cells=2, rows_per_shard=200, phenoprint={"n_null": 2000},
    )
    builder.download_and_prepare()
    dataset = builder.as_dataset()
    corpus = load_corpus(builder.corpus_dir())
    assert dataset["train"].num_rows == corpus.dataset["train"].num_rows
    assert dataset["validation"].num_rows == corpus.dataset["validation"].num_rows
    sources = set(dataset["train"]["source"]) | set(dataset["validation"]["source"])
    assert sources == {"k562_gwps", "glioblastoma", "mixseq", "sciplex", "gastric_metaplasia",
                       "tumour_microenvironment", "breast_cancer", "tcga", "gtex"}
    report = __import__("json").loads((builder.corpus_dir() / "curation_report.json").read_text())
    phenoprint = report["sources"]["k562_gwps"]["inputs"][0]["rules"]["phenoprint"]
    kept = set(dataset["train"].filter(lambda s: s == "k562_gwps", input_columns="source")["perturbation"])
    assert {"G1", "G2", "G3", "non-targeting"} <= kept | set(
        dataset["validation"].filter(lambda s: s == "k562_gwps", input_columns="source")["perturbation"])
    assert phenoprint["perturbations_tested"] == 6 and phenoprint["controls_kept"] == 90
    assert report["sources"]["gtex"]["inputs"][0]["rules"]["min_samples_per_gene"]["threshold"] == 2
    gtex = dataset["train"].filter(lambda s: s == "gtex", input_columns="source")
    assert set(gtex["tissue"]) == {"Lung"} and all(b.startswith("LCSET-") for b in gtex["batch"])
    mix = dataset["train"].filter(lambda s: s == "mixseq", input_columns="source")
    assert set(mix["cell_type"]) <= {"LINE_A", "LINE_B"} and any(mix["is_control"])
    stream = builder.as_streaming_dataset(split="validation")
    assert set(next(iter(stream))) == set(dataset["train"].features)
    assert len(corpus.profiles) == 10  # one profile per input file (mixseq has two)
