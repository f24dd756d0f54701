"""Simulation speed: the generated Verilog of the whole top level under Verilator (the ``sim``
device backend: cocotb bridge, Unix socket), and the golden model's operations per second.

The simulator is driven exactly as ``hmtx run --device sim`` drives it, through
:class:`hmtx.host.device.Device`: weights loaded, the cache filled, then RECALLs. For each
transaction the simulated clock cycles are at least the device's own compute-cycle count
(CYCLES, read after the op) plus one cycle per wire byte in each direction (the SLIP codec moves
one byte per cycle); dividing that by the transaction's wall time gives a *lower bound* on
cycles per second (a few frame-handling cycles per transaction are not counted). The device's
compute cycles are also checked against ``bench/cycles.py``'s Amaranth count + 1.

    python -m hmtx.bench.sim_speed [--config tiny] [--recalls 20]
"""

import argparse
import math
import sys
import time

import numpy as np

from hmtx.bench.stats import fmt_stat, summarize

__all__ = ["verilator_speed", "golden_ops"]


def _operands(cfg, seed=0):
    from hmtx.model import fixed

    rng = np.random.default_rng(seed)
    w = [fixed.quantize_weight(rng.normal(0, 1 / math.sqrt(4 * cfg.d), (cfg.d, cfg.d_h))) for _ in range(2)]
    mm, me = fixed.quantize_bfp(rng.normal(0, 1, (cfg.n_slots + 1, cfg.d)))
    return w, mm, me


def _timed(device, fn):
    """(result, wall seconds, bytes moved, compute cycles of the op per the device's CYCLES)."""
    b0 = device.bytes_out + device.bytes_in
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    moved = device.bytes_out + device.bytes_in - b0
    return out, wall, moved, device.cycles().last


def verilator_speed(cfg, recalls: int, backend: str = "sim") -> dict:
    """Drive the simulated top level through Device; see the module docstring."""
    from hmtx.host.device import Device

    qws, mm, me = _operands(cfg)
    t0 = time.perf_counter()
    dev = Device.open(backend, cfg)
    start_s = time.perf_counter() - t0
    try:
        _, load_s, load_bytes, _ = _timed(dev, lambda: dev.load_weights(*qws))
        writes, recs = [], []
        for i in range(cfg.n_slots):
            writes.append(_timed(dev, lambda i=i: dev.write_memory(mm[i], int(me[i])))[1:])
        for _ in range(recalls):
            recs.append(_timed(dev, lambda: dev.recall(mm[-1], int(me[-1])))[1:])
    finally:
        dev.close()

    def rates(rows):
        # rows: (wall, bytes, cycles); cycles simulated >= compute cycles + wire bytes
        return summarize([(cyc + nb) / wall for wall, nb, cyc in rows])

    all_rows = writes + recs
    return {
        "config": cfg.name, "backend": backend, "start_s": start_s,
        "load_weights_s": load_s, "load_weights_bytes": load_bytes,
        "write_wall_ms": summarize([w for w, _, _ in writes]).scaled(1e3).to_dict(),
        "recall_wall_ms": summarize([w for w, _, _ in recs]).scaled(1e3).to_dict(),
        "write_cycles": int(np.median([c for _, _, c in writes])),
        "recall_cycles": int(np.median([c for _, _, c in recs])),
        "recall_cycles_distinct": sorted({c for _, _, c in recs}),
        "cycles_per_s_lower_bound": rates(all_rows).to_dict(),
        "recall_cycles_per_s_lower_bound": rates(recs).to_dict(),
        "transactions": len(all_rows),
    }


def golden_ops(cfg, repeats: int) -> dict:
    """Golden model (``hmtx.model.fixed``, numpy) operations per second: recall over a full cache
    and write (K_i = W_k^T M_i)."""
    from hmtx.model import fixed

    from hmtx.bench.recall_speed import calibrate_inner
    from hmtx.bench.stats import time_calls

    (qwq, qwk), mm, me = _operands(cfg)
    km, ke = fixed.project(qwk, mm[:-1], me[:-1])

    def recall():
        return fixed.recall(qwq, mm[-1], int(me[-1]), km, ke, mm[:-1], me[:-1])

    def write():
        return fixed.project(qwk, mm[:1], me[:1])

    out = {}
    for name, fn in (("recall", recall), ("write", write)):
        s = time_calls(fn, repeats=repeats, inner=calibrate_inner(fn), warmup=1)
        out[f"{name}_per_s"] = s.inverted().to_dict()
    return out


def main(argv=None) -> int:
    from hmtx.model.configs import get_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--recalls", type=int, default=20)
    ap.add_argument("--backend", default="sim", help="sim (Verilator) or golden (to test the harness)")
    args = ap.parse_args(argv)
    cfg = get_config(args.config)
    r = verilator_speed(cfg, args.recalls, args.backend)
    print(f"{cfg.name} on {args.backend}: start {r['start_s']:.1f} s, load weights {r['load_weights_s']:.2f} s, "
          f"recall {fmt_stat(r['recall_wall_ms'])} ms wall ({r['recall_cycles']} compute cycles), "
          f">= {fmt_stat(r['cycles_per_s_lower_bound'], '.3g')} cycles/s")
    g = golden_ops(cfg, 7)
    print(f"golden: {fmt_stat(g['recall_per_s'])} recalls/s, {fmt_stat(g['write_per_s'])} writes/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
