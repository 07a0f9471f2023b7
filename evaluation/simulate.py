"""A Perturb-seq-like count simulator whose answers are known by construction.

Cells are non-targeting controls or knock-downs of genes drawn from *real* CORUM complexes. All
members of a complex share one transcriptional programme (plus a small gene-specific part and the
knock-down of the gene itself), so a good embedding must place same-complex perturbations together
(high bmdb recall on CORUM) and make the cells of a perturbation consistent (p.cst). Each batch
multiplies every gene by its own factor and shifts library sizes, so per-batch centring on controls
is needed for batches to mix (ilisi) and for retrieval across batches (knn, lin).
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .relationships import load_corum_complexes

CONTROL_LABEL = "non-targeting"


def _pick_complexes(complexes: dict[str, list[str]], n: int, sizes: tuple[int, int], rng: np.random.Generator) -> dict[str, list[str]]:
    """``n`` CORUM complexes with ``sizes[0] ≤ size ≤ sizes[1]`` and no shared genes."""
    names = [k for k, v in complexes.items() if sizes[0] <= len(v) <= sizes[1]]
    chosen, used = {}, set()
    for name in rng.permutation(names):
        members = complexes[name]
        if used.isdisjoint(members):
            chosen[name] = members
            used.update(members)
        if len(chosen) == n:
            break
    return chosen


def simulate_perturb_seq(
    n_cells: int = 3000,
    n_genes: int = 800,
    n_batches: int = 4,
    n_complexes: int = 12,
    complex_sizes: tuple[int, int] = (3, 6),
    n_singletons: int = 6,
    control_fraction: float = 0.2,
    effect_size: float = 0.8,
    program_fraction: float = 0.1,
    batch_effect: float = 0.4,
    library_size: float = 4000.0,
    dispersion: float = 10.0,
    seed: int = 0,
    relationships_dir: str | None = None,
) -> ad.AnnData:
    """Simulate raw counts with obs ``perturbation``, ``is_control``, ``batch`` and ``complex``.

    The perturbed genes are the members of ``n_complexes`` disjoint CORUM complexes plus
    ``n_singletons`` genes with programmes of their own; the remaining genes up to ``n_genes`` are
    other CORUM genes (never perturbed), then synthetic ``SIMGENE<i>`` names. Counts are negative binomial (gamma–Poisson, shape
    ``dispersion``) around ``library · softmax(base + batch + effect)``. ``uns["simulation"]`` records
    the parameters and the complexes.
    """
    rng = np.random.default_rng(seed)
    complexes = load_corum_complexes(relationships_dir)
    chosen = _pick_complexes(complexes, n_complexes + n_singletons, complex_sizes, rng)
    names = list(chosen)
    grouped = {name: chosen[name] for name in names[:n_complexes]}
    singletons = [chosen[name][0] for name in names[n_complexes:]]
    perturbed = [g for members in grouped.values() for g in members] + singletons
    pool = sorted({g for members in complexes.values() for g in members} - set(perturbed))
    n_fill = max(0, n_genes - len(perturbed))
    fillers = list(rng.choice(pool, size=min(n_fill, len(pool)), replace=False))
    fillers += [f"SIMGENE{i}" for i in range(n_fill - len(fillers))]  # beyond CORUM's ~3,500 genes
    genes = perturbed + fillers
    gene_index = {g: i for i, g in enumerate(genes)}

    base = rng.normal(0.0, 1.0, len(genes))
    support = lambda: rng.random(len(genes)) < program_fraction  # noqa: E731 - tiny local helper
    effects = {}
    for members in grouped.values():
        programme = np.where(support(), rng.normal(0.0, effect_size, len(genes)), 0.0)
        for gene in members:
            own = np.where(support(), rng.normal(0.0, 0.15 * effect_size, len(genes)), 0.0)
            effects[gene] = programme * rng.uniform(0.8, 1.2) + own
    for gene in singletons:
        effects[gene] = np.where(support(), rng.normal(0.0, effect_size, len(genes)), 0.0)
    for gene, effect in effects.items():
        effect[gene_index[gene]] -= 2.0  # the knock-down itself

    labels = np.array([CONTROL_LABEL] + perturbed)
    probabilities = np.r_[control_fraction, np.full(len(perturbed), (1 - control_fraction) / len(perturbed))]
    cell_labels = rng.choice(labels, size=n_cells, p=probabilities)
    cell_batches = rng.integers(0, n_batches, size=n_cells)
    batch_shift = rng.normal(0.0, batch_effect, (n_batches, len(genes)))
    batch_depth = np.exp(rng.normal(0.0, batch_effect / 2, n_batches))

    rows = []
    for i in range(n_cells):
        logits = base + batch_shift[cell_batches[i]] + (effects[cell_labels[i]] if cell_labels[i] != CONTROL_LABEL else 0.0)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        depth = library_size * batch_depth[cell_batches[i]] * np.exp(rng.normal(0.0, 0.3))
        rate = rng.gamma(dispersion, depth * p / dispersion)
        rows.append(sparse.csr_matrix(rng.poisson(rate).astype(np.float32)))
    counts = sparse.vstack(rows).tocsr()

    member_of = {g: name for name, members in grouped.items() for g in members}
    obs = pd.DataFrame(
        {
            "perturbation": cell_labels,
            "is_control": cell_labels == CONTROL_LABEL,
            "batch": [f"batch{b}" for b in cell_batches],
            "complex": [member_of.get(label, "") for label in cell_labels],
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=genes))
    adata.uns["simulation"] = json.dumps(
        {"seed": seed, "complexes": grouped, "singletons": singletons, "effect_size": effect_size, "batch_effect": batch_effect}
    )
    return adata
