"""Invertibility scores of decoded expression (TXFM_SPEC §3 inv)."""

import datasets
import evaluate
import numpy as np

from evaluation import metrics

_DESCRIPTION = "Mean per-gene Spearman correlation and structural integrity of predicted vs actual log-normalised expression."
_KWARGS = """
Args:
    predictions: decoded expression, one list per cell; references: actual expression, same shape.
    batches: batch of each cell; is_control: control flag of each cell (for per-batch control centring).
Returns:
    {"spearman": float, "integrity": float, "score": mean of both}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TxfmInvertibility(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Bendidi et al. 2024",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Sequence(datasets.Value("float32"))}),
        )

    def _compute(self, predictions, references, batches=None, is_control=None):
        pred = np.asarray(predictions, dtype=np.float32)
        target = np.asarray(references, dtype=np.float32)
        batches = np.zeros(len(pred), dtype=int) if batches is None else np.asarray(batches)
        is_control = np.zeros(len(pred), dtype=bool) if is_control is None else np.asarray(is_control, dtype=bool)
        spearman = metrics.mean_spearman_per_gene(pred, target)
        integrity = metrics.structural_integrity(pred, target, batches, is_control)
        return {"spearman": spearman, "integrity": integrity, "score": float(np.nanmean([spearman, integrity]))}
