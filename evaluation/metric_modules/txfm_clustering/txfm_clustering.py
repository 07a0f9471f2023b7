"""Cell-type clustering and silhouette scores (TXFM_SPEC §3 cell-type benchmark)."""

import datasets
import evaluate
import numpy as np

from evaluation import metrics

_DESCRIPTION = "Louvain NMI/ARI (best over a resolution sweep), silhouette ASW and, with batches, batch ASW."
_KWARGS = """
Args:
    predictions: embeddings; references: cell-type label of each cell.
    batches (optional): batch of each cell (batch ASW is None with fewer than two batches).
    seed (int, default 0), resolutions (list, default 0.2..2.0).
Returns:
    {"nmi", "ari", "asw", "batch_asw"} in [0, 1]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TxfmClustering(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Kedzierska et al. 2025; Luecken et al. 2022 (scib)",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, batches=None, seed=0, resolutions=metrics.DEFAULT_RESOLUTIONS):
        emb = np.asarray(predictions, dtype=np.float32)
        clusters = metrics.louvain_scores(emb, references, resolutions=resolutions, seed=seed)
        batches = np.zeros(len(emb), dtype=int) if batches is None else np.asarray(batches)
        return {
            "nmi": clusters["nmi"],
            "ari": clusters["ari"],
            "asw": metrics.silhouette_asw(emb, references),
            "batch_asw": metrics.batch_asw(emb, references, batches),
        }
