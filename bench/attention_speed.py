"""One backbone attention head per HMT segment: the engine's work for it against PyTorch.

``hmtx run --offload-attention`` sends each head of the chosen layers to the device as ATTN_PASS
operations over the engine's tiles (docs/protocol.md section 10; ``host.attention_tiles``). Per
segment a head runs twice: over the segment pass (``L`` positions, causal) and over the
representation pass (``j + 2`` positions). For each, with the config's tile
(``max_queries x max_keys``):

* the plan: query tiles, (query tile, key tile) pairs, ATTN_PASS operations (three passes per
  pair) and the MACs they issue (the scores three times, the weighted sum once);
* device cycles: the **ideal** (one beat of P MACs per cycle, what the golden device's CYCLES
  reports) and the **RTL's**: every distinct operation of the plan (pass, n_q, n_k, first,
  last) run on the lane engine in Amaranth's simulator, plus the one cycle the top adds per
  operation -- what the chip's CYCLES reports (tests/test_device_sim.py checks it against the
  Verilated top); at the synthesized Fmax, the device's compute time for the head (the link's
  transfer time is separate: docs/protocol.md section 10, "What travels");
* PyTorch float32 on this CPU: ``scaled_dot_product_attention`` of one head, causal, and of one
  layer's heads (GQA, the KV heads repeated), the way the backbone runs them;
* the golden model: ``fixed.attend`` (numpy) of the same head.

    python -m hmtx.bench.attention_speed [--config smollm] [--repeats 11]
"""

import argparse
import json
import math
import sys

import numpy as np

from hmtx.bench.recall_speed import calibrate_inner
from hmtx.bench.stats import fmt_stat, time_calls

__all__ = ["segment_blocks", "head_plan", "op_shapes", "rtl_cycles", "torch_head", "golden_head", "measure"]


def segment_blocks(hmt_cfg) -> list[tuple[str, int]]:
    """The causal blocks one head computes per segment: (what, positions)."""
    return [("segment pass", hmt_cfg.segment_length), ("representation pass", hmt_cfg.j + 2)]


def op_shapes(cfg, n: int) -> list[tuple[int, int, int, bool, bool]]:
    """Every ATTN_PASS operation of one causal head over ``n`` positions on ``cfg``'s tiles, as
    (pass, n_q, n_k, first, last): its cycles depend on nothing else."""
    from hmtx.host.attention_tiles import tile_plan

    ops = []
    for _, nq, tiles in tile_plan(n, n, cfg.max_queries, cfg.max_keys, causal=True):
        for p in (1, 2, 3):
            ops += [(p, nq, nk, p == 3 and i == 0, p == 3 and i == len(tiles) - 1)
                    for i, (_, nk, _) in enumerate(tiles)]
    return ops


def rtl_cycles(cfg, shapes, contract: int = 1) -> dict:
    """Engine cycles (start to done) of each distinct ATTN_PASS shape, run one after another on
    the lane engine (hw/engine.py) in Amaranth's simulator with random memory contents (the
    counts do not depend on the data)."""
    import random

    from amaranth.sim import Simulator

    from hmtx.hw.engine import Engine, Op
    from hmtx.sim.perf import run_engine_op

    e = Engine(cfg, contract=contract)
    todo = sorted(set(shapes))
    got = {}
    r = random.Random(0)

    async def tb(ctx):
        for w in range(e.vin.depth):
            ctx.set(e.vin.data[w], [r.randint(-127, 127) for _ in range(e.P)])
        for w in range(e.ROWS):
            ctx.set(e.vexp.data[w], r.randint(-8, 8))
        for a in range(cfg.max_queries):       # the host's m = 0, E = 0, sum = 2^20
            ctx.set(e.rows.mem.data[a], (1 << 20) << 40)
        for p, nq, nk, first, last in todo:
            got[(p, nq, nk, first, last)] = await run_engine_op(
                ctx, e, **{"op": Op.ATTN_PASS, "apass": p, "afirst": first, "alast": last, "diag": 0,
                           "n_keys": nk, "n_q": nq, "causal": 0})

    sim = Simulator(e)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return got


def head_plan(cfg, n: int, rtl: dict | None = None) -> dict:
    """ATTN_PASS operations and MACs of one causal head over ``n`` positions on ``cfg``'s tiles,
    the ideal cycles (``ceil(macs / P)`` per operation, as the golden device counts them) and,
    given ``rtl`` (:func:`rtl_cycles` of the plan's shapes), the RTL's (one more per operation:
    the top's, as CYCLES counts)."""
    from hmtx.host.attention_tiles import tile_plan

    plan = tile_plan(n, n, cfg.max_queries, cfg.max_keys, causal=True)
    pairs = sum(len(t) for _, _, t in plan)
    score_macs = [nq * nk * cfg.head_dim for _, nq, tiles in plan for _, nk, _ in tiles]
    # passes 1 and 2: the scores; pass 3: the scores and the weighted sum
    ideal = sum(2 * math.ceil(s / cfg.lanes) + math.ceil(2 * s / cfg.lanes) for s in score_macs)
    out = {"positions": n, "query_tiles": len(plan), "pairs": pairs, "ops": 3 * pairs,
           "macs": 4 * sum(score_macs), "ideal_cycles": ideal,
           # what the MACs would be with one pass (scores kept): the cost of recomputing them
           "one_pass_macs": 2 * sum(score_macs)}
    if rtl is not None:
        out["rtl_cycles"] = sum(rtl[op] + 1 for op in op_shapes(cfg, n))
    return out


def _head_data(n, head_dim, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (n, head_dim)) for _ in range(3)]


def torch_head(n: int, head_dim: int, repeats: int, heads: int = 1, kv_heads: int = 1):
    """Seconds per float32 causal ``scaled_dot_product_attention`` over ``n`` positions, ``heads``
    query heads on ``kv_heads`` key/value heads (repeated, as the backbone's eager path does)."""
    import torch
    import torch.nn.functional as Fn

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, n, head_dim, generator=g)
    k = torch.randn(1, kv_heads, n, head_dim, generator=g)
    v = torch.randn(1, kv_heads, n, head_dim, generator=g)
    rep = heads // kv_heads

    @torch.inference_mode()
    def run():
        kk, vv = (k, v) if rep == 1 else (k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))
        return Fn.scaled_dot_product_attention(q, kk, vv, is_causal=True)

    return time_calls(run, repeats=repeats, inner=calibrate_inner(run), warmup=2)


def golden_head(n: int, head_dim: int, repeats: int):
    """Seconds per ``fixed.attend`` (numpy, the contract's integers) of one causal head."""
    from hmtx.model import fixed

    q, k, v = (fixed.quantize_bfp(x) for x in _head_data(n, head_dim))
    mask = fixed.causal_mask(n, n)

    def run():
        return fixed.attend(*q, *k, *v, mask=mask)

    return time_calls(run, repeats=repeats, inner=calibrate_inner(run), warmup=1)


def measure(cfg, hmt_cfg, repeats: int, attention_rtl: dict | None, fmax_mhz: float | None,
            heads: int = 9, kv_heads: int = 3, contract: int = 1) -> dict:
    """One head per segment on ``cfg`` for the HMT sizes ``hmt_cfg``. ``attention_rtl``: the
    ``device`` section's ATTENTION entry of this config (RTL cycles, ideal), or None."""
    res = {"config": cfg.name, "tile": f"{cfg.max_queries}x{cfg.max_keys}", "head_dim": cfg.head_dim,
           "P": cfg.lanes, "fmax_mhz": fmax_mhz, "contract": contract, "blocks": []}
    res["attention_utilization"] = attention_rtl["ideal"] / attention_rtl["cycles"] if attention_rtl else None
    blocks = segment_blocks(hmt_cfg)
    rtl = rtl_cycles(cfg, [op for _, n in blocks for op in op_shapes(cfg, n)], contract)
    for what, n in blocks:
        b = {"what": what, **head_plan(cfg, n, rtl)}
        b["utilization"] = b["ideal_cycles"] / b["rtl_cycles"]
        b["device_us"] = b["rtl_cycles"] / fmax_mhz if fmax_mhz else None
        b["torch_cpu_head_us"] = torch_head(n, cfg.head_dim, repeats).scaled(1e6).to_dict()
        b["torch_cpu_layer_us"] = torch_head(n, cfg.head_dim, repeats, heads, kv_heads).scaled(1e6).to_dict()
        b["golden_numpy_head_us"] = golden_head(n, cfg.head_dim, repeats).scaled(1e6).to_dict()
        res["blocks"].append(b)
    tot = {k: sum(b[k] for b in res["blocks"]) for k in ("ops", "macs", "ideal_cycles", "rtl_cycles")}
    tot["utilization"] = tot["ideal_cycles"] / tot["rtl_cycles"]
    vals = [b["device_us"] for b in res["blocks"]]
    tot["device_us"] = sum(vals) if None not in vals else None
    for k in ("torch_cpu_head_us", "torch_cpu_layer_us", "golden_numpy_head_us"):
        tot[k] = sum(b[k]["median"] for b in res["blocks"])
    if tot["device_us"]:
        # this many times one head's PyTorch time on this CPU (compute only, the link aside)
        tot["device_vs_torch_cpu"] = tot["device_us"] / tot["torch_cpu_head_us"]
    res["per_segment"] = tot
    if fmax_mhz is None:
        res["device_reason"] = "no synthesis report with an Fmax for this config"
    if res["attention_utilization"] is None:
        res["utilization_reason"] = "no RTL ATTENTION measurement (run the device section)"
    return res


def main(argv=None) -> int:
    from hmtx.model.configs import get_config
    from hmtx.model.hmt import HMTConfig
    from hmtx.host.cli_options import SIZE_DEFAULTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="smollm")
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args(argv)
    r = measure(get_config(args.config), HMTConfig(**SIZE_DEFAULTS), args.repeats, None, None)
    for b in r["blocks"]:
        print(f"{b['what']} ({b['positions']} positions): {b['ops']} ops, {b['ideal_cycles']} ideal cycles, "
              f"{b['rtl_cycles']} RTL cycles; "
              f"torch cpu {fmt_stat(b['torch_cpu_head_us'])} us/head, golden {fmt_stat(b['golden_numpy_head_us'])} us")
    print(json.dumps(r["per_segment"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
