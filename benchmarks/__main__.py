"""``python -m benchmarks`` (``make bench``): every performance figure of issue 7 next to its target.

Prints a table (figure | measured | target | met?) and rewrites the "Performance" section of
``benchmarks/RESULTS.md`` (other sections, written by others, are kept). Every timing is a median
of ``--rounds`` interleaved rounds in this process, against the 2048×2048 fp32 matmul and/or the
straightforward baseline measured in the same rounds (see ``benchmarks.common`` for why).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data_path, gpu_train_step, inference, train_step
from .common import machine_info, setup_threads

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
GIB = 1024.0
MMAP_THRESHOLD = 1 << 20


@dataclass
class Row:
    figure: str
    measured: str
    target: str
    met: bool | None  # None: informational or not measurable

    def cells(self) -> list[str]:
        verdict = {True: "yes", False: "**no**", None: "—"}[self.met]
        return [self.figure, self.measured, self.target, verdict]


def run_all(args: argparse.Namespace, log) -> tuple[list[Row], dict]:
    rows: list[Row] = []
    raw: dict = {}

    # 1. training step speed
    for preset in ("txfm-tiny", "txfm-s"):
        log(f"[1] training step, {preset}")
        result = train_step.figure_training_speed(preset, args.rounds, log=log)
        raw[f"train_{preset}"] = result
        label = f"{preset} step (B={result['batch']}, K={result['K']}, {result['step_gflop']:.0f} GFLOP)"
        rows.append(Row(f"1 {label}: FLOP/s ÷ matmul", f"{100 * result['ours_fraction_of_matmul']:.0f} % "
                        f"(baseline {100 * result['baseline_fraction_of_matmul']:.0f} %; matmul "
                        f"{result['matmul_gflops']:.0f} GFLOP/s)", "≥ 50 %", result["ours_fraction_of_matmul"] >= 0.5))
        rows.append(Row(f"1 {preset}: samples/s vs baseline", f"{result['ours_samples_per_s']:.3g} vs "
                        f"{result['baseline_samples_per_s']:.3g} → {result['speedup_vs_baseline']:.2f}×", "≥ 2×",
                        result["speedup_vs_baseline"] >= 2.0))

    # 2. training memory (fresh processes)
    log("[2] peak RSS of the txfm-s step (fresh processes, 3 steps)")
    default = train_step.measure_peak_rss("txfm-s", "txfm", steps=3)
    tuned = train_step.measure_peak_rss("txfm-s", "txfm", steps=3, mmap_threshold=MMAP_THRESHOLD)
    raw["rss"] = {"txfm_default_malloc": default, "txfm_mmap_threshold_1MiB": tuned}
    rows.append(Row("2 txfm-s peak RSS (B=4, K=2048, AdamW state incl.), glibc defaults",
                    f"{default['peak_rss_mib'] / GIB:.2f} GiB (imports alone {default['import_and_data_mib'] / GIB:.2f})",
                    "≤ 2.5 GiB", default["peak_rss_mib"] <= 2.5 * GIB))
    rows.append(Row("2 txfm-s peak RSS, M_MMAP_THRESHOLD 1 MiB (as training/pretrain.py sets it)", f"{tuned['peak_rss_mib'] / GIB:.2f} GiB",
                    "≤ 2.5 GiB", tuned["peak_rss_mib"] <= 2.5 * GIB))
    if not args.skip_reference_rss:
        log("[2] peak RSS of the baseline step (1 step)")
        reference = train_step.measure_peak_rss("txfm-s", "reference", steps=1)
        raw["rss"]["reference"] = reference
        rows.append(Row("2 baseline peak RSS (same step)", f"{reference['peak_rss_mib'] / GIB:.2f} GiB", "(~10 GiB)", None))

    # 3. MAE efficiency
    log("[3] MAE: K visible genes vs every profiled gene with [MASK] tokens")
    mae = train_step.figure_mae_efficiency(args.rounds, log=log)
    raw["mae"] = mae
    others = ", ".join(f"{name} {saving:.0f}×" for name, saving in mae["flop_saving_by_panel"].items())
    rows.append(Row(f"3 MAE saving, txfm-s encoder, {mae['panel']:,}-gene panel: FLOPs",
                    f"{mae['full_gflop']:.0f} vs {mae['mae_gflop']:.0f} GFLOP/sample → {mae['flop_saving']:.1f}× "
                    f"({others})", "show", None))
    rows.append(Row("3 MAE saving: measured time per sample",
                    f"{mae['full_s_per_sample']:.2f} s vs {mae['mae_s_per_sample']:.2f} s → {mae['time_saving']:.1f}×",
                    "show", None))

    # 4. inference
    with tempfile.TemporaryDirectory(prefix="txfm-bench-") as folder:
        for preset in ("txfm-tiny", "txfm-s"):
            log(f"[4] embed throughput, {preset}")
            result = inference.figure_embed_throughput(preset, args.rounds, Path(folder), log=log)
            raw[f"embed_{preset}"] = result
            rows.append(Row(f"4 {preset} embed on wu2020 h5ad (K={result['K']}): embed ÷ bare forward",
                            f"{result['embed_cells_per_s']:.3g} vs {result['bare_cells_per_s']:.3g} cells/s → "
                            f"{100 * result['embed_fraction_of_bare']:.0f} %", "≥ 80 %",
                            result["embed_fraction_of_bare"] >= 0.8))

    # 5. data path
    log("[5] collator + DataLoader vs the txfm-s step")
    step_s = raw["train_txfm-s"]["batch"] / raw["train_txfm-s"]["ours_samples_per_s"]
    collate = data_path.figure_collator(step_s, rounds=args.rounds)
    raw["collator"] = collate
    rows.append(Row("5 collator+DataLoader batch (B=4, G=44,349) vs txfm-s step",
                    f"{collate['collate_ms_per_batch']:.2f} ms vs {collate['step_s']:.1f} s → {collate['headroom']:.0f}×",
                    "≥ 10×", collate["headroom"] >= 10))
    if not args.skip_corpus:
        log("[5] corpus builder on a generated sparse h5ad")
        corpus = data_path.figure_corpus_builder()
        raw["corpus"] = corpus
        rows.append(Row(f"5 corpus builder, {corpus['cells']:,}-cell sparse h5ad (process start incl.)",
                        f"{corpus['cells_per_s']:,.0f} cells/s ({corpus['build_s']:.1f} s)", "≥ 20,000 cells/s",
                        corpus["cells_per_s"] >= 20_000))

    # 6. GPU
    if torch.cuda.is_available():
        log("[6] GPU txfm-b step")
        completed = subprocess.run([sys.executable, "-m", "benchmarks.gpu_train_step"], capture_output=True, text=True)
        results = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
        raw["gpu"] = results
        for result in results:
            rows.append(Row(f"6 txfm-b bf16 step, compile={result['compile']}, {result['device']}",
                            f"{result['samples_per_s']:.0f} samples/s, MFU {100 * result['mfu']:.0f} %, "
                            f"{result['peak_gpu_memory_gib']:.1f} GiB → {result['vs_paper_92_samples_per_s']:.2f}× paper",
                            "≥ 2.5× 92 samples/s", result["vs_paper_92_samples_per_s"] >= 2.5))
    else:
        rows.append(Row("6 txfm-b bf16 GPU step", "not measurable here: no GPU in this session; run "
                        "`python -m benchmarks.gpu_train_step` on one", f"≥ 2.5× {gpu_train_step.PAPER_SAMPLES_PER_S:.0f} "
                        "samples/s", None))
    return rows, raw


def table(rows: list[Row]) -> str:
    lines = ["| figure | measured | target | met? |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def performance_section(rows: list[Row], info: dict, seconds: float, rounds: int) -> str:
    machine = "; ".join(f"{key}: {value}" for key, value in info.items())
    return f"""## Performance

Written by `python -m benchmarks` (`make bench`) on {time.strftime('%Y-%m-%d %H:%M %Z')}; {seconds / 60:.1f} min.
Machine: {machine}. The 2 cores are shared with other tenants: every figure is a median of {rounds}
interleaved rounds (after one warm-up round) of ratios against the 2048×2048 fp32 matmul and/or the
straightforward baseline (`benchmarks/reference_model.py`, `nn.TransformerEncoder`, dropout 0.1,
key-padding mask) measured in the same process and round.

FLOPs (T = K + 1 tokens, d width, w decoder width, G = 44,349 genes, MLP ratio 4):
encoder forward/sample = blocks·(24·T·d² + 4·T²·d); decoder forward/sample = 2·(d·w + 2·w² + w·G);
training step = 3 · batch · (encoder + decoder). LayerNorm/GELU/softmax/loss/AdamW are not counted.

{table(rows)}

Our step: `TxFMForMaskedExpressionModeling` (fused SDPA attention, mask passed only when something is
padded, selective activation recomputation: only matmul and attention outputs are kept for backward)
+ `torch.optim.AdamW(fused=True)`, `zero_grad(set_to_none=True)`. Numerics equal to the baseline's
(losses and gradients on the same batch, padded and not): `tests/test_perf_numerics.py`.
"""


def write_results(section: str) -> None:
    """Replace our section in RESULTS.md (from '## Performance' to the next '## '), keep the rest."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## Performance\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per figure (median), ≥ 5 for the record")
    parser.add_argument("--skip-reference-rss", action="store_true", help="skip the baseline's ~10 GiB RSS run")
    parser.add_argument("--skip-corpus", action="store_true", help="skip the corpus-builder run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--json", type=Path, default=None, help="also write every raw measurement here")
    args = parser.parse_args(argv)
    setup_threads()
    start = time.perf_counter()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows, raw = run_all(args, log)
    seconds = time.perf_counter() - start
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x)))
    if not args.no_write:
        write_results(performance_section(rows, machine_info(), seconds, args.rounds))
        print(f"\nwrote the Performance section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
