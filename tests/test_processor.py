"""TxFMProcessor: gene mapping, preprocessing, visible-gene choice and refusal of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from modeling_txfm import TxFMInputError, TxFMProcessor
from modeling_txfm.processing_txfm import log_normalize

L = 1e5


@pytest.fixture(scope="module")
def processor(pbmc_vocabulary):
    gene_ids, symbols = pbmc_vocabulary
    return TxFMProcessor(gene_ids=gene_ids, gene_symbols=symbols, num_visible_genes=64, library_size=L)


def small_counts(pbmc, n=12):
    return pbmc.X[:n], list(pbmc.var_names)


def test_preprocessing_is_library_size_log1p(processor, pbmc):
    counts, genes = small_counts(pbmc)
    out = processor(counts, genes, return_targets=True, return_tensors="np")
    match = processor.match_genes(genes)
    mapped = (counts @ match.aggregate).toarray()
    expected = np.log1p(L * mapped / mapped.sum(1, keepdims=True))
    np.testing.assert_allclose(out["targets"][:, match.profiled], expected, rtol=1e-6)
    assert out["targets"][:, ~out["profiled_mask"][0]].max() == 0
    rows = np.arange(len(expected))[:, None]
    position = np.searchsorted(match.profiled, out["gene_ids"])
    np.testing.assert_allclose(out["values"], expected[rows, position], rtol=1e-6)


def test_encoder_sees_exactly_k_profiled_genes(processor, pbmc):
    counts, genes = small_counts(pbmc)
    for training in (False, True):
        out = processor(counts, genes, training=training, generator=np.random.default_rng(0), return_targets=True,
                        return_tensors="np")
        assert out["gene_ids"].shape == (12, 64)
        assert all(len(set(row)) == 64 for row in out["gene_ids"])  # without replacement
        assert out["profiled_mask"][np.arange(12)[:, None], out["gene_ids"]].all()  # all profiled
        assert out["attention_mask"].all()


def test_training_draws_differ_per_sample_and_step_inference_is_fixed(processor, pbmc):
    counts, genes = small_counts(pbmc)
    rng = np.random.default_rng(0)
    first = processor(counts, genes, training=True, generator=rng, return_tensors="np")["gene_ids"]
    second = processor(counts, genes, training=True, generator=rng, return_tensors="np")["gene_ids"]
    assert not np.array_equal(first, second) and not np.array_equal(first[0], first[1])
    inference = processor(counts, genes, return_tensors="np")["gene_ids"]
    assert (inference == inference[0]).all()  # the same K genes for every sample of a dataset
    reversed_columns = processor(counts[:, ::-1], genes[::-1], return_tensors="np")
    np.testing.assert_array_equal(reversed_columns["gene_ids"], inference)  # column order is irrelevant


def test_uniform_draw_covers_profiled_genes_evenly(processor, pbmc):
    counts, genes = small_counts(pbmc, n=1)
    n_profiled = len(processor.match_genes(genes).profiled)
    hits = np.zeros(processor.vocab_size)
    rng = np.random.default_rng(0)
    for _ in range(200):
        np.add.at(hits, processor(counts, genes, training=True, generator=rng, return_tensors="np")["gene_ids"][0], 1)
    expected = 200 * 64 / n_profiled
    seen = hits[hits > 0]
    assert abs(seen.mean() - expected) < 0.05 * expected and seen.std() < 0.5 * expected


def test_sample_with_fewer_than_k_profiled_genes_shows_all_of_them(processor):
    genes = processor.gene_ids[:10]
    out = processor(np.arange(1, 31, dtype=float).reshape(3, 10), genes, return_tensors="np")
    assert out["gene_ids"].shape == (3, 10)


def test_gene_identifier_forms_map_to_the_same_genes(processor, pbmc_vocabulary):
    gene_ids, symbols = pbmc_vocabulary
    picks = [i for i, s in enumerate(symbols) if s][:20]
    counts = np.random.default_rng(0).poisson(5, size=(4, 20)).astype(float) + 1
    by_id = processor([counts][0], [gene_ids[i] for i in picks], return_tensors="np")
    by_version = processor(counts, [gene_ids[i] + ".7" for i in picks], return_tensors="np")
    by_symbol = processor(counts, [symbols[i] for i in picks], return_tensors="np")
    by_lower = processor(counts, [symbols[i].lower() for i in picks], return_tensors="np")
    for other in (by_version, by_symbol, by_lower):
        np.testing.assert_array_equal(other["gene_ids"], by_id["gene_ids"])
        np.testing.assert_allclose(other["values"], by_id["values"])


def test_unknown_genes_are_dropped_and_reported(processor, pbmc):
    counts, genes = small_counts(pbmc)
    match = processor.match_genes(genes)
    assert 0.85 < match.match_rate < 1.0  # a few pbmc symbols are not in GENCODE v48
    assert "matched the model vocabulary" in match.summary()
    assert len(match.mapping.unmapped) == match.n_input - match.n_in_vocabulary


def test_duplicated_genes_are_refused(processor, pbmc):
    counts, genes = small_counts(pbmc)
    genes = genes.copy()
    genes[5] = genes[4]
    with pytest.raises(TxFMInputError, match="more than once"):
        processor(counts, genes)


def test_low_match_rate_is_refused(processor):
    with pytest.raises(TxFMInputError, match=r"matched the model vocabulary.*minimum 30 %"):
        processor(np.ones((2, 5)), ["ENSG00000000003", "foo", "bar", "baz", "qux"])
    with pytest.raises(TxFMInputError, match="HGNC symbols"):
        processor(np.ones((2, 3)), ["gene_1", "gene_2", "gene_3"])


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-1.0, "negative"), (2.5, "not integers")],
)
@pytest.mark.parametrize("sparse", [False, True])
def test_bad_values_are_refused_naming_sample_and_gene(processor, pbmc, value, message, sparse):
    counts, genes = small_counts(pbmc)
    dense = counts.toarray()
    dense[3, 7] = value
    matrix = sp.csr_matrix(dense) if sparse else dense
    names = [f"cell{i}" for i in range(12)]
    with pytest.raises(TxFMInputError, match=message) as error:
        processor(matrix, genes, sample_names=names)
    assert "cell3" in str(error.value) and genes[7] in str(error.value)


def test_log_transformed_input_is_recognised(processor, pbmc):
    counts, genes = small_counts(pbmc)
    logged = counts.copy()
    logged.data = np.log1p(logged.data)
    with pytest.raises(TxFMInputError, match="log-transformed"):
        processor(logged, genes)


def test_normalised_input_needs_the_opt_in_and_then_matches_counts(processor, pbmc):
    counts, genes = small_counts(pbmc)
    cpm = sp.diags(1e6 / np.asarray(counts.sum(1)).ravel()) @ counts
    with pytest.raises(TxFMInputError, match="counts_are_normalized"):
        processor(cpm, genes)
    out = processor(cpm, genes, counts_are_normalized=True, return_tensors="np")
    reference = processor(counts, genes, return_tensors="np")
    # L·x/Σx over the mapped genes is scale-free per sample: CPM input gives the count values
    np.testing.assert_allclose(out["values"], reference["values"], rtol=1e-5)


def test_all_zero_samples_are_refused(processor, pbmc):
    counts, genes = small_counts(pbmc)
    dense = counts.toarray()
    dense[2] = 0
    with pytest.raises(TxFMInputError, match="no counts") as error:
        processor(dense, genes, sample_names=[f"s{i}" for i in range(12)])
    assert "s2" in str(error.value)


def test_shape_mismatches_are_refused(processor, pbmc):
    counts, genes = small_counts(pbmc)
    with pytest.raises(TxFMInputError, match="gene identifiers"):
        processor(counts, genes[:-1])
    with pytest.raises(TxFMInputError, match="2-D"):
        processor(np.ones(5), genes[:5])


def test_log_normalize_dense_equals_sparse():
    counts = np.random.default_rng(0).poisson(2, size=(5, 30)).astype(float) + np.eye(5, 30)
    np.testing.assert_allclose(log_normalize(sp.csr_matrix(counts), L).toarray(), log_normalize(counts, L))


def test_processor_round_trips_through_save_pretrained(processor, tmp_path, pbmc):
    processor.save_pretrained(tmp_path)
    loaded = TxFMProcessor.from_pretrained(tmp_path)
    assert loaded.gene_ids == processor.gene_ids and loaded.num_visible_genes == 64
    counts, genes = small_counts(pbmc)
    np.testing.assert_array_equal(loaded(counts, genes, return_tensors="np")["values"],
                                  processor(counts, genes, return_tensors="np")["values"])
