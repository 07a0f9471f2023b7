"""The straightforward TxFM: the same model written with ``nn.TransformerEncoder``; the baseline.

This is what one writes first: ``nn.TransformerEncoderLayer(norm_first=True, dropout=0.1)``, the
key-padding mask always passed, the decoder's full-vocabulary output and the Poisson loss over the
dense [B, G] mask. It has the parameter shapes of :class:`TxFMForMaskedExpressionModeling`
(``in_proj`` = our ``qkv``, ``out_proj`` = our ``proj``, ``linear1/2`` = ``fc1/2``, plus LayerScale
and stochastic depth, which ``nn.TransformerEncoderLayer`` lacks and we add by overriding its two
branch methods), so :func:`copy_weights` makes the two models compute the same function; with
``dropout=0`` their losses and gradients agree (``tests/test_perf_numerics.py``).

Why it is slow (PERFORMANCE_NOTES.md): attention dropout plus a materialised padding mask push
attention off the fused SDPA kernels onto the math path, which materialises the [B·H, 1+K, 1+K]
score, softmax and dropout matrices (3× the time, 4× the memory at K = 2048).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from modeling_txfm.configuration_txfm import TxFMConfig
from modeling_txfm.modeling_txfm import TxFMDecoder, TxFMForMaskedExpressionModeling, drop_path


class ReferenceLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` plus LayerScale and stochastic depth on both branches."""

    def __init__(self, config: TxFMConfig, dropout: float, drop_path_rate: float):
        super().__init__(
            d_model=config.hidden_size,
            nhead=config.num_attention_heads,
            dim_feedforward=int(config.hidden_size * config.mlp_ratio),
            dropout=dropout,
            activation="gelu",
            layer_norm_eps=config.layer_norm_eps,
            batch_first=True,
            norm_first=True,
        )
        self.gamma1 = nn.Parameter(torch.full((config.hidden_size,), config.layer_scale_init))
        self.gamma2 = nn.Parameter(torch.full((config.hidden_size,), config.layer_scale_init))
        self.drop_path_rate = drop_path_rate

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal=False):
        branch = super()._sa_block(x, attn_mask, key_padding_mask, is_causal)
        return drop_path(branch * self.gamma1, self.drop_path_rate, self.training)

    def _ff_block(self, x):
        return drop_path(super()._ff_block(x) * self.gamma2, self.drop_path_rate, self.training)


class ReferenceTxFM(nn.Module):
    """Encoder (``nn.TransformerEncoder``) + the residual MLP decoder + rectified tanh + Poisson loss."""

    def __init__(self, config: TxFMConfig, dropout: float = 0.1):
        super().__init__()
        self.config = config
        depth = config.num_hidden_layers
        self.gene_embeddings = nn.Embedding(config.vocab_size, config.hidden_size - 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        layer = ReferenceLayer(config, dropout, 0.0)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        for i, block in enumerate(self.encoder.layers):
            block.drop_path_rate = config.drop_path_rate * i / max(depth - 1, 1)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = TxFMDecoder(config)

    def forward(self, gene_ids, values, attention_mask, targets, profiled_mask) -> torch.Tensor:
        """Returns the scalar loss. Shapes as in :class:`TxFMForMaskedExpressionModeling`."""
        tokens = torch.cat([self.gene_embeddings(gene_ids), values.unsqueeze(-1)], dim=-1)  # [B, K, d]
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)  # [B, 1+K, d]
        padding = torch.cat([attention_mask.new_ones(len(tokens), 1), attention_mask], dim=1) == 0  # [B, 1+K]
        hidden = self.norm(self.encoder(tokens, src_key_padding_mask=padding))
        logits = self.decoder(hidden[:, 0])  # [B, G]
        predictions = math.log(self.config.library_size + 1.0) * F.relu(torch.tanh(logits / (4.0 * math.e)))
        per_gene = torch.exp(predictions) - predictions * torch.exp(targets)  # [B, G]
        mask = profiled_mask.float()
        return ((per_gene * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


@torch.no_grad()
def copy_weights(source: TxFMForMaskedExpressionModeling, target: ReferenceTxFM) -> None:
    """Give ``target`` exactly ``source``'s parameters (shapes match one to one)."""
    txfm = source.txfm
    target.gene_embeddings.weight.copy_(txfm.embeddings.gene_embeddings.weight)
    target.cls_token.copy_(txfm.embeddings.cls_token)
    for ours, theirs in zip(txfm.encoder.layers, target.encoder.layers):
        theirs.norm1.load_state_dict(ours.norm1.state_dict())
        theirs.norm2.load_state_dict(ours.norm2.state_dict())
        theirs.self_attn.in_proj_weight.copy_(ours.attention.qkv.weight)  # q, k, v stacked, heads inside
        theirs.self_attn.in_proj_bias.copy_(ours.attention.qkv.bias)
        theirs.self_attn.out_proj.load_state_dict(ours.attention.proj.state_dict())
        theirs.linear1.load_state_dict(ours.mlp.fc1.state_dict())
        theirs.linear2.load_state_dict(ours.mlp.fc2.state_dict())
        theirs.gamma1.copy_(ours.layer_scale1.gamma)
        theirs.gamma2.copy_(ours.layer_scale2.gamma)
    target.norm.load_state_dict(txfm.norm.state_dict())
    target.decoder.load_state_dict(source.decoder.state_dict())


def reference_like(model: TxFMForMaskedExpressionModeling, dropout: float = 0.1) -> ReferenceTxFM:
    reference = ReferenceTxFM(model.config, dropout=dropout)
    copy_weights(model, reference)
    return reference
