"""PyTorch TxFM: a masked autoencoder over gene expression (TXFM_SPEC.md §1).

One sample (a bulk RNA-seq sample or a cell) is a *set* of genes with values. The encoder sees only
K of the sample's profiled genes — each a token ``[gene embedding ; ln(1 + L·x/Σx)]`` — plus a learnable
CLS token, through a pre-norm transformer with no positional encoding. The CLS output is the sample
embedding. A residual MLP decoder maps it to one log-rate per vocabulary gene, bounded by the
rectified tanh, and the Poisson loss in log space scores the reconstruction of **every profiled gene**
(masked and visible), never a gene the sample's dataset did not measure.

Shapes: B = batch, K = visible genes (padded), d = hidden size, G = vocabulary size, H = heads.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_txfm import TxFMConfig


@dataclass
class TxFMModelOutput(ModelOutput):
    """
    embedding: [B, d] CLS output of the final block (after the final LayerNorm): the sample embedding.
    last_hidden_state: [B, 1 + K, d] all token states; position 0 is CLS.
    """

    embedding: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


@dataclass
class TxFMMaskedExpressionOutput(ModelOutput):
    """
    loss: scalar Poisson loss over profiled genes (fp32), when targets were given.
    predictions: [B, G] predicted log-rates x̂ = φ(ẑ) in [0, ln(L+1)).
    embedding: [B, d] sample embedding.
    last_hidden_state: [B, 1 + K, d] encoder token states.
    """

    loss: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    embedding: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------
# Output activation and loss (kept as plain functions: they are what the paper ablates)
# --------------------------------------------------------------------------------------------------


def rectified_tanh(logits: torch.Tensor, library_size: float) -> torch.Tensor:
    """φ(z) = ln(L+1) · ReLU(tanh(z / 4e)) ∈ [0, ln(L+1)): the paper's bounded log-rate."""
    return math.log(library_size + 1.0) * torch.relu(torch.tanh(logits / (4.0 * math.e)))


def output_activation(logits: torch.Tensor, config: TxFMConfig) -> torch.Tensor:
    if config.output_activation == "rectified_tanh":
        return rectified_tanh(logits, config.library_size)
    if config.output_activation == "clamped_relu":
        return torch.clamp(logits, min=0.0, max=config.max_log_value)
    return torch.relu(logits)


def poisson_loss(
    predictions: torch.Tensor, targets: torch.Tensor, profiled_mask: torch.Tensor
) -> torch.Tensor:
    """Library-size-bounded Poisson NLL in log space, over profiled genes only, in fp32.

    ``predictions`` x̂ [B, G] are log-rates, ``targets`` x̃ [B, G] the log1p-normalised values,
    ``profiled_mask`` [B, G] is True where the sample's dataset measured the gene. Per gene the loss is
    exp(x̂) − x̂·exp(x̃) (``PoissonNLLLoss(log_input=True)`` with target exp(x̃)); it is averaged over the
    sample's profiled genes, then over samples, so every sample weighs the same whatever its gene panel.
    """
    predictions, targets = predictions.float(), targets.float()
    mask = profiled_mask.to(predictions.dtype)
    per_gene = torch.exp(predictions) - predictions * torch.exp(targets)  # [B, G]
    per_sample = (per_gene * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)  # [B]
    return per_sample.mean()


# --------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------


class TxFMEmbeddings(nn.Module):
    """Gene tokens ``[E_gene ; value]`` (no positional encoding: genes are a set) and the CLS token."""

    def __init__(self, config: TxFMConfig):
        super().__init__()
        self.gene_embeddings = nn.Embedding(config.vocab_size, config.hidden_size - 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))

    def forward(self, gene_ids: torch.LongTensor, values: torch.Tensor) -> torch.Tensor:
        genes = self.gene_embeddings(gene_ids)  # [B, K, d-1]
        tokens = torch.cat([genes, values.unsqueeze(-1).to(genes.dtype)], dim=-1)  # [B, K, d]
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # [B, 1, d]
        return torch.cat([cls, tokens], dim=1)  # [B, 1 + K, d]


class TxFMSelfAttention(nn.Module):
    """Dense multi-head self-attention through ``F.scaled_dot_product_attention`` (fused kernels)."""

    def __init__(self, config: TxFMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = hidden.shape
        qkv = self.qkv(hidden).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, 1+K, d/H]
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)  # [B, H, 1+K, d/H]
        return self.proj(context.transpose(1, 2).reshape(batch, length, width))


class TxFMMLP(nn.Module):
    def __init__(self, config: TxFMConfig):
        super().__init__()
        inner = int(config.hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(config.hidden_size, inner)
        self.fc2 = nn.Linear(inner, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(hidden)))


class TxFMLayerScale(nn.Module):
    def __init__(self, config: TxFMConfig):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((config.hidden_size,), config.layer_scale_init))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden * self.gamma


def drop_path(branch: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop a residual branch for whole samples, rescaling the kept ones."""
    if rate == 0.0 or not training:
        return branch
    keep = 1.0 - rate
    shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
    return branch * branch.new_empty(shape).bernoulli_(keep) / keep


class TxFMLayer(nn.Module):
    """Pre-norm block: x + DropPath(LS(Attn(LN(x)))), then x + DropPath(LS(MLP(LN(x))))."""

    def __init__(self, config: TxFMConfig, drop_path_rate: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = TxFMSelfAttention(config)
        self.layer_scale1 = TxFMLayerScale(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = TxFMMLP(config)
        self.layer_scale2 = TxFMLayerScale(config)
        self.drop_path_rate = drop_path_rate

    def forward(self, hidden: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.layer_scale1(self.attention(self.norm1(hidden), attn_mask))
        hidden = hidden + drop_path(attended, self.drop_path_rate, self.training)
        transformed = self.layer_scale2(self.mlp(self.norm2(hidden)))
        return hidden + drop_path(transformed, self.drop_path_rate, self.training)


# Ops whose outputs a block keeps for backward under selective recomputation: the matmuls and the fused
# attention (out + logsumexp), i.e. everything that costs FLOPs to redo. The rest of a block (LayerNorm,
# GELU, LayerScale, residual adds, drop-path masks) is cheap elementwise work, recomputed in backward.
_aten = torch.ops.aten
_SAVED_FOR_BACKWARD = {
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
}


def _save_matmuls_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_FOR_BACKWARD else CheckpointPolicy.PREFER_RECOMPUTE


_selective_recompute_context = functools.partial(create_selective_checkpoint_contexts, _save_matmuls_policy)

ACTIVATION_RECOMPUTE_MODES = ("selective", "full", "none")


class TxFMEncoder(nn.Module):
    """The stack of pre-norm blocks, with a choice of what to keep for backward in training.

    ``activation_recompute``:

    * ``"selective"`` (default): keep only matmul and attention outputs, recompute the elementwise rest in
      backward. A block then holds 11 [B, 1+K, d]-sized tensors instead of 19 (TxFM-S, batch 4, K = 2048:
      ~140 MB instead of ~245 MB per block) for a few % more time; results are bit-identical (the same
      kernels run again on the same inputs; checkpointing replays the RNG for drop-path).
    * ``"full"``: keep only each block's input and recompute the whole block (≈ +33 % FLOPs); what
      ``gradient_checkpointing_enable()`` selects.
    * ``"none"``: keep everything autograd saves.
    """

    def __init__(self, config: TxFMConfig):
        super().__init__()
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList([TxFMLayer(config, rate) for rate in rates])
        self.gradient_checkpointing = False
        self.activation_recompute = "selective"

    def forward(self, hidden: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        mode = "full" if self.gradient_checkpointing else self.activation_recompute
        if mode not in ACTIVATION_RECOMPUTE_MODES:
            raise ValueError(f"activation_recompute must be one of {ACTIVATION_RECOMPUTE_MODES}, got {mode!r}")
        recompute = self.training and torch.is_grad_enabled() and mode != "none"
        for layer in self.layers:
            if recompute and mode == "selective":
                hidden = checkpoint(
                    layer, hidden, attn_mask, use_reentrant=False, context_fn=_selective_recompute_context
                )
            elif recompute:
                hidden = checkpoint(layer, hidden, attn_mask, use_reentrant=False)
            else:
                hidden = layer(hidden, attn_mask)
        return hidden


def attention_mask_for_sdpa(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, K] keep-mask (1 = real gene, 0 = padding) → [B, 1, 1, 1+K] boolean mask, CLS always kept.

    Returns ``None`` when nothing is padded, which lets SDPA use its unmasked fused kernels (the common
    case: samples with at least K profiled genes need no padding).
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    keep = torch.cat([attention_mask.new_ones(attention_mask.shape[0], 1), attention_mask], dim=1).bool()
    return keep[:, None, None, :]


# --------------------------------------------------------------------------------------------------
# Pretrained-model plumbing
# --------------------------------------------------------------------------------------------------


class TxFMPreTrainedModel(PreTrainedModel):
    config_class = TxFMConfig
    config: TxFMConfig
    base_model_prefix = "txfm"
    main_input_name = "gene_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TxFMLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, TxFMEmbeddings):
            init.normal_(module.gene_embeddings.weight, mean=0.0, std=1.0)
            init.normal_(module.cls_token, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, TxFMLayerScale):
            init.constant_(module.gamma, self.config.layer_scale_init)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save, recording *both* model classes in ``auto_map`` so the folder serves ``AutoModel``
        (the encoder, for embeddings) and ``AutoModelForPreTraining`` (encoder + decoder) as remote code."""
        if self._auto_class is not None:
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": "modeling_txfm.TxFMModel",
                "AutoModelForPreTraining": "modeling_txfm.TxFMForMaskedExpressionModeling",
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs) -> None:
        for module in self.modules():
            if isinstance(module, TxFMEncoder):
                module.gradient_checkpointing = enable

    def set_activation_recompute(self, mode: str) -> None:
        """What the encoder keeps for backward: ``"selective"`` (default), ``"full"`` or ``"none"``
        (see :class:`TxFMEncoder`). A memory/time trade-off only: losses and gradients are unchanged."""
        if mode not in ACTIVATION_RECOMPUTE_MODES:
            raise ValueError(f"mode must be one of {ACTIVATION_RECOMPUTE_MODES}, got {mode!r}")
        for module in self.modules():
            if isinstance(module, TxFMEncoder):
                module.activation_recompute = mode


class TxFMModel(TxFMPreTrainedModel):
    """The gene-token encoder. ``embedding`` is the sample representation."""

    def __init__(self, config: TxFMConfig):
        super().__init__(config)
        self.embeddings = TxFMEmbeddings(config)
        self.encoder = TxFMEncoder(config)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.gene_embeddings

    def forward(
        self,
        gene_ids: torch.LongTensor,
        values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> TxFMModelOutput:
        """
        gene_ids: [B, K] vocabulary positions of the visible genes.
        values: [B, K] their preprocessed values ln(1 + L·x/Σx).
        attention_mask: [B, K] 1 for real genes, 0 for padding (samples with fewer than K profiled genes).
        """
        hidden = self.embeddings(gene_ids, values)  # [B, 1+K, d]
        hidden = self.encoder(hidden, attention_mask_for_sdpa(attention_mask))  # [B, 1+K, d]
        hidden = self.norm(hidden)
        return TxFMModelOutput(embedding=hidden[:, 0], last_hidden_state=hidden)


class TxFMResidualBlock(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.linear = nn.Linear(width, width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + F.gelu(self.linear(self.norm(hidden)))


class TxFMDecoder(nn.Module):
    """Residual MLP: e [B, d] → logits ẑ [B, G]; ``decoder_num_layers`` linear layers in total.

    ``output.weight`` [G, w] holds one reconstruction vector per gene: the decoder gene representations.
    """

    def __init__(self, config: TxFMConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.input = nn.Linear(config.hidden_size, width)
        self.blocks = nn.ModuleList(
            [TxFMResidualBlock(width, config.layer_norm_eps) for _ in range(config.decoder_num_layers - 2)]
        )
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.output = nn.Linear(width, config.vocab_size)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.input(embedding))  # [B, w]
        for block in self.blocks:
            hidden = block(hidden)
        return self.output(self.norm(hidden))  # [B, G]


class TxFMForMaskedExpressionModeling(TxFMPreTrainedModel):
    """Encoder + residual MLP decoder + rectified tanh, trained with the Poisson loss (pretraining head)."""

    def __init__(self, config: TxFMConfig):
        super().__init__(config)
        self.txfm = TxFMModel(config)
        self.decoder = TxFMDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.txfm.get_input_embeddings()

    def forward(
        self,
        gene_ids: torch.LongTensor,
        values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        profiled_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> TxFMMaskedExpressionOutput:
        """
        targets: [B, G] log1p-normalised values of every vocabulary gene (0 where unmeasured).
        profiled_mask: [B, G] True where the sample's dataset measured the gene; required with targets.
        """
        encoded = self.txfm(gene_ids, values, attention_mask)
        logits = self.decoder(encoded.embedding)  # [B, G]
        predictions = output_activation(logits.float(), self.config)  # fp32 whatever the autocast dtype
        loss = None
        if targets is not None:
            if profiled_mask is None:
                raise ValueError("profiled_mask is required with targets: the loss must skip unmeasured genes")
            loss = poisson_loss(predictions, targets, profiled_mask)
        return TxFMMaskedExpressionOutput(
            loss=loss,
            predictions=predictions,
            embedding=encoded.embedding,
            last_hidden_state=encoded.last_hidden_state,
        )


__all__ = [
    "TxFMModel",
    "TxFMForMaskedExpressionModeling",
    "TxFMPreTrainedModel",
    "rectified_tanh",
    "poisson_loss",
]
