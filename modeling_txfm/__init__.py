"""TxFM: a masked autoencoder over RNA-seq counts, as a Hugging Face transformers model.

Importing this package registers ``model_type="txfm"`` with ``AutoConfig`` / ``AutoModel`` /
``AutoModelForMaskedLM``-style auto classes, and marks the classes for ``register_for_auto_class`` so a
saved checkpoint carries its code and loads with ``trust_remote_code=True`` where this package is absent.
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from .configuration_txfm import PRESETS, TxFMConfig
from .embedding import embed, gene_representations, gene_representations_anndata, load_model
from .modeling_txfm import (
    TxFMForMaskedExpressionModeling,
    TxFMModel,
    TxFMPreTrainedModel,
    poisson_loss,
    rectified_tanh,
)
from .processing_txfm import TxFMInputError, TxFMProcessor
from .safe_loading import TxFMCheckpointError

AutoConfig.register("txfm", TxFMConfig, exist_ok=True)
AutoModel.register(TxFMConfig, TxFMModel, exist_ok=True)
AutoFeatureExtractor.register(TxFMConfig, TxFMProcessor, exist_ok=True)

TxFMConfig.register_for_auto_class()
TxFMModel.register_for_auto_class("AutoModel")
TxFMForMaskedExpressionModeling.register_for_auto_class("AutoModelForPreTraining")
TxFMProcessor.register_for_auto_class("AutoFeatureExtractor")

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "TxFMConfig",
    "TxFMModel",
    "TxFMForMaskedExpressionModeling",
    "TxFMPreTrainedModel",
    "TxFMProcessor",
    "TxFMInputError",
    "TxFMCheckpointError",
    "embed",
    "gene_representations",
    "gene_representations_anndata",
    "load_model",
    "poisson_loss",
    "rectified_tanh",
]
