"""Measured compute cycles of the hmtx engine vs the ideal MACs / P, in Amaranth's simulator.

For each named configuration the Engine (hmtx.hw.engine) runs WRITE, RECALL over a full
cache and over one slot, the largest ATTENTION tile and (lane engine) the three passes of ATTN_PASS
over it (pass 3 first, continuing and last); cycles are counted from the start
pulse to the done pulse (the top level adds 1 cycle, frame validated -> engine start; that is
what the CYCLES command reports). Memory contents are random: cycle counts do not depend on
data. smollm takes about 75 s to simulate.

    python bench/cycles.py [--configs tiny,up5k,smollm] [--engine lanes|serial] [--contract 1|2]
                           [--write-doc docs/hardware.md]

``--contract 2`` measures the lane engine under contract 2 (docs/arithmetic.md section 10):
WRITE also folds W_q into the key (two passes of d_h x CB beats), RECALL scores S against the
folded keys (n x CB beats) with no projection; its table markers are ``cycles-c2``
(``cycles-serial-c2`` with ``--engine serial``: K_i's projection and both fold passes are d x d_h
beats each, the recall 2 x n x d).
``--engine serial`` measures hmtx.hw.serial_engine.SerialEngine instead: one multiplier, so its
ideal is one cycle per MAC and every MAC is a beat. With --write-doc the table between the
markers <!-- cycles:begin --> / <!-- cycles:end --> (``cycles-serial`` for the serial engine) of
that file is replaced.
"""

import argparse
import math
import random
import sys
import time
from pathlib import Path

from amaranth.sim import Simulator

from hmtx.hw.engine import Engine, Op
from hmtx.hw.serial_engine import SerialEngine
from hmtx.model.configs import CONFIGS
from hmtx.sim.perf import run_engine_op


def ideal(c, op, n=0, nq=0, nk=0, lanes=None, contract=1):
    macs = {"write": c.d * c.d_h, "recall": c.d * c.d_h + n * c.d_h + n * c.d,
            "attention": 2 * nq * nk * c.head_dim, "pass12": nq * nk * c.head_dim,
            "pass3": 2 * nq * nk * c.head_dim}[op]
    if contract == 2:   # K'_i = W_q K_i on write (its first pass, for the shift, is not counted)
        macs = {"write": 2 * c.d * c.d_h, "recall": 2 * n * c.d}.get(op, macs)
    return macs, math.ceil(macs / (c.lanes if lanes is None else lanes))


def beats(e, op, n=0, nq=0, nk=0):
    """MAC beats the sequencer issues (padding lanes of partial blocks included; the serial
    engine issues exactly one beat per MAC)."""
    c = e.config
    if isinstance(e, SerialEngine):
        if e.contract == 2 and op == "write":       # the fold's first pass, for the shift, too
            return 3 * c.d * c.d_h
        return ideal(c, op, n, nq, nk, contract=e.contract)[0]
    # (the weighted sum of a single key issues a second beat of weight 0: Sequencer, WSUM)
    wsum = e.CB * max(n, 2)
    if e.contract == 2 and op in ("write", "recall"):
        return {"write": 3 * c.d_h * e.CB, "recall": n * e.CB + wsum}[op]
    # (ATTN_PASS pass 3 continuing a row adds 4 beats per block for its carried accumulator;
    # one that carries it on has at least 3 beats per block)
    return {"write": c.d_h * e.CB, "recall": c.d_h * e.CB + n * e.KB + wsum,
            "attention": nq * (nk + max(nk, 2)) * e.AB, "pass12": nq * nk * e.AB,
            "pass3-first": nq * (nk + max(nk, 3)) * e.AB, "pass3": nq * (2 * nk + 4) * e.AB,
            "pass3-last": nq * (2 * nk + 4) * e.AB}[op]


def measure(c, engine="lanes", contract=1):
    e = Engine(c, contract=contract) if engine == "lanes" else SerialEngine(c, contract=contract)
    lanes = 1 if engine == "serial" else None
    r = random.Random(0)
    rows = []

    async def tb(ctx):
        P = e.P
        for mem in (e.vin, e.mem):
            for w in range(mem.depth):
                ctx.set(mem.data[w], [r.randint(-127, 127) for _ in range(P)])
        for w in range(c.d_h * e.CB):
            ctx.set(e.wq.data[w], [r.randint(-127, 127) for _ in range(P)])
            ctx.set(e.wk.data[w], [r.randint(-127, 127) for _ in range(P)])
        ctx.set(e.wq_shift, 12)
        ctx.set(e.wk_shift, 12)
        for w in range(e.ROWS):
            ctx.set(e.vexp.data[w], r.randint(-8, 8))
        cyc = await run_engine_op(ctx, e, op=Op.WRITE, slot=0)
        rows.append(("WRITE", cyc, *ideal(c, "write", lanes=lanes, contract=contract), beats(e, "write")))
        for n in sorted({1, c.n_slots}):
            cyc = await run_engine_op(ctx, e, op=Op.RECALL, n_keys=n)
            rows.append((f"RECALL n={n}", cyc, *ideal(c, "recall", n, lanes=lanes, contract=contract),
                         beats(e, "recall", n)))
        nq, nk = c.max_queries, c.max_keys
        cyc = await run_engine_op(ctx, e, op=Op.ATTENTION, n_keys=nk, n_q=nq, causal=0)
        rows.append((f"ATTENTION {nq}x{nk}", cyc, *ideal(c, "attention", nq=nq, nk=nk, lanes=lanes),
                     beats(e, "attention", nq=nq, nk=nk)))
        if engine != "lanes":
            return      # (the serial engine has no ATTN_PASS)
        for a in range(nq):     # the host's m = 0, E = 0, sum = 2^20 (cycle counts do not depend on them)
            ctx.set(e.rows.mem.data[a], (1 << 20) << 40)
        for p, flags, kind in ((1, {}, "pass12"), (2, {}, "pass12"), (3, {"afirst": 1}, "pass3-first"),
                               (3, {}, "pass3"), (3, {"alast": 1}, "pass3-last")):
            cyc = await run_engine_op(ctx, e, **{"op": Op.ATTN_PASS, "apass": p, "afirst": 0, "alast": 0, "diag": 0,
                                                 "n_keys": nk, "n_q": nq, "causal": 0, **flags})
            label = f"ATTN_PASS {p}" + {"pass3-first": " first", "pass3-last": " last"}.get(kind, "")
            rows.append((f"{label} {nq}x{nk}", cyc, *ideal(c, "pass3" if p == 3 else "pass12", nq=nq, nk=nk),
                         beats(e, kind, nq=nq, nk=nk)))

    sim = Simulator(e)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return rows


def table(results, engine="lanes"):
    ideal_col = "ideal = ceil(MACs/P)" if engine == "lanes" else "ideal = MACs (one multiplier)"
    lines = [f"| config | P | op | MACs | {ideal_col} | MAC beats issued | measured cycles "
             "| measured / ideal | fixed overhead (measured - beats) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c, rows in results:
        for op, cyc, macs, ide, bts in rows:
            lines.append(f"| {c.name} | {c.lanes} | {op} | {macs} | {ide} | {bts} | {cyc} | "
                         f"{cyc / ide:.3f} | {cyc - bts} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,up5k,smollm")
    ap.add_argument("--engine", choices=("lanes", "serial"), default="lanes")
    ap.add_argument("--contract", type=int, choices=(1, 2), default=1)
    ap.add_argument("--write-doc", default=None)
    args = ap.parse_args(argv)
    results = []
    for name in args.configs.split(","):
        c = CONFIGS[name]
        t0 = time.perf_counter()
        results.append((c, measure(c, args.engine, args.contract)))
        print(f"{name}: simulated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    text = table(results, args.engine)
    print(text)
    if args.write_doc:
        path = Path(args.write_doc)
        doc = path.read_text()
        tag = ("cycles-serial" if args.engine == "serial" else "cycles") + ("-c2" if args.contract == 2 else "")
        begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
        if begin not in doc or end not in doc:
            raise SystemExit(f"{path}: markers {begin} / {end} not found")
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
