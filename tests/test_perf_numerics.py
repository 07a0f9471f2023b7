"""The fast paths compute what the straightforward implementation computes: losses and gradients.

Not timing tests (timing lives in ``benchmarks/``): these pin the numerics of every speed/memory
choice against ``benchmarks.reference_model`` (``nn.TransformerEncoder``) on the same batch.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference_model import reference_like
from modeling_txfm import TxFMConfig, TxFMForMaskedExpressionModeling

VOCAB = [f"ENSG{i:011d}" for i in range(300)]


def config(**overrides) -> TxFMConfig:
    settings = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_visible_genes=40,
                    decoder_hidden_size=32, drop_path_rate=0.0)
    return TxFMConfig(gene_ids=VOCAB, **{**settings, **overrides})


def batch(cfg: TxFMConfig, size: int = 3, padded: bool = True) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    k = cfg.num_visible_genes
    gene_ids = torch.stack([torch.randperm(cfg.vocab_size, generator=generator)[:k] for _ in range(size)])
    attention_mask = torch.ones(size, k, dtype=torch.long)
    if padded:
        attention_mask[1, 25:] = 0  # one sample with fewer profiled genes than K
        gene_ids[1, 25:] = 0
    return {
        "gene_ids": gene_ids,
        "values": torch.rand(size, k, generator=generator) * 6 * attention_mask,
        "attention_mask": attention_mask,
        "targets": torch.rand(size, cfg.vocab_size, generator=generator) * 6,
        "profiled_mask": torch.rand(size, cfg.vocab_size, generator=generator) > 0.3,
    }


def reference_gradients(reference) -> dict[str, torch.Tensor]:
    """The reference's gradients under our parameter names."""
    grads = {
        "txfm.embeddings.gene_embeddings.weight": reference.gene_embeddings.weight.grad,
        "txfm.embeddings.cls_token": reference.cls_token.grad,
        "txfm.norm.weight": reference.norm.weight.grad,
        "txfm.norm.bias": reference.norm.bias.grad,
    }
    names = {"norm1": "norm1", "norm2": "norm2", "self_attn.in_proj": "attention.qkv",
             "self_attn.out_proj": "attention.proj", "linear1": "mlp.fc1", "linear2": "mlp.fc2"}
    for i, layer in enumerate(reference.encoder.layers):
        prefix = f"txfm.encoder.layers.{i}."
        for theirs, ours in names.items():
            module_or_tensor = layer
            for part in theirs.split("."):
                module_or_tensor = getattr(module_or_tensor, part, None) if module_or_tensor is not None else None
            if theirs == "self_attn.in_proj":
                grads[prefix + ours + ".weight"] = layer.self_attn.in_proj_weight.grad
                grads[prefix + ours + ".bias"] = layer.self_attn.in_proj_bias.grad
            else:
                grads[prefix + ours + ".weight"] = module_or_tensor.weight.grad
                grads[prefix + ours + ".bias"] = module_or_tensor.bias.grad
        grads[prefix + "layer_scale1.gamma"] = layer.gamma1.grad
        grads[prefix + "layer_scale2.gamma"] = layer.gamma2.grad
    for name, parameter in reference.decoder.named_parameters():
        grads["decoder." + name] = parameter.grad
    return grads


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("mode", ["selective", "none"])
def test_loss_and_gradients_equal_the_reference_implementation(padded, mode):
    cfg = config()
    torch.manual_seed(0)
    model = TxFMForMaskedExpressionModeling(cfg).train()
    model.set_activation_recompute(mode)
    reference = reference_like(model, dropout=0.0).train()
    inputs = batch(cfg, padded=padded)

    loss = model(**inputs).loss
    loss.backward()
    reference_loss = reference(**inputs)
    reference_loss.backward()

    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-5)
    expected = reference_gradients(reference)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_activation_recompute_modes_are_bit_identical_with_stochastic_depth():
    """Recomputation replays the drop-path RNG: every mode gives exactly the same loss and gradients."""
    cfg = config(drop_path_rate=0.5, num_hidden_layers=3)
    inputs = batch(cfg)
    results = {}
    for mode in ("none", "selective", "full"):
        torch.manual_seed(0)
        model = TxFMForMaskedExpressionModeling(cfg).train()
        model.set_activation_recompute(mode)
        torch.manual_seed(123)
        loss = model(**inputs).loss
        loss.backward()
        results[mode] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    for mode in ("selective", "full"):
        assert torch.equal(results[mode][0], results["none"][0])
        for name, grad in results["none"][1].items():
            assert torch.equal(results[mode][1][name], grad), (mode, name)


def test_gradient_checkpointing_enable_still_selects_full_recompute():
    model = TxFMForMaskedExpressionModeling(config())
    model.gradient_checkpointing_enable()
    assert model.txfm.encoder.gradient_checkpointing
    with pytest.raises(ValueError):
        model.set_activation_recompute("sometimes")
