"""The paper's perturbation consistency test (TXFM_SPEC §3 p.cst)."""

import datasets
import evaluate
import numpy as np

from evaluation import metrics

_DESCRIPTION = (
    "Fraction of perturbations whose mean leave-one-out cosine to their mean embedding beats a null of "
    "n_null random cells from other perturbations at p < alpha."
)
_KWARGS = """
Args:
    predictions: embeddings (already PCA'd on controls and standardised per batch, as the benchmark does).
    references: perturbation label of each cell (controls excluded by the caller).
    n_null (int, default 10000), alpha (float, default 0.01), seed (int, default 0).
Returns:
    {"fraction_consistent": float, "n_perturbations": int, "n_skipped": int}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TxfmPerturbationConsistency(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Kenyon-Dean et al. (TxFM); Celik et al. 2024 (EFAAR)",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, n_null=10000, alpha=0.01, seed=0):
        out = metrics.perturbation_consistency(np.asarray(predictions, dtype=np.float32), references, n_null=n_null, alpha=alpha, seed=seed)
        return {k: out[k] for k in ("fraction_consistent", "n_perturbations", "n_skipped")}
