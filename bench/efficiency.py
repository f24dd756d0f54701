"""Device efficiency: measured RTL cycles per recall and per memory write against the ideal MACs / P.

The cycle counts come from ``bench/cycles.py`` (the hardware's own measurement: the Engine in
Amaranth's simulator, start pulse to done pulse; the top level adds one cycle), run here for
each named config and for variants of N (cache slots) and P (MAC lanes). Utilization is
``ideal / measured`` in percent: the share of cycles in which every one of the P multipliers
does useful work. Cycle counts do not depend on the data, so one simulation per point is exact.

    python -m hmtx.bench.efficiency [--configs tiny,up5k] [--sweep]
"""

import argparse
import sys
import time

from hmtx.bench import cycles as hw_cycles

__all__ = ["measure_point", "named_configs", "sweep_points", "QUICK_SWEEP"]

# (config, N values, P values) of the sweep: each N at the config's P, each P at its N.
FULL_SWEEP = {"tiny": ((2, 4, 8, 16), (1, 2, 4, 8, 16)),
              "up5k": ((4, 16, 64), (4, 8, 16, 32)),
              "smollm": ((16, 64), (16, 32, 64))}
QUICK_SWEEP = {"tiny": ((8,), (8,))}


def _op_entry(cycles: int, macs: int, ideal: int, beats: int, **extra) -> dict:
    return {"cycles": int(cycles), "ideal": int(ideal), "macs": int(macs), "beats": int(beats),
            "utilization": 100.0 * ideal / cycles, **extra}


def measure_point(cfg, contract: int = 1) -> dict:
    """``{"write": {...}, "recall": {...} (full cache), "recall_1": {...}, "attention": {...}}``,
    each ``{"cycles", "ideal", "macs", "beats", "utilization" (percent)}``, plus ``sim_s``; the
    lane engine built for ``contract`` (its ideal counts are the contract's MACs / P)."""
    t0 = time.perf_counter()
    rows = hw_cycles.measure(cfg, contract=contract)
    out = {}
    for label, cyc, macs, ideal, beats in rows:
        if label == "WRITE":
            out["write"] = _op_entry(cyc, macs, ideal, beats)
        elif label.startswith("RECALL"):
            n = int(label.split("n=")[1])
            if n == cfg.n_slots:
                out["recall"] = _op_entry(cyc, macs, ideal, beats, n_keys=n)
            if n == 1:
                out["recall_1"] = _op_entry(cyc, macs, ideal, beats, n_keys=n)
        elif label.startswith("ATTENTION"):
            out["attention"] = _op_entry(cyc, macs, ideal, beats, tile=label.split()[1])
    missing = {"write", "recall"} - set(out)
    if missing:
        raise RuntimeError(f"bench/cycles.py measured no {', '.join(sorted(missing))} for {cfg.name} "
                           f"(rows {[r[0] for r in rows]})")
    out["sim_s"] = time.perf_counter() - t0
    return out


def named_configs(names) -> dict:
    from hmtx.model.configs import get_config
    return {n: measure_point(get_config(n)) for n in names}


def sweep_points(sweep: dict, progress=None, contract: int = 1) -> list[dict]:
    """One row per (config, N, P) point of ``sweep`` with write and full-cache recall figures."""
    from hmtx.model.configs import get_config

    rows = []
    for name, (ns, ps) in sweep.items():
        base = get_config(name)
        points = [(n, base.lanes) for n in ns] + [(base.n_slots, p) for p in ps if p != base.lanes]
        for n, p in points:
            cfg = base.with_(name=f"{name}-N{n}-P{p}", n_slots=n, lanes=p)
            r = measure_point(cfg, contract)
            rows.append({"config": name, "d": cfg.d, "d_h": cfg.d_h, "N": n, "P": p,
                         "write": r["write"], "recall": r["recall"], "sim_s": r["sim_s"]})
            if progress:
                progress(rows[-1])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny,up5k")
    ap.add_argument("--sweep", action="store_true", help="also sweep N and P (FULL_SWEEP)")
    args = ap.parse_args(argv)
    for name, r in named_configs(args.configs.split(",")).items():
        for op in ("write", "recall", "recall_1", "attention"):
            if op in r:
                e = r[op]
                print(f"{name:7} {op:9} cycles {e['cycles']:6d}  ideal {e['ideal']:6d}  "
                      f"utilization {e['utilization']:5.1f}%")
    if args.sweep:
        for row in sweep_points({k: v for k, v in FULL_SWEEP.items() if k in args.configs.split(",")}):
            print(f"{row['config']:7} N={row['N']:3d} P={row['P']:3d}  recall {row['recall']['cycles']:6d} "
                  f"cycles ({row['recall']['utilization']:5.1f}%), write {row['write']['cycles']:6d} "
                  f"({row['write']['utilization']:5.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
