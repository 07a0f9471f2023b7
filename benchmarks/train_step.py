"""Figures 1–3: training-step speed against the matmul limit and the straightforward baseline, peak
RSS of the step, and the MAE saving of encoding only the K visible genes.

    .venv/bin/python -m benchmarks.train_step [--rounds 5]

FLOP count (stated, and used for every FLOP/s figure; T = K + 1 tokens, d width, w decoder width,
G vocabulary, MLP ratio 4):

    encoder forward / sample = blocks · (24·T·d² + 4·T²·d)
    decoder forward / sample = 2 · (d·w + 2·w² + w·G)
    training step            = 3 · batch · (encoder + decoder)         (backward ≈ 2 × forward)

LayerNorm, GELU, softmax, the embedding gather, the loss and AdamW are not counted (they are
memory-bound and would flatter the figure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import torch

from modeling_txfm.configuration_txfm import PAPER_VOCABULARY_SIZE, TxFMConfig
from modeling_txfm.modeling_txfm import TxFMForMaskedExpressionModeling, TxFMModel

from .common import MatmulReference, Rounds, peak_rss_mib, setup_threads, timed
from .reference_model import reference_like

#: Batch per preset for figure 1: the issue's batch 4 for txfm-s, the tiny training config's 32.
TRAIN_BATCH = {"txfm-s": 4, "txfm-tiny": 32}
#: The smallest gene panel of DiverseRNA-1.4M (K562, 8,248 genes): the cheapest "encode every gene" case.
K562_PANEL = 8_248
#: Other panels of the corpus (TXFM_SPEC §2), for the FLOP side of figure 3.
PANELS = {"K562": 8_248, "glioblastoma atlas": 21_310, "GTEx": 36_695}


def geometry(preset: str, **overrides) -> TxFMConfig:
    """A preset at the paper's 44,349-gene vocabulary (no gene list needed to time it)."""
    return TxFMConfig.from_preset(preset, vocab_size=PAPER_VOCABULARY_SIZE, **overrides)


def encoder_flops(config: TxFMConfig, tokens: int) -> float:
    d = config.hidden_size
    return config.num_hidden_layers * (24 * tokens * d * d + 4 * tokens * tokens * d)


def decoder_flops(config: TxFMConfig) -> float:
    d, w, g = config.hidden_size, config.decoder_hidden_size, config.vocab_size
    return 2 * (d * w + 2 * w * w + w * g)


def train_step_flops(config: TxFMConfig, batch: int) -> float:
    tokens = config.num_visible_genes + 1
    return 3 * batch * (encoder_flops(config, tokens) + decoder_flops(config))


def make_batch(config: TxFMConfig, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full batch (no padding: every corpus panel has ≥ K genes at K = 2048), 70 % of genes profiled."""
    generator = torch.Generator().manual_seed(seed)
    k, g = config.num_visible_genes, config.vocab_size
    return {
        "gene_ids": torch.stack([torch.randperm(g, generator=generator)[:k] for _ in range(batch)]),
        "values": torch.rand(batch, k, generator=generator) * 6,
        "attention_mask": torch.ones(batch, k, dtype=torch.long),
        "targets": torch.rand(batch, g, generator=generator) * 6,
        "profiled_mask": torch.rand(batch, g, generator=generator) > 0.3,
    }


@dataclass
class Step:
    """One optimiser step of a model on a fixed batch: forward + Poisson loss + backward + AdamW."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: dict[str, torch.Tensor]
    returns_output: bool

    def __call__(self) -> float:
        out = self.model(**self.batch)
        loss = out.loss if self.returns_output else out
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def txfm_step(config: TxFMConfig, batch: dict[str, torch.Tensor]) -> Step:
    """Our implementation: fused SDPA, selective recomputation (the default), fused AdamW."""
    torch.manual_seed(0)
    model = TxFMForMaskedExpressionModeling(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-6, fused=True)
    return Step(model, optimizer, batch, returns_output=True)


def reference_step(config: TxFMConfig, batch: dict[str, torch.Tensor], source=None) -> Step:
    """The straightforward baseline: ``nn.TransformerEncoder`` (dropout 0.1, mask), default AdamW."""
    if source is None:
        torch.manual_seed(0)
        source = TxFMForMaskedExpressionModeling(config)
    model = reference_like(source, dropout=0.1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-6)
    return Step(model, optimizer, batch, returns_output=False)


def figure_training_speed(preset: str, rounds: int, log=print) -> dict:
    """Figure 1: matmul, our step and the baseline step, interleaved, ``rounds`` times (+1 warm-up)."""
    config = geometry(preset)
    batch_size = TRAIN_BATCH[preset]
    batch = make_batch(config, batch_size)
    ours = txfm_step(config, batch)
    baseline = reference_step(config, batch, source=ours.model)
    matmul = MatmulReference()
    flops = train_step_flops(config, batch_size)
    results = Rounds()
    for round_index in range(rounds + 1):
        peak = matmul.measure()
        ours_s = timed(ours)
        baseline_s = timed(baseline)
        peak = max(peak, matmul.measure())  # before and after: the limit under this round's load
        if round_index == 0:
            continue  # warm-up (first-touch allocation, oneDNN/MKL kernel selection)
        results.add("matmul", peak)
        results.add("ours_flops", flops / ours_s)
        results.add("baseline_flops", flops / baseline_s)
        results.add("ours_s", ours_s)
        results.add("baseline_s", baseline_s)
        log(f"  {preset} round {round_index}: matmul {peak / 1e9:.0f} GFLOP/s, ours {ours_s:.2f} s, "
            f"baseline {baseline_s:.2f} s")
    return {
        "preset": preset,
        "batch": batch_size,
        "K": config.num_visible_genes,
        "step_gflop": flops / 1e9,
        "matmul_gflops": results.median("matmul") / 1e9,
        "ours_samples_per_s": batch_size / results.median("ours_s"),
        "baseline_samples_per_s": batch_size / results.median("baseline_s"),
        "ours_fraction_of_matmul": results.ratio_median("ours_flops", "matmul"),
        "baseline_fraction_of_matmul": results.ratio_median("baseline_flops", "matmul"),
        "speedup_vs_baseline": results.ratio_median("baseline_s", "ours_s"),
        "samples": results.samples,
    }


# --------------------------------------------------------------------------------------------------
# Figure 2: peak RSS, each implementation in a fresh process (ru_maxrss is per process and monotone)
# --------------------------------------------------------------------------------------------------


def _rss_worker(preset: str, implementation: str, steps: int) -> None:
    setup_threads()
    config = geometry(preset)
    batch = make_batch(config, TRAIN_BATCH[preset])
    before = peak_rss_mib()
    step = txfm_step(config, batch) if implementation == "txfm" else reference_step(config, batch)
    for _ in range(steps):
        step()
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "import_and_data_mib": before}))


def measure_peak_rss(preset: str, implementation: str, steps: int, mmap_threshold: int | None = None) -> dict:
    """Peak RSS of a fresh process that runs ``steps`` training steps (optimizer state included).

    ``mmap_threshold`` sets glibc's ``M_MMAP_THRESHOLD`` (env ``MALLOC_MMAP_THRESHOLD_``): a fixed
    threshold stops glibc from growing it after each free, which otherwise parks freed activation
    buffers in the heap where they fragment and keep RSS ~0.3–0.6 GiB above the live set.
    """
    env = dict(os.environ)
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    code = f"from benchmarks.train_step import _rss_worker; _rss_worker({preset!r}, {implementation!r}, {steps})"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# Figure 3: the MAE saving
# --------------------------------------------------------------------------------------------------


def figure_mae_efficiency(rounds: int, panel: int = K562_PANEL, log=print) -> dict:
    """Encoder forward of one sample at txfm-s width: K = 2048 visible genes vs every profiled gene
    of the panel, the masked ones entering as [MASK] tokens (what the paper rejects). Timed at the
    smallest corpus panel (K562); the FLOP saving is also given for larger panels."""
    config = geometry("txfm-s")
    torch.manual_seed(0)
    encoder = TxFMModel(config).eval()

    def inputs(tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randperm(config.vocab_size)[:tokens][None], torch.rand(1, tokens)

    visible, everything = inputs(config.num_visible_genes), inputs(panel)
    results = Rounds()
    with torch.inference_mode():
        for round_index in range(rounds + 1):
            mae_s = timed(lambda: encoder(*visible))
            full_s = timed(lambda: encoder(*everything))
            if round_index:
                results.add("mae_s", mae_s)
                results.add("full_s", full_s)
                log(f"  MAE round {round_index}: K={config.num_visible_genes} {mae_s:.2f} s, all {panel} genes {full_s:.2f} s")
    k_tokens = config.num_visible_genes + 1
    return {
        "panel": panel,
        "mae_s_per_sample": results.median("mae_s"),
        "full_s_per_sample": results.median("full_s"),
        "time_saving": results.ratio_median("full_s", "mae_s"),
        "flop_saving": encoder_flops(config, panel + 1) / encoder_flops(config, k_tokens),
        "flop_saving_by_panel": {
            name: encoder_flops(config, genes + 1) / encoder_flops(config, k_tokens) for name, genes in PANELS.items()
        },
        "mae_gflop": encoder_flops(config, k_tokens) / 1e9,
        "full_gflop": encoder_flops(config, panel + 1) / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=["txfm-tiny", "txfm-s"])
    parser.add_argument("--rss-only", action="store_true", help="only figure 2 (peak RSS, fresh processes)")
    args = parser.parse_args(argv)
    setup_threads()
    if args.rss_only:
        for implementation, steps, threshold in (("txfm", 3, None), ("txfm", 3, 1 << 20), ("reference", 1, None)):
            result = measure_peak_rss("txfm-s", implementation, steps, threshold)
            print(json.dumps({"implementation": implementation, "mmap_threshold": threshold, **result}), flush=True)
        return 0
    for preset in args.presets:
        result = figure_training_speed(preset, args.rounds)
        result.pop("samples")
        print(json.dumps(result))
    print(json.dumps(measure_peak_rss("txfm-s", "txfm", steps=3)))
    print(json.dumps(figure_mae_efficiency(args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
