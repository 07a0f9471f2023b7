"""Integration LISI of batch labels, rescaled to [0, 1] (TXFM_SPEC §3 ilisi)."""

import datasets
import evaluate
import numpy as np

from evaluation import metrics

_DESCRIPTION = "Batch mixing: (LISI - 1)/(n_batches - 1) with perplexity 30, averaged per batch then over batches."
_KWARGS = """
Args:
    predictions: embeddings, one list of floats per cell.
    references: batch label of each cell.
    perplexity (int, default 30), max_cells (int, default 20000), seed (int, default 0).
Returns:
    {"ilisi": float in [0, 1]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TxfmIlisi(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Korsunsky et al. 2019 (Harmony LISI); Bendidi et al. 2024",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, perplexity=30, max_cells=20000, seed=0):
        return {"ilisi": metrics.ilisi(np.asarray(predictions, dtype=np.float32), references, perplexity, max_cells, seed)}
