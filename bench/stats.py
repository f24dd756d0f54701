"""Repeated timing with medians and spreads, and a description of the machine the numbers came from.

Every figure the benchmarks publish is the median of repeated runs, printed with its spread:
the interquartile range (q1..q3) and the extremes. A comparison between two figures is the
ratio of their medians, both measured in the same run of the same process.
"""

import datetime
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass

__all__ = ["Stat", "summarize", "time_calls", "machine_info", "machine_string", "fmt_stat"]


@dataclass(frozen=True)
class Stat:
    """Median and spread of ``n`` samples (seconds, cycles, bytes — whatever was sampled)."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    def scaled(self, k: float) -> "Stat":
        return Stat(self.median * k, self.q1 * k, self.q3 * k, self.min * k, self.max * k, self.n)

    def inverted(self, k: float = 1.0) -> "Stat":
        """k / x for every sample statistic (a rate from a time); quartiles swap places."""
        inv = (lambda x: k / x if x > 0 else float("inf"))
        return Stat(inv(self.median), inv(self.q3), inv(self.q1), inv(self.max), inv(self.min), self.n)


def summarize(samples) -> Stat:
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("summarize: no samples")
    if len(xs) == 1:
        return Stat(xs[0], xs[0], xs[0], xs[0], xs[0], 1)
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return Stat(statistics.median(xs), q1, q3, xs[0], xs[-1], len(xs))


def time_calls(fn, *, repeats: int, inner: int = 1, warmup: int = 1, sync=None) -> Stat:
    """Seconds per call of ``fn()``: ``repeats`` samples, each the mean over ``inner`` calls
    (enough inner calls make a microsecond operation measurable above the timer's resolution).
    ``sync()`` runs before each clock read (e.g. ``torch.cuda.synchronize``)."""
    if repeats < 1 or inner < 1:
        raise ValueError(f"time_calls: repeats ({repeats}) and inner ({inner}) must be >= 1")
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - t0) / inner)
    return summarize(samples)


def fmt_stat(s: Stat | dict | None, spec: str = ".3g", unit: str = "") -> str:
    """``median [q1–q3]`` for tables (n/a for a missing figure)."""
    if s is None:
        return "n/a"
    if isinstance(s, dict):
        s = Stat(**s)
    if s.n == 1 or s.q1 == s.q3:
        return f"{s.median:{spec}}{unit}"
    return f"{s.median:{spec}}{unit} [{s.q1:{spec}}–{s.q3:{spec}}]"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Where the numbers came from: CPU model and cores, OS, Python/torch versions, GPU, load."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": cores,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # A shared machine's load changes every wall-clock figure; record it with them.
        "load_avg_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    return info


def machine_string(info: dict) -> str:
    gpu = f", GPU {info['cuda']}" if info.get("cuda") else ", no GPU"
    return (f"{info['cpu']}, {info['cores']} cores{gpu}; {info['os']}; Python {info['python']}, "
            f"torch {info['torch']} ({info['torch_threads']} thread{'' if info['torch_threads'] == 1 else 's'})")
