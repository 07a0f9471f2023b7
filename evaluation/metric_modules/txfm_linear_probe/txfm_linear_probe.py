"""Linear probe predicting perturbation labels on unseen batches (TXFM_SPEC §3 lin)."""

import datasets
import evaluate
import numpy as np

from evaluation import metrics

_DESCRIPTION = "Softmax regression trained on train_embeddings/train_labels; top-1/top-5 accuracy on the given cells."
_KWARGS = """
Args:
    predictions: test embeddings; references: their labels.
    train_embeddings, train_labels: training cells.
    seed (int, default 0), epochs (int, default 30).
Returns:
    {"top1": float, "top5": float, "score": mean of both}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TxfmLinearProbe(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Bendidi et al. 2024",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, train_embeddings=None, train_labels=None, seed=0, epochs=30):
        if train_embeddings is None or train_labels is None:
            raise ValueError("txfm_linear_probe needs train_embeddings= and train_labels=.")
        out = metrics.linear_probe(np.asarray(train_embeddings, dtype=np.float32), train_labels, np.asarray(predictions, dtype=np.float32), references, seed=seed, epochs=epochs)
        return {**out, "score": (out["top1"] + out["top5"]) / 2}
