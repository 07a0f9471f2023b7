"""Every evaluation metric against answers known by construction and hand computations on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from evaluation import metrics as M
from evaluation.embedders import highly_variable_genes
from evaluation.errors import MissingObsColumnError, NoControlsError
from evaluation.postprocess import center_on_controls, centerscale_on_controls, postprocess, tvn_on_controls
from evaluation.relationships import load_corum_complexes, load_relationships


def _batched(rng, n_per_batch=60, n_batches=3, dim=6, shift_batch=None, shift=5.0):
    emb = rng.normal(size=(n_per_batch * n_batches, dim)).astype(np.float32)
    batches = np.repeat([f"b{i}" for i in range(n_batches)], n_per_batch)
    is_control = np.tile(np.arange(n_per_batch) < n_per_batch // 2, n_batches)
    shifted = emb.copy()
    if shift_batch is not None:
        shifted[batches == shift_batch] += shift
    return emb, shifted, batches, is_control


# ---------------------------------------------------------------- post-processing


@pytest.mark.parametrize("method", ["center", "centerscale", "tvn"])
def test_shift_confined_to_one_batch_is_removed(method):
    emb, shifted, batches, is_control = _batched(np.random.default_rng(0), shift_batch="b1")
    np.testing.assert_allclose(postprocess(shifted, method, is_control, batches), postprocess(emb, method, is_control, batches), atol=1e-4)


def test_centerscale_makes_controls_standard_per_batch():
    _, shifted, batches, is_control = _batched(np.random.default_rng(1), shift_batch="b2")
    out = centerscale_on_controls(shifted * 3, is_control, batches)
    for b in np.unique(batches):
        ctrl = out[(batches == b) & is_control]
        np.testing.assert_allclose(ctrl.mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(ctrl.std(axis=0), 1, atol=1e-4)


def test_center_hand_computed():
    emb = np.array([[1.0, 2.0], [3.0, 6.0], [10.0, 0.0], [20.0, 0.0]])
    out = center_on_controls(emb, np.array([True, False, True, False]), np.array(["a", "a", "b", "b"]))
    np.testing.assert_allclose(out, [[0, 0], [2, 4], [0, 0], [10, 0]])


def test_tvn_whitens_controls_to_known_covariance():
    """After TVN the control covariance in each batch is C·(C + 0.5 I)^-1 with C the standardised covariance: all eigenvalues < 1."""
    _, shifted, batches, is_control = _batched(np.random.default_rng(2), n_per_batch=200, shift_batch="b0")
    out = tvn_on_controls(shifted, is_control, batches)
    for b in np.unique(batches):
        cov = np.cov(out[(batches == b) & is_control], rowvar=False)
        eig = np.linalg.eigvalsh(cov)
        assert eig.max() < 1.0 and eig.min() > 0


def test_batch_without_controls_is_a_clear_error():
    with pytest.raises(NoControlsError, match="'b'"):
        center_on_controls(np.zeros((4, 2)), np.array([True, False, False, False]), np.array(["a", "a", "b", "b"]))


# ---------------------------------------------------------------- ilisi


def test_ilisi_zero_for_separated_batches_and_high_for_mixed():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 4))
    batches = np.repeat(["a", "b", "c"], 100)
    separated = emb + np.repeat(np.eye(4)[:3] * 100, 100, axis=0)
    assert M.ilisi(separated, batches) == pytest.approx(0.0, abs=1e-6)
    assert M.ilisi(emb, batches) > 0.85


def test_lisi_hand_computed_equal_distances():
    """With all neighbours equidistant the kernel is uniform: LISI = 1 / Σ p_label² over neighbour labels."""
    emb = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    labels = np.array(["x", "x", "y", "y", "y"])
    score = M.lisi_scores(emb, labels, perplexity=1, query=np.array([0]))[0]
    # 3 neighbours found (3·perplexity) among 4 equidistant ones; ties resolved by the index order
    assert 1.0 <= score <= 2.0


# ---------------------------------------------------------------- knn and linear probe


def test_knn_hand_computed():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array(["A", "A", "B"])
    out = M.knn_retrieval(train, labels, np.array([[1.0, 0.05], [0.1, 1.0]]), np.array(["A", "B"]), k=1)
    assert out == {"top1": 1.0, "top5": 1.0}
    wrong = M.knn_retrieval(train, labels, np.array([[1.0, 0.0]]), np.array(["B"]), k=1)
    assert wrong["top1"] == 0.0 and wrong["top5"] == 1.0  # two classes only: top-5 contains B


def test_separable_labels_give_accuracy_one():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)) * 10
    y = np.repeat(np.arange(8), 20).astype(str)
    x = centres[y.astype(int)] + rng.normal(size=(160, 16))
    xt = centres[y.astype(int)] + rng.normal(size=(160, 16))
    assert M.linear_probe(x, y, xt, y, epochs=30)["top1"] == 1.0
    assert M.knn_retrieval(x, y, xt, y)["top1"] == 1.0
    assert M.probe_scores(x, y, xt, y, "linear")["accuracy"] == 1.0
    assert M.probe_scores(x, y, xt, y, "mlp")["macro_f1"] == 1.0


def test_topk_accuracy_hand_computed():
    scores = np.array([[0.2, 0.8, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    assert M.topk_accuracy(scores, np.array([1, 1, 0]), 1) == pytest.approx(1 / 3)
    assert M.topk_accuracy(scores, np.array([1, 1, 0]), 2) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- p.cst


def test_leave_one_out_cosine_hand_computed():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(7, 3))
    groups = np.array(["a", "a", "a", "b", "b", "b", "c"])
    loo = M.leave_one_out_cosines(emb, groups)
    for i in range(6):
        others = [j for j in range(6) if groups[j] == groups[i] and j != i]
        mean = emb[others].mean(axis=0)
        expected = emb[i] @ mean / np.linalg.norm(emb[i]) / np.linalg.norm(mean)
        assert loo[i] == pytest.approx(expected, abs=1e-6)
    assert np.isnan(loo[6])  # singleton group


def test_consistency_planted_vs_noise():
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(20, 32))
    labels = np.repeat([f"g{i}" for i in range(20)], 15)
    planted = directions[np.repeat(np.arange(20), 15)] + 0.5 * rng.normal(size=(300, 32))
    assert M.perturbation_consistency(planted, labels, n_null=2000)["fraction_consistent"] == 1.0
    noise = rng.normal(size=(300, 32))
    assert M.perturbation_consistency(noise, labels, n_null=2000)["fraction_consistent"] <= 0.15


def test_consistency_pvalue_hand_computed():
    """Two tight groups pointing in opposite directions: the null (other group's cells) never beats the statistic."""
    emb = np.array([[1.0, 0.01], [1.0, -0.01], [1.0, 0.0], [-1.0, 0.01], [-1.0, -0.01], [-1.0, 0.0]])
    out = M.perturbation_consistency(emb, np.array(["a"] * 3 + ["b"] * 3), n_null=6)
    assert out["pvalues"] == pytest.approx([1 / 4, 1 / 4])  # (1 + 0) / (1 + 3 other-group cells)


# ---------------------------------------------------------------- bmdb recall


def test_recall_hand_computed():
    vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [-1.0, 0.05]])
    names = ["A", "B", "C", "D"]
    # pair cosines: AB highest, AD lowest; the 6 pairs' ranks decide recall at threshold 1/6
    out = M.relationship_recall(vectors, names, {"db": [("A", "B"), ("B", "A"), ("A", "C"), ("A", "A"), ("A", "Z")]}, threshold=1 / 6)
    assert out["n_relationships"]["db"] == 2  # AB (deduplicated), AC; self and absent genes dropped
    assert out["recall"]["db"] == pytest.approx(0.5)  # AB is the top pair, AC is mid-ranked
    assert out["n_null_pairs"] == 6


def test_planted_complexes_give_high_recall_and_shuffled_chance(gene_relationships_dir):
    rng = np.random.default_rng(0)
    complexes = load_corum_complexes(gene_relationships_dir)
    chosen, used = [], set()
    for members in complexes.values():
        if 4 <= len(members) <= 8 and used.isdisjoint(members):
            chosen.append(members)
            used.update(members)
        if len(chosen) == 40:
            break
    names = [g for members in chosen for g in members]
    centres = rng.normal(size=(len(chosen), 64))
    vectors = np.concatenate([centres[i] + 0.3 * rng.normal(size=(len(m), 64)) for i, m in enumerate(chosen)])
    relationships = {"CORUM": load_relationships(gene_relationships_dir, ["CORUM"])["CORUM"]}
    planted = M.relationship_recall(vectors, names, relationships)
    assert planted["recall"]["CORUM"] > 0.5
    chance = [M.relationship_recall(vectors[rng.permutation(len(names))], names, relationships)["recall"]["CORUM"] for _ in range(3)]
    assert abs(np.mean(chance) - 0.10) < 0.05  # top + bottom 5 % = 10 % by chance


def test_sampled_null_matches_exact_percentiles():
    rng = np.random.default_rng(0)
    unit = M.l2_normalize(rng.normal(size=(300, 8)))
    exact = M.pair_null_similarities(unit)
    sampled = M.pair_null_similarities(unit, max_pairs=20_000)
    assert exact.size == 300 * 299 // 2
    for q in (0.05, 0.5, 0.95):
        assert np.quantile(sampled, q) == pytest.approx(np.quantile(exact, q), abs=0.03)


# ---------------------------------------------------------------- inv


def test_structural_integrity_known_values():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(40, 10))
    batches = np.repeat(["a", "b"], 20)
    is_control = np.tile(np.arange(20) < 5, 2)
    assert M.structural_integrity(target, target, batches, is_control) == pytest.approx(1.0)
    control_means = np.vstack([np.tile(target[(batches == b) & is_control].mean(axis=0), (20, 1)) for b in ("a", "b")])
    assert M.structural_integrity(control_means, target, batches, is_control) == pytest.approx(0.5)


def test_spearman_per_gene_hand_computed():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    expected = np.mean([spearmanr(pred[:, j], target[:, j])[0] for j in range(4)])
    assert M.mean_spearman_per_gene(pred, target) == pytest.approx(expected)
    assert M.mean_spearman_per_gene(target, np.exp(target)) == pytest.approx(1.0)


def test_invertibility_perfect_linear_code():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 6))
    expr = emb @ rng.normal(size=(6, 12))
    batches = np.repeat(["a", "b"], 100)
    is_control = np.tile(np.arange(100) < 20, 2)
    out = M.invertibility(emb[:100], expr[:100], emb[100:], expr[100:], batches[100:], is_control[100:], alpha=1e-6)
    assert out["spearman"] == pytest.approx(1.0, abs=1e-6) and out["integrity"] == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------- cell-type metrics


def test_clustering_of_separated_types_is_perfect_and_batch_asw_rules():
    rng = np.random.default_rng(0)
    labels = np.repeat(["t0", "t1", "t2"], 40)
    emb = np.repeat(np.eye(3) * 20, 40, axis=0) + rng.normal(size=(120, 3))
    scores = M.louvain_scores(emb, labels, resolutions=(0.5, 1.0))
    assert scores["nmi"] == pytest.approx(1.0) and scores["ari"] == pytest.approx(1.0)
    assert M.silhouette_asw(emb, labels) > 0.9
    assert M.batch_asw(emb, labels, np.zeros(120)) is None  # one batch: undefined, not a fake number
    mixed = np.tile(["x", "y"], 60)
    assert M.batch_asw(emb, labels, mixed) > 0.8  # batches mixed within each type
    split_by_batch = emb + np.c_[np.zeros((120, 2)), np.where(mixed == "y", 8.0, 0.0)]
    assert M.batch_asw(split_by_batch, labels, mixed) < 0.5


def test_silhouette_hand_computed():
    emb = np.array([[0.0], [1.0], [10.0], [11.0]])
    # a = 1, b = mean distance to the other cluster: cell0 → 10.5, cell1 → 9.5 → s = 1 - a/b
    s = np.mean([1 - 1 / 10.5, 1 - 1 / 9.5, 1 - 1 / 9.5, 1 - 1 / 10.5])
    assert M.silhouette_asw(emb, ["a", "a", "b", "b"]) == pytest.approx((s + 1) / 2)


# ---------------------------------------------------------------- helpers


def test_lognormalize_hand_computed():
    out = M.lognormalize(np.array([[1.0, 3.0], [0.0, 0.0]]), target_sum=4)
    np.testing.assert_allclose(out, [[np.log(2), np.log(4)], [0, 0]], rtol=1e-6)


def test_hvg_finds_planted_overdispersed_gene():
    import anndata as ad

    rng = np.random.default_rng(0)
    counts = rng.poisson(5.0, size=(400, 50)).astype(np.float32)
    counts[:, 7] = rng.choice([0.0, 60.0], size=400)  # same mean, huge dispersion
    assert 7 in highly_variable_genes(ad.AnnData(counts), n_top=3)


def test_missing_obs_column_names_it():
    import anndata as ad

    from evaluation.celltype import require_obs

    with pytest.raises(MissingObsColumnError, match="'cell_type'"):
        require_obs(ad.AnnData(np.zeros((2, 2))), "cell_type", "label")
