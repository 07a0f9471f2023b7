"""Pretraining building blocks, in process: collator (= the processor), config, data order, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_txfm import TxFMProcessor
from training.checkpoint import (
    COMPLETE,
    TrainerState,
    complete_checkpoints,
    latest_checkpoint,
    remove_checkpoint,
)
from training.collator import RaggedRows, TxFMCollator, masked_gene_mask
from training.config import ConfigError, load_config, plan_batches
from training.data import TrainBatches, ValidationBatches, open_corpus
from training.synthetic import write_synthetic_corpus

L = 1e5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = write_synthetic_corpus(tmp_path_factory.mktemp("corpus"), n_train=96, n_validation=20, n_genes=300,
                                  profile_sizes=(200, 40), seed=1)
    return open_corpus(str(path))


def _rows(corpus, indices):
    return RaggedRows.from_arrow(corpus.train.with_format("arrow")[list(indices)])


def test_collator_matches_the_processor(corpus):
    """Same sample, same generator: identical targets, mask, visible genes and values."""
    K = 32
    collator = TxFMCollator(corpus.profiles, len(corpus.gene_ids), K, L)
    processor = TxFMProcessor(gene_ids=corpus.gene_ids, num_visible_genes=K, library_size=L)
    rows = _rows(corpus, range(6))
    keys = [(0, 0, 3, i) for i in range(6)]
    batch = collator(rows, keys)
    for i in range(6):
        profile = corpus.profiles[int(rows.profile_id[i])]
        dense = np.zeros((1, len(profile)))
        genes = rows.gene_index[rows.offsets[i]:rows.offsets[i + 1]]
        dense[0, np.searchsorted(profile, genes)] = rows.counts[rows.offsets[i]:rows.offsets[i + 1]]
        expected = processor(dense, [corpus.gene_ids[g] for g in profile], training=True,
                             generator=np.random.default_rng(list(keys[i])), return_targets=True, return_tensors="np")
        np.testing.assert_array_equal(batch["targets"][i].numpy(), expected["targets"][0])
        np.testing.assert_array_equal(batch["profiled_mask"][i].numpy(), expected["profiled_mask"][0])
        k = expected["gene_ids"].shape[1]
        np.testing.assert_array_equal(batch["gene_ids"][i, :k].numpy(), expected["gene_ids"][0])
        np.testing.assert_array_equal(batch["values"][i, :k].numpy(), expected["values"][0])
        assert batch["attention_mask"][i, :k].all()


def test_collator_pads_small_profiles_and_masks_what_it_hides():
    profiles = {7: np.array([0, 2, 4, 6, 8, 10]), 9: np.arange(0, 40)}
    collator = TxFMCollator(profiles, vocab_size=50, num_visible_genes=16)
    rows = RaggedRows.from_columns({"gene_index": [[0, 4, 10], [1, 5, 30]], "counts": [[5, 1, 2], [3, 3, 3]],
                                    "profile_id": [7, 9]})
    batch = collator(rows, [(1, 0), (1, 1)])
    assert batch["gene_ids"].shape == (2, 16) and batch["targets"].shape == (2, 50)
    assert batch["attention_mask"][0].sum() == 6 and batch["attention_mask"][1].sum() == 16
    np.testing.assert_array_equal(batch["gene_ids"][0, :6].numpy(), profiles[7])  # all 6 shown
    assert (batch["values"][0, 6:] == 0).all() and (batch["gene_ids"][0, 6:] == 0).all()
    assert batch["profiled_mask"][0].sum() == 6 and not batch["profiled_mask"][0, 1]
    np.testing.assert_allclose(batch["targets"][0, [0, 4, 10]].numpy(), np.log1p(L * np.array([5, 1, 2]) / 8), rtol=1e-6)
    hidden = masked_gene_mask(batch)
    assert not hidden[0].any()  # gene 0 is visible although padding also points at position 0
    assert hidden[1].sum() == 40 - 16
    again = collator(rows, [(1, 0), (1, 1)])
    assert torch.equal(again["gene_ids"], batch["gene_ids"])  # a key fixes the draw
    assert not torch.equal(collator(rows, [(2, 0), (2, 1)])["gene_ids"][1], batch["gene_ids"][1])


def test_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: txfm-tiny\nlearning_rate: 1e-3\nmodel: {num_visible_genes: 64}\nmax_steps: 5\n")
    cfg = load_config(["--config", str(path), "--corpus", "x", "--max_steps", "7", "--resume", "--seed=3",
                       "--model.hidden_size", "32", "--trackers", "csv"])
    assert cfg.learning_rate == 1e-3 and cfg.max_steps == 7 and cfg.resume is True and cfg.seed == 3
    assert cfg.model == {"num_visible_genes": 64, "hidden_size": 32} and cfg.trackers == ["csv"]
    assert load_config(["--config", str(path), "--corpus", "x", "--resume", "false"]).resume is False
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(["--corpus", "x", "--max_step", "3"])
    with pytest.raises(ConfigError, match="hub_model_id"):
        load_config(["--corpus", "x", "--push_to_hub"])
    with pytest.raises(ConfigError, match="corpus"):
        load_config([])


def test_batch_plan():
    assert plan_batches(1536, 32, 8) == plan_batches(1536, 32, 8)
    plan = plan_batches(1536, 32, 8)
    assert (plan.micro_batch_size, plan.accumulation_steps, plan.global_batch_size) == (32, 6, 1536)
    assert plan_batches(16, 16, 2).micro_batch_size == 8
    assert plan_batches(48, 20, 1).micro_batch_size == 16
    with pytest.raises(ConfigError):
        plan_batches(15, 8, 2)


def _step_rows(batches: TrainBatches, epoch: int, start: int = 0) -> list[np.ndarray]:
    """Row indices of each optimizer step (its micro batches concatenated)."""
    micro = [b["row_index"].numpy() for b in batches.epoch(epoch, start)]
    a = batches.plan.accumulation_steps
    return [np.concatenate(micro[i:i + a]) for i in range(0, len(micro), a)]


def test_processes_see_disjoint_shards_of_the_same_global_batches(corpus):
    collator = TxFMCollator(corpus.profiles, len(corpus.gene_ids), 16)
    one = TrainBatches(corpus, collator, plan_batches(16, 8, 1), rank=0, seed=5)  # 1 process, accumulation 2
    two = [TrainBatches(corpus, collator, plan_batches(16, 8, 2), rank=r, seed=5) for r in (0, 1)]
    assert one.steps_per_epoch == two[0].steps_per_epoch == 96 // 16
    reference = _step_rows(one, epoch=0)
    shards = [_step_rows(t, epoch=0) for t in two]
    for step, rows in enumerate(reference):
        assert not set(shards[0][step]) & set(shards[1][step])
        assert sorted(np.concatenate([shards[0][step], shards[1][step]])) == sorted(rows)
    assert len(set(np.concatenate(reference))) == 96  # an epoch visits every row once
    assert not np.array_equal(np.concatenate(_step_rows(one, epoch=1)), np.concatenate(reference))
    # resuming mid-epoch continues with exactly the batches an uninterrupted run would see
    resumed = list(one.epoch(0, start_step=4))
    uninterrupted = list(one.epoch(0))[4 * 2:]
    assert len(resumed) == len(uninterrupted)
    for a, b in zip(resumed, uninterrupted):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_dataloader_workers_give_the_same_batches(corpus):
    """Draws are seeded per sample, so collating in worker processes changes nothing."""
    collator = TxFMCollator(corpus.profiles, len(corpus.gene_ids), 16)
    plan = plan_batches(16, 8, 1)
    inline = list(TrainBatches(corpus, collator, plan, rank=0, seed=2).epoch(1, start_step=2))
    workers = list(TrainBatches(corpus, collator, plan, rank=0, seed=2, num_workers=2).epoch(1, start_step=2))
    assert len(inline) == len(workers) == (6 - 2) * 2
    assert all(torch.equal(a[k], b[k]) for a, b in zip(inline, workers) for k in a)


def test_validation_is_fixed_and_split_across_processes(corpus):
    collator = TxFMCollator(corpus.profiles, len(corpus.gene_ids), 16)
    whole = ValidationBatches(corpus, collator, batch_size=8, max_samples=100, rank=0, world_size=1, seed=0)
    halves = [ValidationBatches(corpus, collator, batch_size=8, max_samples=100, rank=r, world_size=2, seed=0)
              for r in (0, 1)]
    assert len(whole) == 20 and len(halves[0]) == len(halves[1]) == 10
    assert not set(halves[0].rows) & set(halves[1].rows)
    first, second = list(whole), list(whole)
    assert all(torch.equal(a["gene_ids"], b["gene_ids"]) for a, b in zip(first, second))


def test_checkpoint_discovery_ignores_incomplete_folders(tmp_path):
    for step, complete in ((5, True), (10, True), (15, False)):
        folder = tmp_path / f"ckpt-{step:08d}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(TrainerState(step=step).to_json())
        if complete:
            (folder / COMPLETE).write_text("ok\n")
    (tmp_path / "ckpt-00000020.tmp").mkdir()
    assert latest_checkpoint(tmp_path).name == "ckpt-00000010"
    assert TrainerState.from_file(latest_checkpoint(tmp_path) / "trainer_state.json").step == 10
    remove_checkpoint(tmp_path / "ckpt-00000010")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["ckpt-00000005"]
    assert latest_checkpoint(tmp_path / "missing") is None
