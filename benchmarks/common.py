"""Shared measuring tools: the in-process matmul reference, interleaved medians, machine facts.

Why interleaved: the 2 cores are shared with other tenants, so absolute timings swing by 3× within a
minute. Every figure is therefore a *ratio* against something measured in the same process in the
same round (the 2048×2048 fp32 matmul, or the straightforward baseline), and the median over rounds.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

THREADS = 2
MATMUL_N = 2048


def setup_threads(threads: int = THREADS) -> None:
    """Pin intra-op threads (the machine has 2 cores); inter-op parallelism is not used."""
    torch.set_num_threads(threads)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class MatmulReference:
    """FLOP/s of a 2048×2048 fp32 matmul, the machine's practical dense-compute limit right now."""

    def __init__(self, n: int = MATMUL_N, repeats: int = 3):
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=generator)
        self.b = torch.randn(n, n, generator=generator)
        self.out = torch.empty(n, n)
        self.flops = 2.0 * n**3
        self.repeats = repeats
        torch.mm(self.a, self.b, out=self.out)  # warm-up

    def measure(self) -> float:
        """Best of a few back-to-back matmuls (FLOP/s): the limit, not an average of interruptions."""
        return max(self.flops / timed(lambda: torch.mm(self.a, self.b, out=self.out)) for _ in range(self.repeats))


@dataclass
class Rounds:
    """Per-round samples of several named measurements taken interleaved in one process."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio_median(self, numerator: str, denominator: str) -> float:
        """Median of per-round ratios: each ratio pairs measurements taken under the same load."""
        pairs = zip(self.samples[numerator], self.samples[denominator])
        return statistics.median(a / b for a, b in pairs)


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB: ``VmHWM`` of /proc/self/status.

    Not ``ru_maxrss``: Linux carries that over fork + exec, so a child started by a process that once
    held 11 GiB reports 11 GiB whatever it does. ``VmHWM`` belongs to the address space, new at exec.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, str]:
    flags = ""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        pass
    isa = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {name}" in flags]
    return {
        "cpu": cpu_model(),
        "cores visible": str(os.cpu_count()),
        "threads used": str(torch.get_num_threads()),
        "ISA": ", ".join(isa) or "unknown",
        "torch": torch.__version__,
        "BLAS": "MKL" if torch.backends.mkl.is_available() else "other",
        "python": platform.python_version(),
    }
