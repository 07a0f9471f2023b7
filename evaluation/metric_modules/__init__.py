"""The suite's metrics as Hugging Face ``evaluate`` modules, loaded from these local files only.

Each sub-folder ``<name>/<name>.py`` defines an ``evaluate.Metric`` that delegates to
:mod:`evaluation.metrics` (one implementation, two entry points). Load with
``evaluate.load(str(module_path("txfm_ilisi")))`` or :func:`load`; nothing is fetched from the Hub.
"""

from __future__ import annotations

from pathlib import Path

MODULES = (
    "txfm_ilisi",
    "txfm_knn_retrieval",
    "txfm_linear_probe",
    "txfm_perturbation_consistency",
    "txfm_relationship_recall",
    "txfm_invertibility",
    "txfm_clustering",
)


def module_path(name: str) -> Path:
    """Folder of one metric module (what ``evaluate.load`` takes)."""
    if name not in MODULES:
        raise ValueError(f"Unknown metric module {name!r}; available: {', '.join(MODULES)}")
    return Path(__file__).parent / name


def load(name: str, **kwargs):
    """``evaluate.load`` on the local module folder (never a Hub lookup)."""
    import evaluate

    return evaluate.load(str(module_path(name)), **kwargs)
