"""Pretraining throughput of the `training/` loop: samples/s, tokens/s and achieved FLOP/s, per preset.

    .venv/bin/python -m benchmarks.train_pretrain [--presets txfm-tiny txfm-s] [--steps 4] [--device auto]

What is timed is one optimizer step exactly as ``training/pretrain.py`` runs it: the collator building a
batch from corpus rows (K = 2048 visible genes drawn per sample, dense [B, G] targets), forward, the
Poisson loss, backward, gradient clipping, AdamW and the LR schedule. The corpus is synthetic
(``training.synthetic``) at the paper's vocabulary size (44,349 genes) with two gene panels of 8,248
and 21,310 genes (the K562 and glioblastoma panels' sizes), so no sample needs padding at K = 2048.

FLOPs (T = K + 1 tokens, d width, w decoder width, G vocabulary; the formula of
``benchmarks/train_step.py``): step = 3 · B · [blocks · (24·T·d² + 4·T²·d) + 2 · (d·w + 2·w² + w·G)].
Achieved FLOP/s is reported as a fraction of a 2048 × 2048 fp32 matmul timed in the same process just
before each step (the machine is shared, so only same-moment ratios mean anything); medians over steps.
Each preset runs in its own process so that peak memory is its own. On CUDA the step runs under bf16
autocast (loss in fp32) and the reference matmul is bf16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

import torch

from modeling_txfm.configuration_txfm import PAPER_VOCABULARY_SIZE, TxFMConfig
from modeling_txfm.modeling_txfm import TxFMForMaskedExpressionModeling

from .common import MatmulReference, machine_info, peak_rss_mib, setup_threads

DEFAULT_BATCH = {"cpu": {"txfm-tiny": 16, "txfm-s": 4}, "cuda": {"txfm-tiny": 256, "txfm-s": 64}}
INPUTS = ("gene_ids", "values", "attention_mask", "targets", "profiled_mask")


def step_flops(config: TxFMConfig, batch: int, tokens: int) -> float:
    d, w, g = config.hidden_size, config.decoder_hidden_size, config.vocab_size
    encoder = config.num_hidden_layers * (24 * tokens * d * d + 4 * tokens * tokens * d)
    decoder = 2 * (d * w + (config.decoder_num_layers - 2) * w * w + w * g)
    return 3.0 * batch * (encoder + decoder)


def measure(preset: str, batch: int, steps: int, device: str, k: int) -> dict:
    from training.collator import TxFMCollator
    from training.config import plan_batches
    from training.data import TrainBatches, open_corpus
    from training.pretrain import one_cycle_cosine, parameter_groups
    from training.synthetic import write_synthetic_corpus

    setup_threads()
    torch.manual_seed(0)
    cuda = device == "cuda"
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic_corpus(folder, n_train=batch * (steps + 1), n_validation=1, n_genes=PAPER_VOCABULARY_SIZE,
                               profile_sizes=(8_248, 21_310), depth=5_000, seed=0)
        corpus = open_corpus(folder)
        config = TxFMConfig.from_preset(preset, gene_ids=corpus.gene_ids, num_visible_genes=k)
        model = TxFMForMaskedExpressionModeling(config).to(device).train()
        collator = TxFMCollator(corpus.profiles, config.vocab_size, k, config.library_size)
        data = TrainBatches(corpus, collator, plan_batches(batch, batch, 1), rank=0, seed=0)
        optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.999), eps=1e-6)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(one_cycle_cosine, warmup_steps=1,
                                                                         total_steps=steps + 1))
        reference = MatmulReference()
        if cuda:
            reference.a, reference.b = reference.a.cuda().bfloat16(), reference.b.cuda().bfloat16()
            reference.out = reference.out.cuda().bfloat16()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        step_times, data_times, matmul, widths = [], [], [], []
        batches = data.epoch(0)
        for step in range(steps + 1):  # step 0 is warm-up
            if cuda:
                torch.cuda.synchronize()
            matmul.append(reference.measure())
            start = time.perf_counter()
            inputs = next(batches)
            inputs = {key: inputs[key].to(device, non_blocking=True) for key in INPUTS}
            loaded = time.perf_counter()
            with autocast:
                loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            end = time.perf_counter()
            if step:
                step_times.append(end - start)
                data_times.append(loaded - start)
                widths.append(inputs["gene_ids"].shape[1])
        tokens = widths[0] + 1
        flops = step_flops(config, batch, tokens)
        ratios = [flops / t / m for t, m in zip(step_times, matmul[1:])]
        seconds = statistics.median(step_times)
        return {
            "preset": preset,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "precision": "bf16 autocast" if cuda else "fp32",
            "parameters": model.num_parameters(),
            "K": k,
            "batch": batch,
            "steps timed": steps,
            "step s (median)": seconds,
            "samples/s": batch / seconds,
            "tokens/s": batch * tokens / seconds,
            "GFLOP/s": flops / seconds / 1e9,
            "matmul GFLOP/s": statistics.median(matmul[1:]) / 1e9,
            "fraction of matmul": statistics.median(ratios),
            "data fraction of step": statistics.median(d / t for d, t in zip(data_times, step_times)),
            "peak RSS MiB": peak_rss_mib(),
            "peak GPU MiB": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "final loss": float(loss),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["txfm-tiny", "txfm-s"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, help="default: per preset and device (DEFAULT_BATCH)")
    parser.add_argument("--k", type=int, default=2048)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process: one preset
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.one:
        preset = args.presets[0]
        print(json.dumps(measure(preset, args.batch or DEFAULT_BATCH[device][preset], args.steps, device, args.k)))
        return 0
    print(json.dumps(machine_info()))
    rows = []
    for preset in args.presets:
        command = [sys.executable, "-m", "benchmarks.train_pretrain", "--one", "--presets", preset, "--steps",
                   str(args.steps), "--k", str(args.k), "--device", device]
        if args.batch:
            command += ["--batch", str(args.batch)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    print("\n| preset | device | batch | K | samples/s | tokens/s | GFLOP/s | × matmul | data share | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        memory = f"{r['peak GPU MiB']:.0f} MiB GPU" if r["peak GPU MiB"] else f"{r['peak RSS MiB']:.0f} MiB RSS"
        print(f"| {r['preset']} | {r['device']} ({r['precision']}) | {r['batch']} | {r['K']} | {r['samples/s']:.2f} | "
              f"{r['tokens/s']:.0f} | {r['GFLOP/s']:.1f} | {r['fraction of matmul']:.2f} "
              f"(matmul {r['matmul GFLOP/s']:.0f}) | {r['data fraction of step']:.2f} | {memory} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
