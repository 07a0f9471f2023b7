"""TxFM configuration.

Decisions where the paper (``TXFM_SPEC.md``) leaves things open, recorded here and in the README:

* **Gene key**: unversioned human Ensembl gene IDs; the ordered vocabulary (``gene_ids``) and the
  parallel HGNC symbols (``gene_symbols``) are stored in ``config.json`` so a checkpoint is
  self-describing.
* **Decoder width**: per preset, chosen so that with the 44,349-gene vocabulary the parameter counts
  land on paper Table 6 (57 M / 159 M / 403 M): 640 for S, 768 for B, 1024 for L.
* **Decoder shape**: four linear layers — an input projection, two pre-norm residual MLP blocks and
  the per-gene output layer (whose rows are the decoder gene representations).
* **LayerScale** init 0.1 and gene embeddings initialised N(0, 1) so the concatenated scalar value
  (range [0, 11.5]) and the gene embedding enter the first LayerNorm on a comparable scale.
* **Inference gene selection**: see :class:`~modeling_txfm.processing_txfm.TxFMProcessor`.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

OUTPUT_ACTIVATIONS = ("rectified_tanh", "clamped_relu", "relu")
LOSSES = ("poisson",)

# Paper Table 6 (plus a tiny preset that trains on 2 CPU cores in minutes).
PRESETS: dict[str, dict] = {
    "txfm-tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, drop_path_rate=0.0,
        num_visible_genes=256, decoder_hidden_size=128,
    ),
    "txfm-s": dict(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=6, drop_path_rate=0.1,
        num_visible_genes=2048, decoder_hidden_size=640,
    ),
    "txfm-b": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, drop_path_rate=0.1,
        num_visible_genes=2048, decoder_hidden_size=768,
    ),
    "txfm-l": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, drop_path_rate=0.3,
        num_visible_genes=2048, decoder_hidden_size=1024,
    ),
}
PAPER_VOCABULARY_SIZE = 44_349


@strict
class TxFMConfig(PreTrainedConfig):
    r"""Configuration of a TxFM masked autoencoder over gene expression.

    Args:
        gene_ids: ordered vocabulary of unversioned Ensembl gene IDs (position = gene token id).
        gene_symbols: HGNC symbol of each vocabulary gene ('' when unknown), parallel to ``gene_ids``.
        vocab_size: number of genes; derived from ``gene_ids`` when those are given (set it alone
            only to size a model without a vocabulary, e.g. to count parameters).
        hidden_size: token width d; a token is ``[gene embedding (d-1) ; preprocessed value (1)]``.
        num_hidden_layers / num_attention_heads / mlp_ratio: the pre-norm transformer encoder.
        drop_path_rate: stochastic depth, linearly increasing over blocks up to this rate.
        layer_scale_init: initial LayerScale value on both residual branches of every block.
        num_visible_genes: K, the number of genes shown to the encoder (the rest are masked).
        library_size: L, the per-sample library size before ``log1p``.
        decoder_hidden_size / decoder_num_layers: the residual MLP decoder (linear layers in total).
        output_activation: ``rectified_tanh`` (paper), ``clamped_relu`` or ``relu``.
        loss: ``poisson`` (Poisson NLL in log space over every profiled gene).
        inference_seed: seed of the deterministic visible-gene draw at inference.
    """

    model_type = "txfm"

    gene_ids: list[str] | None = None
    gene_symbols: list[str] | None = None
    vocab_size: int | None = None
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    layer_scale_init: float = 0.1
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    num_visible_genes: int = 2048
    library_size: float = 1e5
    decoder_hidden_size: int = 128
    decoder_num_layers: int = 4
    output_activation: str = "rectified_tanh"
    loss: str = "poisson"
    inference_seed: int = 0
    preset: str | None = None

    def __post_init__(self, **kwargs):
        if self.gene_ids is not None:
            self.gene_ids = [str(g) for g in self.gene_ids]
            if self.vocab_size is not None and self.vocab_size != len(self.gene_ids):
                raise ValueError(f"vocab_size={self.vocab_size} disagrees with {len(self.gene_ids)} gene_ids")
            self.vocab_size = len(self.gene_ids)
            if self.gene_symbols is None:
                self.gene_symbols = [""] * len(self.gene_ids)
            if len(self.gene_symbols) != len(self.gene_ids):
                raise ValueError("gene_symbols must be parallel to gene_ids (one symbol per gene)")
        if self.vocab_size is None:
            self.vocab_size = 1
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {self.output_activation!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.decoder_num_layers < 2:
            raise ValueError("decoder_num_layers counts linear layers and must be at least 2")
        super().__post_init__(**kwargs)

    @property
    def max_log_value(self) -> float:
        """ln(L + 1): the upper bound of preprocessed values and of the rectified-tanh output."""
        return math.log(self.library_size + 1.0)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TxFMConfig:
        """A named size (``txfm-tiny``, ``txfm-s``, ``txfm-b``, ``txfm-l``) with optional overrides."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], "preset": name, **overrides})
