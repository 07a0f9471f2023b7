"""Determinism, interrupt-and-resume (including SIGKILL) and every error path of the corpus builder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from dataset_builder import (
    BuildOptions,
    CorpusFormatError,
    CorruptInputError,
    GeneMappingError,
    MissingSourceFilesError,
    NotCountsError,
    build,
    build_corpus,
    load_corpus,
    local_specs,
    verify_corpus,
)
from modeling_txfm import example_data

REPO = Path(__file__).resolve().parents[1]


def small_inputs() -> list[Path]:
    return [example_data.package_file(*example_data.AIRWAY), example_data.package_file(*example_data.GTEX_LUNG)]


def options(**kwargs) -> BuildOptions:
    return BuildOptions(progress=False, rows_per_shard=4, **kwargs)


def shard_bytes(out: Path) -> dict[str, bytes]:
    files = sorted((out / "data").glob("*.parquet")) + [out / n for n in ("vocabulary.json", "profiles.json", "curation_report.json", "README.md")]
    return {f.name: f.read_bytes() for f in files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "corpus"
    build_corpus(local_specs(small_inputs(), batch_key="cell"), out, options())
    return out


def test_same_inputs_give_byte_identical_corpus(tmp_path, reference):
    build_corpus(local_specs(small_inputs(), batch_key="cell"), tmp_path / "again", options())
    assert shard_bytes(tmp_path / "again") == shard_bytes(reference)
    assert len(list((reference / "data").glob("train-*.parquet"))) > 3
    assert verify_corpus(reference) == []


def test_worker_threads_and_block_size_do_not_change_the_bytes(tmp_path, reference):
    """Threads and read-block boundaries are performance knobs only: same shards, same metadata."""
    for name, extra in (("serial", {"workers": 1}), ("threads_small_blocks", {"workers": 2, "block_nnz": 300})):
        build_corpus(local_specs(small_inputs(), batch_key="cell"), tmp_path / name, options(**extra))
        assert shard_bytes(tmp_path / name) == shard_bytes(reference), name
    serial = json.loads((tmp_path / "serial" / "manifest.json").read_text())
    assert serial == json.loads((reference / "manifest.json").read_text())  # workers is not in the fingerprint


def test_row_hashes_ignore_gene_order_and_separate_swapped_counts():
    """The duplicate hash is order-free within a row, yet not a linear sum (swapped counts differ)."""
    rows = sp.csr_matrix(
        (np.array([2, 1, 1, 2, 1, 2], dtype=np.int32), np.array([5, 9, 5, 9, 9, 5], dtype=np.int32), np.array([0, 2, 4, 6])),
        shape=(3, 10),
    )  # row 0: {5: 2, 9: 1}; row 1: {5: 1, 9: 2}; row 2: row 0 with its genes listed in the other order
    hash1, hash2 = build._row_hashes(rows)
    assert (hash1[0], hash2[0]) == (hash1[2], hash2[2])
    assert hash1[0] != hash1[1] and hash2[0] != hash2[1]


def test_interrupted_build_resumes_without_loss_or_duplicates(tmp_path, reference, monkeypatch):
    real = build.write_shard
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill while writing shard 4")
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "write_shard", dying)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_corpus(local_specs(small_inputs(), batch_key="cell"), out, options())
    assert not (out / "manifest.json").exists() and not list((out / "data").glob(".*.tmp"))
    with pytest.raises(CorpusFormatError, match="interrupted"):
        load_corpus(out)
    monkeypatch.setattr(build, "write_shard", real)
    result = build_corpus(local_specs(small_inputs(), batch_key="cell"), out, options())
    assert result.resumed_shards == 3
    assert shard_bytes(out) == shard_bytes(reference)
    ids = load_corpus(out).dataset["train"]["sample_id"]
    assert len(ids) == len(set(ids))


def test_damaged_shard_is_rebuilt_and_complete_corpus_is_reused(tmp_path, reference):
    out = tmp_path / "copy"
    build_corpus(local_specs(small_inputs(), batch_key="cell"), out, options())
    victim = sorted((out / "data").glob("train-*.parquet"))[1]
    victim.write_bytes(victim.read_bytes()[:100])
    assert verify_corpus(out) == [f"data/{victim.name}"]
    result = build_corpus(local_specs(small_inputs(), batch_key="cell"), out, options())
    assert result.written_shards == 1
    assert shard_bytes(out) == shard_bytes(reference)
    again = build_corpus(local_specs(small_inputs(), batch_key="cell"), out, options())
    assert again.written_shards == 0


KILLABLE = """
import sys, time
from dataset_builder import build, build_corpus, local_specs, BuildOptions
real = build.write_shard
def slow(*a, **k):
    time.sleep(0.4)
    return real(*a, **k)
build.write_shard = slow
paths = sys.argv[2:]
build_corpus(local_specs(paths, batch_key="cell"), sys.argv[1], BuildOptions(progress=False, rows_per_shard=4))
"""


def test_sigkill_mid_build_then_rerun_matches_clean_build(tmp_path, reference):
    out = tmp_path / "killed"
    command = [sys.executable, "-c", KILLABLE, str(out), *map(str, small_inputs())]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if (out / "data").exists() and len(list((out / "data").glob("*.parquet"))) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the build finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists()
    build_corpus(local_specs(small_inputs(), batch_key="cell"), out, options())
    assert shard_bytes(out) == shard_bytes(reference)


# ------------------------------------------------------------------------------------ errors


def tiny_h5ad(path: Path, values: np.ndarray, genes=None) -> Path:
    genes = genes or ["ENSG00000141510", "ENSG00000012048", "ENSG00000139618"][: values.shape[1]]
    obs = pd.DataFrame(index=[f"c{i}" for i in range(values.shape[0])])
    ad.AnnData(X=sp.csr_matrix(values.astype(np.float32)), obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(path)
    return path


def test_normalised_matrix_is_refused_naming_the_file(tmp_path):
    path = tiny_h5ad(tmp_path / "normalised.h5ad", np.array([[0.5, 1.25, 0.0], [2.0, 0.0, 3.5]]))
    with pytest.raises(NotCountsError, match="normalised.h5ad.*not an integer count"):
        build_corpus(local_specs([path]), tmp_path / "out", options())
    result = build_corpus(local_specs([path]), tmp_path / "out2", options(allow_non_integer=True))
    assert result.n_samples["train"] + result.n_samples["validation"] == 2


def test_negative_values_in_csv_are_refused(tmp_path):
    path = tmp_path / "negative.csv"
    pd.DataFrame([[1, -2], [3, 4]], index=["s1", "s2"], columns=["TP53", "BRCA2"]).to_csv(path)
    with pytest.raises(NotCountsError, match="negative.csv"):
        build_corpus(local_specs([path]), tmp_path / "out", options())


def test_truncated_inputs_give_clear_errors(tmp_path):
    path = tiny_h5ad(tmp_path / "cut.h5ad", np.arange(3000).reshape(1000, 3) % 7)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptInputError, match="cut.h5ad"):
        build_corpus(local_specs([path]), tmp_path / "out", options())
    gct = tmp_path / "cut.gct"
    gct.write_text("#1.2\n3\t2\nName\tDescription\tS1\tS2\nENSG00000141510.17\tTP53\t1\t2\nENSG00000012048.9\tBRCA1\t3\n")
    with pytest.raises(CorruptInputError, match="cut.gct"):
        build_corpus(local_specs([gct]), tmp_path / "out", options())


def test_gene_table_that_maps_nothing(tmp_path):
    path = tiny_h5ad(tmp_path / "mouse.h5ad", np.ones((2, 2)), genes=["Gm12345", "mt-Xyz9"])
    with pytest.raises(GeneMappingError, match="mouse.h5ad.*none of its 2 gene identifiers"):
        build_corpus(local_specs([path]), tmp_path / "out", options())


def test_missing_paper_source_lists_what_to_download(tmp_path, capsys):
    from modeling_txfm.cli import main

    (tmp_path / "gtex").mkdir()
    code = main(["build-corpus", "--source", "gtex", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"])
    message = capsys.readouterr().err
    assert code == 2
    assert "GTEx_Analysis_2017-06-05_v8_RNASeQCv1.1.9_gene_reads.gct.gz" in message
    assert "storage.googleapis.com" in message and str(tmp_path / "gtex") in message
    from dataset_builder.sources import resolve

    with pytest.raises(MissingSourceFilesError, match="K562_gwps_raw_singlecell_01.h5ad"):
        resolve("k562_gwps", tmp_path)


def test_push_to_hub_offline_fails_clearly(reference, monkeypatch, capsys):
    from dataset_builder.cli import push_to_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_invalid")
    assert push_to_hub(reference, "someone/txfm-test-corpus") == 3
    assert "could not push" in capsys.readouterr().err


def test_fixed_vocabulary_from_checkpoint_config(tmp_path, reference):
    vocabulary = json.loads((reference / "vocabulary.json").read_text())
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "txfm", "gene_ids": vocabulary["gene_ids"][:500],
                                                         "gene_symbols": vocabulary["symbols"][:500]}))
    result = build_corpus(local_specs(small_inputs()[:1]), tmp_path / "ft", options(vocabulary=str(checkpoint)))
    assert load_corpus(tmp_path / "ft").gene_ids == vocabulary["gene_ids"][:500]
    assert result.report["sources"]["airway"]["inputs"][0]["rules"]["outside_vocabulary"]["genes_removed"] > 60_000
