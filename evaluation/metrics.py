"""The metrics of TXFM_SPEC §3, implemented once, in numpy (plus torch for the linear probe).

Every function takes plain arrays (embeddings ``[n, d]``, labels ``[n]``) and never builds an
``n_cells × n_cells`` matrix: neighbour searches and similarity scans run in chunks, so the
perturbation benchmark stays in bounded memory on 100,000-cell files. The ``evaluate`` modules in
``evaluation/metric_modules`` and the benchmarks both call these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import sparse

from .errors import EvaluationError

# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------

DEFAULT_TARGET_SUM = 1e4


def lognormalize(counts, target_sum: float = DEFAULT_TARGET_SUM) -> np.ndarray:
    """Library-size normalise each row to ``target_sum`` then ``log1p`` (dense float32 result).

    Rows with zero counts stay zero rather than becoming NaN.
    """
    if sparse.issparse(counts):
        counts = counts.tocsr().astype(np.float32)
        totals = np.asarray(counts.sum(axis=1)).ravel()
        scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        scaled = sparse.diags(scale.astype(np.float32)) @ counts
        return np.log1p(scaled.toarray()).astype(np.float32)
    counts = np.asarray(counts, dtype=np.float32)
    totals = counts.sum(axis=1, keepdims=True)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(counts * scale).astype(np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise unit vectors (zero rows stay zero): cosine similarity becomes a dot product."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def topk_accuracy(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of rows whose target column is among the ``k`` highest scores (ties broken by order)."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(targets)[:, None], axis=1)))


def _encode(labels: Sequence, classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes for labels; unknown labels (absent from ``classes``) get -1."""
    labels = np.asarray(labels).astype(str)
    if classes is None:
        classes = np.unique(labels)
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(v, -1) for v in labels], dtype=np.int64), classes


# --------------------------------------------------------------------------------------------
# ilisi: batch mixing
# --------------------------------------------------------------------------------------------


def _simpson_from_distances(distances: np.ndarray, neighbour_labels: np.ndarray, n_labels: int, perplexity: float) -> np.ndarray:
    """Per-row Simpson index of neighbour labels under a Gaussian kernel calibrated to ``perplexity``.

    Same binary search on the kernel precision β as Harmony's ``compute_simpson`` (target entropy
    ``log(perplexity)``, tolerance 1e-5, 50 steps), vectorised over rows.
    """
    n = distances.shape[0]
    beta = np.ones(n)
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    target = np.log(perplexity)
    d = distances - distances[:, :1]  # shifting by the nearest distance keeps exp() finite; P unchanged
    for _ in range(50):
        weights = np.exp(-d * beta[:, None])
        total = weights.sum(axis=1)
        probs = weights / total[:, None]
        entropy = np.log(total) + beta * (d * probs).sum(axis=1)
        diff = entropy - target
        if np.all(np.abs(diff) < 1e-5):
            break
        active = np.abs(diff) >= 1e-5  # converged rows keep their β
        up = active & (diff > 0)
        down = active & (diff <= 0)
        lo = np.where(up, beta, lo)
        hi = np.where(down, beta, hi)
        raised = np.where(np.isfinite(hi), (beta + hi) / 2, beta * 2)
        lowered = np.where(np.isfinite(lo), (beta + lo) / 2, beta / 2)
        beta = np.where(up, raised, np.where(down, lowered, beta))
    simpson = np.zeros(n)
    for label in range(n_labels):
        simpson += probs.sum(axis=1, where=neighbour_labels == label) ** 2
    return simpson


def lisi_scores(emb: np.ndarray, labels: Sequence, perplexity: int = 30, query: np.ndarray | None = None) -> np.ndarray:
    """Local inverse Simpson index of ``labels`` around each (query) cell, ``3·perplexity`` neighbours.

    Ranges from 1 (all neighbours share one label) to the number of labels (perfect mixing).
    """
    from sklearn.neighbors import NearestNeighbors

    emb = np.asarray(emb, dtype=np.float32)
    codes, classes = _encode(labels)
    n_neighbors = min(3 * perplexity + 1, emb.shape[0])
    query_idx = np.arange(emb.shape[0]) if query is None else np.asarray(query)
    index = NearestNeighbors(n_neighbors=n_neighbors).fit(emb)
    out = np.empty(query_idx.size)
    for start in range(0, query_idx.size, 2048):
        rows = query_idx[start : start + 2048]
        dist, nbr = index.kneighbors(emb[rows])
        dist, nbr = dist[:, 1:], nbr[:, 1:]  # drop the cell itself
        out[start : start + rows.size] = 1.0 / _simpson_from_distances(dist, codes[nbr], len(classes), min(perplexity, dist.shape[1] / 3))
    return out


def ilisi(emb: np.ndarray, batches: Sequence, perplexity: int = 30, max_cells: int = 20_000, seed: int = 0) -> float:
    """Integration LISI, rescaled to [0, 1]: ``(LISI − 1)/(n_batches − 1)``, averaged per batch then over batches.

    0 means batches do not mix at all, 1 perfect mixing. Large files are scored on a random subset
    of ``max_cells`` cells (the neighbourhoods are searched in that subset) to bound time.
    """
    batches = np.asarray(batches).astype(str)
    n_batches = len(np.unique(batches))
    if n_batches < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    keep = np.arange(len(batches)) if len(batches) <= max_cells else np.sort(rng.choice(len(batches), max_cells, replace=False))
    scores = lisi_scores(np.asarray(emb)[keep], batches[keep], perplexity=perplexity)
    scaled = (scores - 1.0) / (n_batches - 1.0)
    sub = batches[keep]
    return float(np.mean([scaled[sub == b].mean() for b in np.unique(sub)]))


# --------------------------------------------------------------------------------------------
# knn and linear probe: perturbation retrieval / prediction on unseen batches
# --------------------------------------------------------------------------------------------


def knn_retrieval(
    train_emb: np.ndarray,
    train_labels: Sequence,
    test_emb: np.ndarray,
    test_labels: Sequence,
    k: int = 20,
    temperature: float = 0.07,
    topk: Sequence[int] = (1, 5),
    max_block: int = 5_000_000,
) -> dict[str, float]:
    """Weighted cosine kNN classifier (k = 20, T = 0.07, as in the benchmark): top-k accuracy.

    Each query's class scores are the sum over its k nearest training cells of ``exp(cos/T)``.
    Queries run in chunks so the similarity block never exceeds ``max_block`` entries.
    """
    train_codes, classes = _encode(train_labels)
    test_codes, _ = _encode(test_labels, classes)
    train = l2_normalize(train_emb)
    test = l2_normalize(test_emb)
    k = min(k, train.shape[0])
    chunk = max(1, max_block // max(1, train.shape[0]))
    hits = {t: 0 for t in topk}
    for start in range(0, test.shape[0], chunk):
        sims = test[start : start + chunk] @ train.T
        nbr = np.argpartition(-sims, kth=k - 1, axis=1)[:, :k]
        weights = np.exp(np.take_along_axis(sims, nbr, axis=1) / temperature)
        scores = np.zeros((sims.shape[0], len(classes)))
        np.add.at(scores, (np.repeat(np.arange(sims.shape[0]), k), train_codes[nbr].ravel()), weights.ravel())
        targets = test_codes[start : start + chunk]
        for t in topk:
            hits[t] += topk_accuracy(scores, targets, t) * sims.shape[0]
    return {f"top{t}": hits[t] / test.shape[0] for t in topk}


def linear_probe(
    train_emb: np.ndarray,
    train_labels: Sequence,
    test_emb: np.ndarray,
    test_labels: Sequence,
    topk: Sequence[int] = (1, 5),
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 512,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    min_steps: int = 150,
) -> dict[str, float]:
    """Softmax regression trained with Adam (torch, minibatches): top-k accuracy on the test cells.

    Features are standardised with training statistics. torch rather than scikit-learn because the
    benchmark has thousands of classes and tens of thousands of cells: LBFGS over that is too slow
    on two cores, minibatch Adam is linear in the data. Small training sets get at least
    ``min_steps`` updates.
    """
    import torch

    train_codes, classes = _encode(train_labels)
    test_codes, _ = _encode(test_labels, classes)
    mean = train_emb.mean(axis=0)
    std = train_emb.std(axis=0)
    std[std < 1e-8] = 1.0
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.from_numpy(((train_emb - mean) / std).astype(np.float32))
    y = torch.from_numpy(train_codes)
    model = torch.nn.Linear(x.shape[1], len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-x.shape[0] // batch_size)
    for _ in range(max(epochs, -(-min_steps // steps_per_epoch))):  # small sets still get min_steps updates
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            rows = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        scores = model(torch.from_numpy(((test_emb - mean) / std).astype(np.float32))).numpy()
    return {f"top{t}": topk_accuracy(scores, test_codes, t) for t in topk}


# --------------------------------------------------------------------------------------------
# p.cst: perturbation consistency
# --------------------------------------------------------------------------------------------


def leave_one_out_cosines(emb: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Cosine of each cell to the mean of the *other* cells of its group (NaN for singleton groups).

    Uses group sums: with ``S`` the group sum, the leave-one-out mean direction is ``S − x``, and
    ``|S − x|² = |S|² − 2·x·S + |x|²``, so everything is one pass over the cells.
    """
    emb = np.asarray(emb, dtype=np.float64)
    codes, _ = _encode(groups)
    n_groups = codes.max() + 1
    sums = np.zeros((n_groups, emb.shape[1]))
    np.add.at(sums, codes, emb)
    sizes = np.bincount(codes, minlength=n_groups)
    own = sums[codes]
    dot = np.einsum("ij,ij->i", emb, own)
    sq = np.einsum("ij,ij->i", emb, emb)
    rest_sq = np.einsum("ij,ij->i", own, own) - 2 * dot + sq
    denom = np.sqrt(np.clip(sq, 0, None) * np.clip(rest_sq, 0, None))
    cos = np.divide(dot - sq, denom, out=np.full(len(codes), np.nan), where=denom > 1e-12)
    cos[sizes[codes] < 2] = np.nan
    return np.clip(cos, -1, 1)


def perturbation_consistency(
    emb: np.ndarray,
    perturbations: Sequence,
    n_null: int = 10_000,
    alpha: float = 0.01,
    seed: int = 0,
    null_pool: np.ndarray | None = None,
) -> dict:
    """The paper's consistency test: fraction of perturbations whose cells agree beyond chance.

    For perturbation ``p`` with cells ``X_p`` the statistic is the mean leave-one-out cosine of its
    cells to their perturbation mean. The null is the cosine of ``n_null`` random cells, drawn from
    ``null_pool`` (default: all cells) excluding ``p``'s own cells, to ``p``'s mean embedding. The
    one-sided p-value is ``(1 + #{null ≥ stat}) / (1 + n_null_used)``; ``p < alpha`` is consistent.
    Perturbations with fewer than two cells are skipped and counted in ``n_skipped``.
    """
    emb = np.asarray(emb, dtype=np.float32)
    perturbations = np.asarray(perturbations).astype(str)
    codes, names = _encode(perturbations)
    loo = leave_one_out_cosines(emb, perturbations)
    sizes = np.bincount(codes, minlength=len(names))
    stats = np.array([np.nanmean(loo[codes == i]) if sizes[i] >= 2 else np.nan for i in range(len(names))])
    rng = np.random.default_rng(seed)
    pool = np.arange(len(perturbations)) if null_pool is None else np.flatnonzero(null_pool)
    draw = rng.choice(pool, size=min(n_null, pool.size), replace=False)
    unit_null = l2_normalize(emb[draw])
    null_codes = codes[draw]
    means = np.zeros((len(names), emb.shape[1]), dtype=np.float64)
    np.add.at(means, codes, emb)
    unit_means = l2_normalize(means)
    pvalues = np.full(len(names), np.nan)
    for start in range(0, len(names), 512):
        block = unit_null @ unit_means[start : start + 512].T  # [n_null, block]
        own = null_codes[:, None] == np.arange(start, start + block.shape[1])[None, :]
        above = ((block >= stats[None, start : start + 512]) & ~own).sum(axis=0)
        used = (~own).sum(axis=0)
        pvalues[start : start + 512] = (1 + above) / (1 + used)
    valid = ~np.isnan(stats)
    return {
        "fraction_consistent": float(np.mean(pvalues[valid] < alpha)) if valid.any() else float("nan"),
        "n_perturbations": int(valid.sum()),
        "n_skipped": int((~valid).sum()),
        "perturbations": names[valid].tolist(),
        "statistics": stats[valid].tolist(),
        "pvalues": pvalues[valid].tolist(),
    }


# --------------------------------------------------------------------------------------------
# bmdb: known-relationship recall
# --------------------------------------------------------------------------------------------

DEFAULT_PERCENTILES = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def pair_null_similarities(unit: np.ndarray, max_pairs: int = 20_000_000, seed: int = 0) -> np.ndarray:
    """Cosine similarities of all gene pairs (upper triangle, no self-pairs), sorted.

    Exact when ``n(n−1)/2 ≤ max_pairs`` (computed in row blocks); otherwise ``max_pairs`` pairs drawn
    uniformly at random (``i ≠ j``), which estimates the same percentiles without the n² memory.
    """
    n = unit.shape[0]
    total = n * (n - 1) // 2
    if total == 0:
        raise EvaluationError("Relationship recall needs at least two genes/perturbations.")
    if total <= max_pairs:
        parts = []
        for start in range(0, n, 1024):
            block = unit[start : start + 1024] @ unit.T
            rows, cols = np.triu_indices(block.shape[0], k=1, m=n - start)
            parts.append(block[rows, cols + start])
        null = np.concatenate(parts)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, size=max_pairs)
        j = rng.integers(0, n - 1, size=max_pairs)
        j = j + (j >= i)  # uniform over j ≠ i
        null = np.empty(max_pairs, dtype=np.float32)
        for start in range(0, max_pairs, 1_000_000):
            sl = slice(start, start + 1_000_000)
            null[sl] = np.einsum("ij,ij->i", unit[i[sl]], unit[j[sl]])
    return np.sort(null.astype(np.float32))


def percentile_ranks(sorted_null: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left and right percentile ranks of ``values`` in the sorted null (ties handled like the benchmark)."""
    left = np.searchsorted(sorted_null, values, side="left") / len(sorted_null)
    right = np.searchsorted(sorted_null, values, side="right") / len(sorted_null)
    return left, right


def recall_at(left: np.ndarray, right: np.ndarray, lower: float) -> float:
    """Fraction of relationships in the bottom ``lower`` or top ``lower`` tail of the null."""
    if left.size == 0:
        return float("nan")
    return float(np.mean((right <= lower) | (left >= 1 - lower)))


def relationship_recall(
    vectors: np.ndarray,
    names: Sequence[str],
    relationships: Mapping[str, Iterable[tuple[str, str]]],
    threshold: float = 0.05,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    max_null_pairs: int = 20_000_000,
    seed: int = 0,
) -> dict:
    """bmdb: recall of known gene–gene relationships among the most (dis)similar pairs.

    ``vectors[i]`` represents gene ``names[i]`` (a per-perturbation mean embedding or a gene
    parameter vector). A relationship is recalled when the cosine of its two genes falls in the top
    or bottom ``threshold`` of the similarities of *all* gene pairs. Only relationships whose both
    genes are present (and distinct) count. Returns per-database recall, the mean over databases,
    the number of relationships scored, and the recall curve over ``percentiles``.
    """
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise EvaluationError("Relationship recall needs one vector per gene; the gene names contain duplicates.")
    index = {n: i for i, n in enumerate(names)}
    unit = l2_normalize(vectors)
    null = pair_null_similarities(unit, max_pairs=max_null_pairs, seed=seed)
    per_db, counts, curves = {}, {}, {}
    for db, pairs in relationships.items():
        kept = {tuple(sorted((index[a], index[b]))) for a, b in pairs if a in index and b in index and a != b}
        counts[db] = len(kept)
        if not kept:
            per_db[db] = float("nan")
            curves[db] = [float("nan")] * len(percentiles)
            continue
        ij = np.array(sorted(kept))
        sims = np.einsum("ij,ij->i", unit[ij[:, 0]], unit[ij[:, 1]])
        left, right = percentile_ranks(null, sims)
        per_db[db] = recall_at(left, right, threshold)
        curves[db] = [recall_at(left, right, p) for p in percentiles]
    scored = [v for v in per_db.values() if not np.isnan(v)]
    return {
        "recall": per_db,
        "mean_recall": float(np.mean(scored)) if scored else float("nan"),
        "n_relationships": counts,
        "n_genes": len(names),
        "n_null_pairs": int(null.size),
        "threshold": threshold,
        "percentiles": list(percentiles),
        "curve": curves,
    }


# --------------------------------------------------------------------------------------------
# inv: linear decoding back to expression
# --------------------------------------------------------------------------------------------


def mean_spearman_per_gene(pred: np.ndarray, target: np.ndarray) -> float:
    """Spearman correlation across cells for each gene (column), averaged over genes that vary."""
    from scipy.stats import rankdata

    rp = rankdata(pred, axis=0)
    rt = rankdata(target, axis=0)
    rp -= rp.mean(axis=0)
    rt -= rt.mean(axis=0)
    denom = np.sqrt((rp**2).sum(axis=0) * (rt**2).sum(axis=0))
    valid = denom > 1e-12
    if not valid.any():
        return float("nan")
    return float(np.mean((rp * rt).sum(axis=0)[valid] / denom[valid]))


def structural_integrity(pred: np.ndarray, target: np.ndarray, batches: Sequence, is_control: np.ndarray) -> float:
    """1 − (mean per-batch Frobenius distance)/(2 · mean per-batch target norm), after control-centring.

    In each batch both matrices are centred on that batch's control mean, so the score measures how
    well the *perturbation effects* are reconstructed, not the baseline expression. Per-batch
    distances are divided by the batch's cell count, as in the benchmark. 1 is perfect; predicting
    the control mean everywhere gives 0.5.
    """
    batches = np.asarray(batches).astype(str)
    is_control = np.asarray(is_control, dtype=bool)
    distances, norms = [], []
    for batch in np.unique(batches):
        rows = batches == batch
        ctrl = rows & is_control
        p = pred[rows] - (pred[ctrl].mean(axis=0) if ctrl.any() else 0)
        t = target[rows] - (target[ctrl].mean(axis=0) if ctrl.any() else 0)
        distances.append(np.linalg.norm(p - t) / rows.sum())
        norms.append(np.linalg.norm(t) / rows.sum())
    max_distance = 2 * np.mean(norms)
    return float(1 - np.mean(distances) / max_distance) if max_distance > 0 else float("nan")


def invertibility(
    train_emb: np.ndarray,
    train_expr: np.ndarray,
    test_emb: np.ndarray,
    test_expr: np.ndarray,
    test_batches: Sequence,
    test_is_control: np.ndarray,
    alpha: float = 1.0,
) -> dict[str, float]:
    """Ridge decoding of embeddings to log-normalised expression, scored on held-out batches.

    Returns the mean per-gene Spearman correlation, the structural integrity and their mean
    (``score``), which is the benchmark's inv.
    """
    from sklearn.linear_model import Ridge

    mean = train_emb.mean(axis=0)
    std = train_emb.std(axis=0)
    std[std < 1e-8] = 1.0
    model = Ridge(alpha=alpha).fit((train_emb - mean) / std, train_expr)
    pred = model.predict((test_emb - mean) / std).astype(np.float32)
    spearman = mean_spearman_per_gene(pred, test_expr)
    integrity = structural_integrity(pred, test_expr, test_batches, test_is_control)
    return {"spearman": spearman, "integrity": integrity, "score": float(np.nanmean([spearman, integrity]))}


# --------------------------------------------------------------------------------------------
# Cell-type metrics
# --------------------------------------------------------------------------------------------

DEFAULT_RESOLUTIONS = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


def knn_graph(emb: np.ndarray, n_neighbors: int = 15):
    """Undirected unweighted kNN graph (networkx) on Euclidean distances, queried in chunks."""
    import networkx as nx
    from sklearn.neighbors import NearestNeighbors

    emb = np.asarray(emb, dtype=np.float32)
    k = min(n_neighbors + 1, emb.shape[0])
    index = NearestNeighbors(n_neighbors=k).fit(emb)
    graph = nx.Graph()
    graph.add_nodes_from(range(emb.shape[0]))
    for start in range(0, emb.shape[0], 4096):
        _, nbr = index.kneighbors(emb[start : start + 4096])
        for offset, row in enumerate(nbr):
            i = start + offset
            graph.add_edges_from((i, int(j)) for j in row if j != i)
    return graph


def louvain_scores(
    emb: np.ndarray, labels: Sequence, resolutions: Sequence[float] = DEFAULT_RESOLUTIONS, n_neighbors: int = 15, seed: int = 0
) -> dict[str, float]:
    """Louvain clustering of the kNN graph at each resolution; the best NMI and best ARI over the sweep.

    Louvain (networkx) stands in for Leiden, which needs igraph; the sweep and the "best over
    resolutions" rule are those of the cell-type benchmark (Kedzierska et al. 2025, via scib).
    """
    import networkx as nx
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    graph = knn_graph(emb, n_neighbors)
    labels = np.asarray(labels).astype(str)
    best = {"nmi": -1.0, "ari": -1.0, "nmi_resolution": None, "ari_resolution": None}
    for resolution in resolutions:
        clusters = np.empty(len(labels), dtype=np.int64)
        for c, members in enumerate(nx.community.louvain_communities(graph, resolution=resolution, seed=seed)):
            clusters[list(members)] = c
        nmi = normalized_mutual_info_score(labels, clusters)
        ari = adjusted_rand_score(labels, clusters)
        if nmi > best["nmi"]:
            best["nmi"], best["nmi_resolution"] = float(nmi), resolution
        if ari > best["ari"]:
            best["ari"], best["ari_resolution"] = float(ari), resolution
    return best


def silhouette_asw(emb: np.ndarray, labels: Sequence) -> float:
    """Cell-type silhouette rescaled to [0, 1] as in scib: ``(silhouette + 1) / 2``."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels).astype(str)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float((silhouette_score(emb, labels) + 1) / 2)


def batch_asw(emb: np.ndarray, labels: Sequence, batches: Sequence) -> float | None:
    """scib batch ASW: within each cell type, ``1 − |silhouette on batch labels|``, averaged.

    Undefined (``None``) with a single batch — a fake number would reward a dataset, not a model.
    Cell types present in fewer than two batches are skipped.
    """
    from sklearn.metrics import silhouette_samples

    labels = np.asarray(labels).astype(str)
    batches = np.asarray(batches).astype(str)
    if len(np.unique(batches)) < 2:
        return None
    per_label = []
    for label in np.unique(labels):
        rows = labels == label
        n_batches = len(np.unique(batches[rows]))
        if n_batches < 2 or n_batches >= rows.sum():
            continue
        per_label.append(np.mean(1 - np.abs(silhouette_samples(emb[rows], batches[rows]))))
    return float(np.mean(per_label)) if per_label else None


def probe_scores(
    train_emb: np.ndarray, train_labels: Sequence, test_emb: np.ndarray, test_labels: Sequence, kind: str = "linear", seed: int = 0
) -> dict[str, float]:
    """Linear (logistic regression) or 2-layer MLP probe on standardised features: accuracy and macro F1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "linear":
        head = LogisticRegression(max_iter=1000, C=1.0)
    elif kind == "mlp":
        head = MLPClassifier(hidden_layer_sizes=(256,), max_iter=300, random_state=seed, early_stopping=False)
    else:
        raise EvaluationError(f"Unknown probe kind {kind!r}: use 'linear' or 'mlp'.")
    train_labels = np.asarray(train_labels).astype(str)
    test_labels = np.asarray(test_labels).astype(str)
    if len(np.unique(train_labels)) < 2:
        raise EvaluationError("A probe needs at least two classes in its training split.")
    model = make_pipeline(StandardScaler(), head).fit(train_emb, train_labels)
    predicted = model.predict(test_emb)
    return {
        "accuracy": float(accuracy_score(test_labels, predicted)),
        "macro_f1": float(f1_score(test_labels, predicted, average="macro", zero_division=0)),
    }
