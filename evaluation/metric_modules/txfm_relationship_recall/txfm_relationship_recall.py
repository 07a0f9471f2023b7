"""Known gene-relationship recall (TXFM_SPEC §3 bmdb and gene-parameter recall)."""

import datasets
import evaluate
import numpy as np

from evaluation import metrics
from evaluation.relationships import DATABASES, load_relationships

_DESCRIPTION = "Recall of CORUM/HuMAP/Reactome/SIGNOR/StringDB pairs among the top/bottom 5 % cosine of all gene pairs."
_KWARGS = """
Args:
    predictions: one vector per gene (per-perturbation mean embedding or gene parameters).
    references: the gene symbol of each vector (unique).
    relationships_dir (str, optional): folder with <DB>.txt (default: TXFM_GENE_RELATIONSHIPS or ../shared/data/gene_relationships).
    databases (list, default all five), threshold (float, default 0.05).
Returns:
    {"mean_recall": float, "recall": {db: float}, "n_relationships": {db: int}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TxfmRelationshipRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Bendidi et al. 2024; Celik et al. 2024",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, relationships_dir=None, databases=DATABASES, threshold=0.05):
        relationships = load_relationships(relationships_dir, tuple(databases))
        out = metrics.relationship_recall(np.asarray(predictions, dtype=np.float32), references, relationships, threshold=threshold)
        return {k: out[k] for k in ("mean_recall", "recall", "n_relationships")}
