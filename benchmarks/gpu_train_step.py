"""Figure 6 (GPU only): txfm-b training-step throughput in bf16, MFU and peak GPU memory.

    python -m benchmarks.gpu_train_step [--batch 64] [--steps 20] [--peak-tflops 989]

Runs only where CUDA is available (``python -m benchmarks`` reports "not measurable" otherwise).
For ``torch.compile`` off and on: forward (bf16 autocast, fp32 loss) + backward + fused AdamW on
the txfm-b geometry (12 blocks, width 768, K = 2048, 44,349 genes), SDPA restricted to the
flash/efficient kernels (a fallback to the math kernel raises instead of silently materialising
K×K). Reports samples/s, model FLOP utilisation against ``--peak-tflops`` (H100 SXM dense bf16:
989 TFLOP/s; H200 the same) by the FLOP formula of ``benchmarks.train_step``, peak GPU memory, and
the ratio to the paper's implied 92 samples/s/GPU (target ≥ 2.5×). Prints one JSON line per mode.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .train_step import geometry, make_batch, train_step_flops

PAPER_SAMPLES_PER_S = 1.43e6 * 200 / (864 * 3600)  # ≈ 92 per GPU


def run(compile_model: bool, batch: int, steps: int, peak_tflops: float) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from modeling_txfm import TxFMForMaskedExpressionModeling

    config = geometry("txfm-b")
    torch.manual_seed(0)
    model = TxFMForMaskedExpressionModeling(config).cuda().train()
    model.set_activation_recompute("none")  # memory is plentiful on the card: keep everything
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-6, fused=True)
    inputs = {k: v.cuda() for k, v in make_batch(config, batch).items()}
    forward = torch.compile(model) if compile_model else model

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        for _ in range(3):  # warm-up (and compilation)
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    samples_per_s = batch / seconds
    return {
        "compile": compile_model,
        "batch": batch,
        "device": torch.cuda.get_device_name(),
        "median_step_s": seconds,
        "samples_per_s": samples_per_s,
        "mfu": train_step_flops(config, batch) / seconds / (peak_tflops * 1e12),
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "vs_paper_92_samples_per_s": samples_per_s / PAPER_SAMPLES_PER_S,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"figure": "gpu", "status": "not measurable: no CUDA device in this session"}))
        return 0
    for compile_model in (False, True):
        print(json.dumps(run(compile_model, args.batch, args.steps, args.peak_tflops)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
