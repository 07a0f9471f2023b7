"""Weighted cosine kNN retrieval of perturbation labels across batches (TXFM_SPEC §3 knn)."""

import datasets
import evaluate
import numpy as np

from evaluation import metrics

_DESCRIPTION = "Top-1/top-5 accuracy of a weighted cosine kNN classifier (k=20, T=0.07) fitted on training cells."
_KWARGS = """
Args:
    predictions: query (held-out batch) embeddings.
    references: their perturbation labels.
    train_embeddings, train_labels: the reference cells (other batches).
    k (int, default 20), temperature (float, default 0.07).
Returns:
    {"top1": float, "top5": float, "score": mean of both}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TxfmKnnRetrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Bendidi et al. 2024",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, train_embeddings=None, train_labels=None, k=20, temperature=0.07):
        if train_embeddings is None or train_labels is None:
            raise ValueError("txfm_knn_retrieval needs train_embeddings= and train_labels= (the reference cells).")
        out = metrics.knn_retrieval(np.asarray(train_embeddings, dtype=np.float32), train_labels, np.asarray(predictions, dtype=np.float32), references, k=k, temperature=temperature)
        return {**out, "score": (out["top1"] + out["top5"]) / 2}
