"""TxFM pretraining (and SSL fine-tuning) with Accelerate: the paper's recipe, from a laptop to a cluster.

    accelerate launch training/pretrain.py --config training/configs/txfm-tiny.yaml \\
        --corpus runs/demo/corpus --output_dir runs/demo/model [--key value ...]

Any setting of :class:`training.config.TrainConfig` can be given in the YAML file or as ``--key value``
(``--model.key value`` for model settings). The same script runs on one CPU process (fp32), one GPU
(bf16 autocast, loss in fp32), ``--num_processes N`` data parallel, or FSDP through an accelerate
config file (``training/configs/accelerate-fsdp.yaml``).

The loop, in order: build the model (preset + corpus vocabulary, or ``--init_from``), the data
(:mod:`training.data`: disjoint per-process shards, per-sample seeded K-gene draws), AdamW with the
paper's weight decay 1/(lr·steps) and a one-cycle cosine schedule; optionally resume from the newest
complete checkpoint; then per optimizer step: accumulate micro batches, clip, step, log, evaluate,
checkpoint. SIGTERM/SIGINT finish the current step, save a checkpoint and exit with 128 + signal.
At the end the model is exported with ``save_pretrained`` (and optionally pushed to the Hub).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from modeling_txfm import TxFMConfig, TxFMForMaskedExpressionModeling
from training.checkpoint import TrainerState, latest_checkpoint, save_checkpoint
from training.collator import TxFMCollator, masked_gene_mask
from training.config import ConfigError, TrainConfig, load_config, plan_batches, total_optimizer_steps
from training.data import CorpusError, TrainBatches, ValidationBatches, open_corpus
from training.export import HubPushError, export_pretrained, push_to_hub
from training.memory import return_large_buffers_to_os
from training.tracking import CSVTracker

LOGGER = logging.getLogger("txfm.pretrain")
MODEL_INPUTS = ("gene_ids", "values", "attention_mask", "targets", "profiled_mask")


def one_cycle_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up 0 → 1 over ``warmup_steps``, then cosine 1 → 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices (incl. the gene embeddings); not biases, norms, LayerScale or the CLS token."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 and "cls_token" not in name else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(cfg: TrainConfig, gene_ids: list[str], symbols: list[str]) -> TxFMForMaskedExpressionModeling:
    """Preset + corpus vocabulary; or, with ``init_from``, the saved model (whose vocabulary must match)."""
    if cfg.init_from:
        model = TxFMForMaskedExpressionModeling.from_pretrained(cfg.init_from, dtype=torch.float32)
        if list(model.config.gene_ids or []) != list(gene_ids):
            raise CorpusError(
                f"The corpus {cfg.corpus} was built with a different gene vocabulary ({len(gene_ids):,} genes) "
                f"than the model {cfg.init_from} ({model.config.vocab_size:,} genes). Rebuild the corpus with the "
                f"model's vocabulary: `txfm build-corpus ... --vocabulary {cfg.init_from}/config.json` (or its "
                "vocabulary.json)."
            )
        if cfg.model:
            LOGGER.warning("--init_from: ignoring model overrides %s (the architecture is the checkpoint's)", cfg.model)
        return model
    config = TxFMConfig.from_preset(cfg.preset, gene_ids=gene_ids, gene_symbols=symbols, **cfg.model)
    return TxFMForMaskedExpressionModeling(config)


class StopRequest:
    """SIGTERM/SIGINT: remember the signal; the loop saves a checkpoint after the current step and exits.
    A second signal interrupts at once (the last complete checkpoint is still there)."""

    def __init__(self):
        self.signum: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second signal {signum}: stopping without a checkpoint")
        self.signum = signum

    def agreed(self, accelerator: Accelerator) -> int | None:
        """The signal, once every process knows of it (all stop after the same step)."""
        if accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor([1 if self.signum else 0], device=accelerator.device)
        if accelerator.reduce(flag, reduction="sum").item() == 0:
            return None
        return self.signum or signal.SIGTERM


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: ValidationBatches, accelerator: Accelerator) -> dict[str, float]:
    """Poisson loss over profiled genes and over masked genes only, and the per-sample Pearson r of
    predicted vs true log1p values on the masked genes (reconstruction quality), over all processes."""
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=accelerator.device)
    for batch in batches:
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
        predictions = model(batch["gene_ids"], batch["values"], batch["attention_mask"]).predictions.float()
        targets = batch["targets"]
        per_gene = torch.exp(predictions) - predictions * torch.exp(targets)
        profiled = batch["profiled_mask"].float()
        masked = masked_gene_mask(batch).float()
        n_masked = masked.sum(1)
        loss = (per_gene * profiled).sum(1) / profiled.sum(1).clamp(min=1)
        masked_loss = (per_gene * masked).sum(1) / n_masked.clamp(min=1)
        # Pearson r per sample over its masked genes
        mean_p = (predictions * masked).sum(1, keepdim=True) / n_masked.clamp(min=1)[:, None]
        mean_t = (targets * masked).sum(1, keepdim=True) / n_masked.clamp(min=1)[:, None]
        dp, dt = (predictions - mean_p) * masked, (targets - mean_t) * masked
        var_p, var_t = (dp * dp).sum(1), (dt * dt).sum(1)
        valid = (n_masked >= 2) & (var_p > 0) & (var_t > 0)
        r = (dp * dt).sum(1) / (var_p * var_t).clamp(min=1e-30).sqrt()
        sums += torch.stack([
            loss.sum(), masked_loss.sum(), r[valid].sum(), valid.sum(), torch.tensor(len(loss), device=loss.device)
        ]).double()
    sums = accelerator.reduce(sums, reduction="sum")
    model.train()
    n = max(sums[4].item(), 1.0)
    return {
        "val/loss": sums[0].item() / n,
        "val/masked_loss": sums[1].item() / n,
        "val/masked_pearson": sums[2].item() / max(sums[3].item(), 1.0),
        "val/samples": sums[4].item(),
    }


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    output_dir = Path(cfg.output_dir)
    checkpoint_dir, log_dir = output_dir / "checkpoints", output_dir / "logs"

    # ---- accelerator: fp32 on CPU (bf16 is ~10x slower there), bf16 autocast on GPUs ----
    if not torch.cuda.is_available():
        return_large_buffers_to_os()  # activation buffers back to the OS: ~0.4 GiB less peak RSS (training/memory.py)
    mixed_precision = cfg.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() else "no"
    resume_from = latest_checkpoint(checkpoint_dir) if cfg.resume else None
    resume_state = TrainerState.from_file(resume_from / "trainer_state.json") if resume_from else None
    trackers: list = [t for t in cfg.trackers if t != "csv"]
    if "csv" in cfg.trackers:
        trackers.append(CSVTracker(log_dir / "metrics.csv", resume_step=resume_state.step if resume_state else 0))
    # `accelerate launch --cpu` runs one process whatever --num_processes says (accelerate#2741); N CPU
    # processes come from `accelerate launch --multi_gpu --num_processes N` (torchrun), which only needs
    # `cpu=True` here to pick gloo when there is no GPU.
    launched_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=launched_distributed and not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(log_dir)),
        dynamo_backend="inductor" if cfg.compile else None,
    )
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if mixed_precision == "bf16" and accelerator.device.type == "cpu":
        LOGGER.warning("bf16 on CPU is about 10x slower than fp32 on CPUs without AMX: use --mixed_precision no")
    rank, world = accelerator.process_index, accelerator.num_processes
    plan = plan_batches(cfg.global_batch_size, cfg.per_device_batch_size, world)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "training_config.yaml").write_text(yaml.safe_dump(vars(cfg), sort_keys=False))

    # ---- data and model ----
    with accelerator.main_process_first():  # the first open converts Parquet to Arrow once, in one process
        corpus = open_corpus(cfg.corpus, streaming=cfg.streaming)
    set_seed(cfg.seed)  # identical initial weights everywhere
    model = build_model(cfg, corpus.gene_ids, corpus.symbols)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model_config = model.config
    collator = TxFMCollator(corpus.profiles, model_config.vocab_size, model_config.num_visible_genes,
                            model_config.library_size)
    train = TrainBatches(corpus, collator, plan, rank, cfg.seed, cfg.num_workers,
                         pin_memory=accelerator.device.type == "cuda")
    validation = ValidationBatches(corpus, collator, cfg.eval_batch_size or plan.micro_batch_size,
                                   cfg.max_eval_samples, rank, world, cfg.seed)
    total_steps = total_optimizer_steps(cfg, train.steps_per_epoch)
    weight_decay = cfg.weight_decay if cfg.weight_decay is not None else 1.0 / (cfg.learning_rate * total_steps)
    warmup_steps = max(1, round(cfg.warmup_ratio * total_steps))
    LOGGER.info(
        "%s: %s parameters | corpus %s: %d train / %d validation rows | %d processes x micro batch %d x "
        "accumulation %d = global batch %d | %d steps/epoch, %d steps (%.2f epochs) | weight decay %.3g | %s",
        model_config.preset or "model", f"{model.num_parameters():,}", cfg.corpus, corpus.num_train_rows,
        corpus.num_validation_rows, world, plan.micro_batch_size, plan.accumulation_steps,
        plan.global_batch_size, train.steps_per_epoch, total_steps, total_steps / train.steps_per_epoch,
        weight_decay, f"mixed precision {mixed_precision}",
    )

    # ---- optimisation ----
    # fused AdamW: one kernel over all parameters instead of several passes (CPU and CUDA); FSDP's sharded
    # parameters keep the default implementation
    fused = accelerator.distributed_type != DistributedType.FSDP
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=cfg.learning_rate,
                                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)
    # Not passed to prepare(): Accelerate would step it once per process per step. Registered for save_state.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(one_cycle_cosine, warmup_steps=warmup_steps, total_steps=total_steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    eval_model = model if accelerator.distributed_type == DistributedType.FSDP else accelerator.unwrap_model(model)

    state = TrainerState(global_batch_size=plan.global_batch_size, num_processes=world, seed=cfg.seed,
                         total_steps=total_steps)
    if resume_from is not None:
        if resume_state.global_batch_size != plan.global_batch_size or resume_state.seed != cfg.seed:
            raise ConfigError(
                f"{resume_from} was trained with global batch {resume_state.global_batch_size} and seed "
                f"{resume_state.seed}; resuming with {plan.global_batch_size} / {cfg.seed} would change the data order."
            )
        if resume_state.total_steps != total_steps:
            raise ConfigError(f"{resume_from} has a {resume_state.total_steps}-step schedule, this run {total_steps}")
        if resume_state.num_processes != world:
            LOGGER.warning("resuming a %d-process run on %d processes: same data, different RNG streams",
                           resume_state.num_processes, world)
        accelerator.load_state(str(resume_from))
        state = resume_state
        state.num_processes = world
        LOGGER.info("resumed from %s: step %d, epoch %d, step %d of the epoch", resume_from, state.step,
                    state.epoch, state.step_in_epoch)
    else:
        if cfg.resume:
            LOGGER.info("--resume: no complete checkpoint in %s, starting from scratch", checkpoint_dir)
        set_seed(cfg.seed, device_specific=True)  # per-process streams for stochastic depth (resume restores them)

    accelerator.init_trackers("tensorboard", config=cfg.to_flat_dict())
    stop = StopRequest()
    rows_log = None
    if cfg.record_rows:
        log_dir.mkdir(parents=True, exist_ok=True)
        rows_log = open(log_dir / f"rows-rank{rank}.txt", "a" if resume_from else "w")  # noqa: SIM115
    progress = tqdm(total=total_steps, initial=state.step, desc="pretrain", dynamic_ncols=True,
                    disable=not (accelerator.is_main_process and cfg.progress_bar))
    last_saved, last_metrics, stopped_by = -1, {}, None
    window_start, window_samples, window_tokens = time.perf_counter(), 0, 0

    # ---- the loop ----
    if resume_from is None and cfg.eval_every and len(validation):  # the untrained baseline, logged at step 0
        initial = evaluate(eval_model, validation, accelerator)
        accelerator.log(initial, step=0)
        LOGGER.info("step 0: %s", ", ".join(f"{k} {v:.4f}" for k, v in initial.items()))
    model.train()
    while state.step < total_steps and stopped_by is None:
        micro_batches = iter(train.epoch(state.epoch, state.step_in_epoch))
        for _ in range(state.step_in_epoch, train.steps_per_epoch):
            step_loss = torch.zeros((), device=accelerator.device)
            for micro in range(plan.accumulation_steps):
                batch = next(micro_batches)
                rows = batch.pop("row_index", None)
                if rows_log is not None and rows is not None:
                    rows_log.write(f"{state.step} {' '.join(map(str, rows.tolist()))}\n")
                batch = {k: batch[k].to(accelerator.device, non_blocking=True) for k in MODEL_INPUTS}
                window_tokens += batch["gene_ids"].numel() + batch["gene_ids"].shape[0]
                last = micro == plan.accumulation_steps - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss / plan.accumulation_steps)
                step_loss += loss.detach() / plan.accumulation_steps
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.step_in_epoch += 1
            state.samples_seen += plan.global_batch_size
            if state.step_in_epoch == train.steps_per_epoch:
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
            window_samples += plan.global_batch_size
            progress.update(1)
            done = state.step >= total_steps

            metrics: dict[str, float] = {}
            if state.step % cfg.log_every == 0 or done:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                metrics = {
                    "train/loss": accelerator.reduce(step_loss, reduction="mean").item(),
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/grad_norm": float(grad_norm),
                    "train/epoch": state.epoch + state.step_in_epoch / train.steps_per_epoch,
                    "train/samples_per_s": window_samples / elapsed,
                    "train/tokens_per_s": window_tokens * world / elapsed,
                }
                progress.set_postfix(loss=f"{metrics['train/loss']:.4f}",
                                     samples_s=f"{metrics['train/samples_per_s']:.1f}",
                                     tokens_s=f"{metrics['train/tokens_per_s']:.3g}")
                window_start, window_samples, window_tokens = time.perf_counter(), 0, 0
            paused = time.perf_counter()  # evaluation and checkpoints do not count against throughput
            if ((cfg.eval_every and state.step % cfg.eval_every == 0) or done) and len(validation):
                metrics.update(evaluate(eval_model, validation, accelerator))
                LOGGER.info("step %d: %s", state.step,
                            ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val/")))
            if metrics:
                accelerator.log(metrics, step=state.step)
                last_metrics.update(metrics)
            stopped_by = stop.agreed(accelerator)
            if (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0) or done or stopped_by:
                path = save_checkpoint(accelerator, checkpoint_dir, state, cfg.keep_last)
                last_saved = state.step
                LOGGER.info("checkpoint %s", path)
            window_start += time.perf_counter() - paused
            if done or stopped_by:
                break
    progress.close()
    if rows_log is not None:
        rows_log.close()
    if stopped_by:
        LOGGER.warning("signal %d: saved a checkpoint at step %d and stopped; continue with --resume",
                       stopped_by, last_saved)
        accelerator.end_training()
        return 128 + int(stopped_by)

    # ---- publish ----
    summary = {
        "corpus": str(cfg.corpus), "corpus_samples": corpus.num_train_rows, "init_from": cfg.init_from,
        "steps": state.step, "samples_seen": state.samples_seen,
        "epochs": round(state.samples_seen / corpus.num_train_rows, 3),
        "global_batch_size": plan.global_batch_size, "num_processes": world, "learning_rate": cfg.learning_rate,
        "weight_decay": weight_decay, "mixed_precision": mixed_precision,
        "final_train_loss": last_metrics.get("train/loss"), "final_validation_loss": last_metrics.get("val/loss"),
        "validation_masked_pearson": last_metrics.get("val/masked_pearson"),
        "metrics": {k: v for k, v in last_metrics.items() if k.startswith(("val/", "train/loss"))},
    }
    export_pretrained(accelerator, model, output_dir, summary, cfg.to_flat_dict())
    accelerator.wait_for_everyone()
    accelerator.end_training()
    LOGGER.info("saved the model to %s (AutoModel.from_pretrained(..., trust_remote_code=True))", output_dir)
    if cfg.push_to_hub and accelerator.is_main_process:
        try:
            LOGGER.info("pushed: %s", push_to_hub(output_dir, cfg.hub_model_id, cfg.hub_private))
        except HubPushError as error:
            LOGGER.error("%s", error)
            return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConfigError, CorpusError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
