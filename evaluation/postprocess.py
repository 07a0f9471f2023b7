"""Per-batch post-processing of embeddings on non-targeting controls (TXFM_SPEC §3).

Every perturbation dataset carries batch effects; the benchmark removes them with statistics of
the control cells *of the same batch* only, so that nothing about the perturbations leaks into the
correction. Three variants, as in the benchmark (Bendidi et al. 2024):

- ``center``: subtract the control mean of each batch;
- ``centerscale``: standardise each batch with its control mean and standard deviation;
- ``tvn`` (typical variation normalisation): center-scale on controls → PCA fitted on controls →
  center-scale again → whiten each batch by ``(Cov_controls + 0.5·I)^(-1/2)``.

TVN here center-scales *per batch* at both steps (the spec's wording); the public reference code
center-scales globally before the PCA and whitens per batch. Both remove a shift confined to one
batch; per batch is the stricter choice.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .errors import EvaluationError, NoControlsError

POSTPROCESSINGS = ("center", "centerscale", "tvn")
_EPS = 1e-8


def _batch_groups(batches: np.ndarray, is_control: np.ndarray) -> Iterator[tuple[object, np.ndarray, np.ndarray]]:
    """Yield (batch, all-cell indices, control indices); fail loudly on a batch without controls."""
    batches = np.asarray(batches)
    is_control = np.asarray(is_control, dtype=bool)
    for batch in np.unique(batches):
        members = np.flatnonzero(batches == batch)
        controls = members[is_control[members]]
        if controls.size == 0:
            raise NoControlsError(
                f"Batch {batch!r} has no control cells: per-batch post-processing needs controls in every "
                "batch. Drop that batch or check the control flag column."
            )
        yield batch, members, controls


def center_on_controls(emb: np.ndarray, is_control: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """Subtract each batch's control mean: removes additive batch shifts."""
    out = np.array(emb, dtype=np.float32, copy=True)
    for _, members, controls in _batch_groups(batches, is_control):
        out[members] -= emb[controls].mean(axis=0)
    return out


def centerscale_on_controls(emb: np.ndarray, is_control: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """Standardise each batch with its controls' mean and standard deviation (zero-variance dims → 1)."""
    out = np.array(emb, dtype=np.float32, copy=True)
    for _, members, controls in _batch_groups(batches, is_control):
        ctrl = emb[controls].astype(np.float64)
        scale = ctrl.std(axis=0)
        scale[scale < _EPS] = 1.0
        out[members] = ((emb[members] - ctrl.mean(axis=0)) / scale).astype(np.float32)
    return out


def _inverse_sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """``matrix^(-1/2)`` of a symmetric positive-definite matrix via its eigendecomposition."""
    values, vectors = np.linalg.eigh(matrix)
    values = np.clip(values, _EPS, None)
    return (vectors / np.sqrt(values)) @ vectors.T


def fit_control_pca(emb: np.ndarray, is_control: np.ndarray, n_components: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PCA basis (mean, components [k, d]) fitted on the control cells only."""
    ctrl = emb[np.asarray(is_control, dtype=bool)].astype(np.float64)
    if ctrl.shape[0] < 2:
        raise NoControlsError("PCA on controls needs at least two control cells.")
    mean = ctrl.mean(axis=0)
    _, _, vt = np.linalg.svd(ctrl - mean, full_matrices=False)
    k = vt.shape[0] if n_components is None else min(n_components, vt.shape[0])
    return mean, vt[:k]


def tvn_on_controls(emb: np.ndarray, is_control: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """Typical variation normalisation, per batch, on controls (see module docstring)."""
    out = centerscale_on_controls(emb, is_control, batches)
    mean, components = fit_control_pca(out, is_control)
    out = ((out - mean) @ components.T).astype(np.float32)
    out = centerscale_on_controls(out, is_control, batches)
    eye = np.eye(out.shape[1])
    for _, members, controls in _batch_groups(batches, is_control):
        ctrl = out[controls].astype(np.float64)
        cov = np.cov(ctrl, rowvar=False, ddof=1) if controls.size > 1 else np.zeros_like(eye)
        out[members] = (out[members] @ _inverse_sqrt_psd(np.atleast_2d(cov) + 0.5 * eye)).astype(np.float32)
    return out


def postprocess(emb: np.ndarray, method: str, is_control: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """Apply one named post-processing (``none``, ``center``, ``centerscale`` or ``tvn``)."""
    if method == "none":
        return np.asarray(emb, dtype=np.float32)
    functions = {"center": center_on_controls, "centerscale": centerscale_on_controls, "tvn": tvn_on_controls}
    if method not in functions:
        raise EvaluationError(f"Unknown post-processing {method!r}; choose from none, {', '.join(POSTPROCESSINGS)}.")
    return functions[method](emb, is_control, batches)


def pca_standardise_on_controls(
    emb: np.ndarray, is_control: np.ndarray, batches: np.ndarray, variance: float = 0.9
) -> np.ndarray:
    """The p.cst preprocessing: PCA fitted on controls, then per-batch standardisation on controls.

    Components are kept up to ``variance`` of the control variance explained and never more than
    the smallest per-batch control count minus one: standardising a component that a batch's
    controls barely span would blow its noise up to unit variance and drown the perturbation
    signal (the number of components is left open by the paper).
    """
    is_control = np.asarray(is_control, dtype=bool)
    ctrl = emb[is_control].astype(np.float64)
    mean = ctrl.mean(axis=0)
    _, singular, vt = np.linalg.svd(ctrl - mean, full_matrices=False)
    explained = np.cumsum(singular**2) / max(np.sum(singular**2), _EPS)
    k = int(np.searchsorted(explained, variance) + 1)
    smallest = min(int(is_control[np.asarray(batches) == b].sum()) for b in np.unique(batches))
    k = max(1, min(k, smallest - 1, vt.shape[0]))
    projected = ((emb - mean) @ vt[:k].T).astype(np.float32)
    return centerscale_on_controls(projected, is_control, batches)
