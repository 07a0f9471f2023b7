"""The TxFM model of TXFM_SPEC §1: activation, loss, encoder, decoder, gradients, sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_config

from modeling_txfm import TxFMConfig, TxFMForMaskedExpressionModeling, TxFMModel, poisson_loss, rectified_tanh
from modeling_txfm.configuration_txfm import PAPER_VOCABULARY_SIZE
from modeling_txfm.modeling_txfm import attention_mask_for_sdpa

L = 1e5
VOCAB = [f"ENSG{i:011d}" for i in range(500)]


def random_batch(config, batch=3, k=None, generator=None):
    generator = generator or torch.Generator().manual_seed(0)
    k = k or config.num_visible_genes
    gene_ids = torch.stack([torch.randperm(config.vocab_size, generator=generator)[:k] for _ in range(batch)])
    values = torch.rand(batch, k, generator=generator) * 6
    targets = torch.rand(batch, config.vocab_size, generator=generator) * 6
    profiled = torch.rand(batch, config.vocab_size, generator=generator) > 0.3
    return gene_ids, values, targets, profiled


def test_rectified_tanh_bounds_and_reference_form():
    z = torch.linspace(-200, 200, 10001, dtype=torch.float64)
    phi = rectified_tanh(z, L)
    assert phi.min() == 0 and phi.max() < math.log(L + 1)
    assert torch.all(phi[z <= 0] == 0)
    reference = math.log1p(L) * torch.relu(2 * torch.sigmoid(z / (2 * math.e)) - 1)  # the authors' form
    torch.testing.assert_close(phi, reference, atol=1e-12, rtol=1e-10)
    assert torch.all(torch.diff(phi[z > 0]) >= 0)  # monotone on the positive side


@pytest.mark.parametrize("activation", ["clamped_relu", "relu"])
def test_alternative_activations(activation):
    config = TxFMConfig(gene_ids=VOCAB[:10], output_activation=activation)
    model = TxFMForMaskedExpressionModeling(config)
    gene_ids, values, _, _ = random_batch(config, k=5)
    predictions = model(gene_ids, values).predictions
    assert predictions.min() >= 0
    if activation == "clamped_relu":
        assert predictions.max() <= math.log(L + 1)


def test_poisson_loss_matches_direct_and_torch_poisson_nll():
    generator = torch.Generator().manual_seed(1)
    predictions = torch.rand(4, 50, generator=generator, dtype=torch.float64) * 8
    targets = torch.rand(4, 50, generator=generator, dtype=torch.float64) * 8
    profiled = torch.ones(4, 50, dtype=torch.bool)
    direct = (torch.exp(predictions) - predictions * torch.exp(targets)).mean()
    torch.testing.assert_close(poisson_loss(predictions, targets, profiled), direct.float())
    nll = torch.nn.PoissonNLLLoss(log_input=True, full=False)(predictions, torch.exp(targets))
    torch.testing.assert_close(poisson_loss(predictions, targets, profiled), nll.float())


def test_poisson_loss_is_per_sample_mean_over_profiled_genes():
    predictions = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    targets = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 1.0]])
    profiled = torch.tensor([[True, False, True], [True, True, False]])
    per_gene = torch.exp(predictions) - predictions * torch.exp(targets)
    expected = ((per_gene[0, 0] + per_gene[0, 2]) / 2 + (per_gene[1, 0] + per_gene[1, 1]) / 2) / 2
    torch.testing.assert_close(poisson_loss(predictions, targets, profiled), expected)


def test_loss_is_fp32_under_bf16_autocast():
    config = TxFMConfig(gene_ids=VOCAB[:40], hidden_size=16, num_attention_heads=2, num_visible_genes=8)
    model = TxFMForMaskedExpressionModeling(config)
    gene_ids, values, targets, profiled = random_batch(config, batch=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(gene_ids, values, targets=targets, profiled_mask=profiled)
    assert out.loss.dtype == torch.float32 and out.predictions.dtype == torch.float32
    assert torch.isfinite(out.loss)


def test_shapes_and_dtypes():
    config = tiny_config(VOCAB)
    model = TxFMForMaskedExpressionModeling(config).eval()
    gene_ids, values, targets, profiled = random_batch(config)
    out = model(gene_ids, values, torch.ones_like(gene_ids), targets, profiled)
    assert out.predictions.shape == (3, len(VOCAB)) and out.predictions.dtype == torch.float32
    assert out.embedding.shape == (3, config.hidden_size)
    assert out.last_hidden_state.shape == (3, config.num_visible_genes + 1, config.hidden_size)
    assert out.loss.ndim == 0
    torch.testing.assert_close(out.embedding, out.last_hidden_state[:, 0])


def test_loss_ignores_unprofiled_genes():
    config = tiny_config(VOCAB)
    model = TxFMForMaskedExpressionModeling(config).eval()
    gene_ids, values, targets, profiled = random_batch(config)
    loss = model(gene_ids, values, targets=targets, profiled_mask=profiled).loss
    scrambled = targets.clone()
    scrambled[~profiled] = torch.rand(int((~profiled).sum())) * 11
    assert model(gene_ids, values, targets=scrambled, profiled_mask=profiled).loss == loss
    changed = targets.clone()
    changed[profiled] += 1.0
    assert model(gene_ids, values, targets=changed, profiled_mask=profiled).loss != loss


def test_targets_without_profiled_mask_are_refused():
    config = tiny_config(VOCAB)
    gene_ids, values, targets, _ = random_batch(config)
    with pytest.raises(ValueError, match="profiled_mask"):
        TxFMForMaskedExpressionModeling(config)(gene_ids, values, targets=targets)


def test_padding_is_ignored_by_the_encoder():
    """A padded sample embeds exactly as the same sample alone without padding."""
    config = tiny_config(VOCAB, drop_path_rate=0.0)
    model = TxFMModel(config).eval()
    gene_ids, values, _, _ = random_batch(config, batch=1, k=40)
    alone = model(gene_ids, values).embedding
    padded_ids = torch.cat([gene_ids, torch.zeros(1, 24, dtype=torch.long)], dim=1)
    padded_values = torch.cat([values, torch.full((1, 24), 7.0)], dim=1)
    mask = torch.cat([torch.ones(1, 40), torch.zeros(1, 24)], dim=1)
    torch.testing.assert_close(model(padded_ids, padded_values, mask).embedding, alone, atol=1e-5, rtol=1e-5)
    assert attention_mask_for_sdpa(torch.ones(2, 5)) is None  # no padding → unmasked fused kernel


def test_gene_set_order_does_not_matter():
    """No positional encoding: permuting the visible genes leaves the embedding unchanged."""
    config = tiny_config(VOCAB)
    model = TxFMModel(config).eval()
    gene_ids, values, _, _ = random_batch(config, batch=2)
    permutation = torch.randperm(gene_ids.shape[1])
    torch.testing.assert_close(
        model(gene_ids[:, permutation], values[:, permutation]).embedding, model(gene_ids, values).embedding,
        atol=1e-5, rtol=1e-5,
    )


def test_gradients_reach_every_parameter():
    config = tiny_config(VOCAB, drop_path_rate=0.0)
    model = TxFMForMaskedExpressionModeling(config).train()
    gene_ids, values, targets, profiled = random_batch(config)
    model(gene_ids, values, targets=targets, profiled_mask=profiled).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_stochastic_depth_only_in_training():
    config = tiny_config(VOCAB, drop_path_rate=0.5)
    model = TxFMModel(config)
    gene_ids, values, _, _ = random_batch(config, batch=8)
    model.eval()
    torch.testing.assert_close(model(gene_ids, values).embedding, model(gene_ids, values).embedding)
    model.train()
    torch.manual_seed(0)
    first = model(gene_ids, values).embedding
    torch.manual_seed(1)
    assert not torch.allclose(first, model(gene_ids, values).embedding)


def test_overfitting_one_batch_reduces_the_loss_by_a_large_factor():
    """The Poisson loss has minimum exp(x̃)(1−x̃) (at x̂ = x̃); its excess over that must fall ≥ 10×."""
    torch.manual_seed(0)
    config = tiny_config(VOCAB[:200], drop_path_rate=0.0, num_visible_genes=32)
    model = TxFMForMaskedExpressionModeling(config).train()
    gene_ids, values, targets, profiled = random_batch(config, batch=4)
    targets = targets * profiled
    floor = poisson_loss(targets, targets, profiled)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    excess = []
    for _ in range(300):
        loss = model(gene_ids, values, targets=targets, profiled_mask=profiled).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        excess.append(loss.item() - floor.item())
    assert excess[-1] < excess[0] / 10, (excess[0], excess[-1])


@pytest.mark.parametrize(("preset", "paper_millions"), [("txfm-s", 57), ("txfm-b", 159), ("txfm-l", 403)])
def test_preset_parameter_counts_match_paper_table_6(preset, paper_millions):
    config = TxFMConfig.from_preset(preset, vocab_size=PAPER_VOCABULARY_SIZE)
    with torch.device("meta"):
        model = TxFMForMaskedExpressionModeling(config)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(millions - paper_millions) / paper_millions < 0.10, millions
    assert config.num_visible_genes == 2048


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        TxFMConfig(gene_ids=VOCAB[:5], hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="output_activation"):
        TxFMConfig(gene_ids=VOCAB[:5], output_activation="softmax")
    with pytest.raises(ValueError, match="parallel"):
        TxFMConfig(gene_ids=VOCAB[:5], gene_symbols=["A"])
    with pytest.raises(ValueError, match="preset"):
        TxFMConfig.from_preset("txfm-xxl")
    assert TxFMConfig(gene_ids=VOCAB[:5]).vocab_size == 5


def test_embedding_is_deterministic_in_eval():
    config = tiny_config(VOCAB)
    model = TxFMModel(config).eval()
    gene_ids, values, _, _ = random_batch(config)
    assert np.array_equal(model(gene_ids, values).embedding.detach().numpy(), model(gene_ids, values).embedding.detach().numpy())
