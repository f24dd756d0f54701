"""One backbone attention head per HMT segment: the engine's work for it against PyTorch.

``hmtx run --offload-attention`` sends each head of the chosen layers to the device as ATTN_PASS
operations over the engine's tiles (docs/protocol.md section 10; ``host.attention_tiles``). Per
segment a head runs twice: over the segment pass (``L`` positions, causal) and over the
representation pass (``j + 2`` positions). For each, with the config's tile
(``max_queries x max_keys``):

* the plan: query tiles, (query tile, key tile) pairs, ATTN_PASS operations (three passes per
  pair) and the MACs they issue (the scores three times, the weighted sum once);
* device cycles: the **ideal** (one beat of P MACs per cycle, what the golden device's CYCLES
  reports), at the synthesized Fmax a **lower bound** of the device's time: the gateware has no
  ATTN_PASS yet, so nothing here is an RTL measurement, and no engine issues more than P MACs a
  cycle. Next to it, the utilization the RTL measures for the config's ATTENTION tile (the
  ``device`` section), the nearest thing built;
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

__all__ = ["segment_blocks", "head_plan", "torch_head", "golden_head", "measure"]


def segment_blocks(hmt_cfg) -> list[tuple[str, int]]:
    """The causal blocks one head computes per segment: (what, positions)."""
    return [("segment pass", hmt_cfg.segment_length), ("representation pass", hmt_cfg.j + 2)]


def head_plan(cfg, n: int) -> dict:
    """ATTN_PASS operations and MACs of one causal head over ``n`` positions on ``cfg``'s tiles,
    and the ideal cycles (``ceil(macs / P)`` per operation, as the golden device counts them)."""
    from hmtx.host.attention_tiles import tile_plan

    plan = tile_plan(n, n, cfg.max_queries, cfg.max_keys, causal=True)
    pairs = sum(len(t) for _, _, t in plan)
    score_macs = [nq * nk * cfg.head_dim for _, nq, tiles in plan for _, nk, _ in tiles]
    # passes 1 and 2: the scores; pass 3: the scores and the weighted sum
    ideal = sum(2 * math.ceil(s / cfg.lanes) + math.ceil(2 * s / cfg.lanes) for s in score_macs)
    return {"positions": n, "query_tiles": len(plan), "pairs": pairs, "ops": 3 * pairs,
            "macs": 4 * sum(score_macs), "ideal_cycles": ideal,
            # what the MACs would be with one pass (scores kept): the cost of recomputing them
            "one_pass_macs": 2 * sum(score_macs)}


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
            heads: int = 9, kv_heads: int = 3) -> dict:
    """One head per segment on ``cfg`` for the HMT sizes ``hmt_cfg``. ``attention_rtl``: the
    ``device`` section's ATTENTION entry of this config (RTL cycles, ideal), or None."""
    res = {"config": cfg.name, "tile": f"{cfg.max_queries}x{cfg.max_keys}", "head_dim": cfg.head_dim,
           "P": cfg.lanes, "fmax_mhz": fmax_mhz, "blocks": []}
    res["attention_utilization"] = attention_rtl["ideal"] / attention_rtl["cycles"] if attention_rtl else None
    for what, n in segment_blocks(hmt_cfg):
        b = {"what": what, **head_plan(cfg, n)}
        b["device_lower_bound_us"] = b["ideal_cycles"] / fmax_mhz if fmax_mhz else None
        b["torch_cpu_head_us"] = torch_head(n, cfg.head_dim, repeats).scaled(1e6).to_dict()
        b["torch_cpu_layer_us"] = torch_head(n, cfg.head_dim, repeats, heads, kv_heads).scaled(1e6).to_dict()
        b["golden_numpy_head_us"] = golden_head(n, cfg.head_dim, repeats).scaled(1e6).to_dict()
        res["blocks"].append(b)
    tot = {k: sum(b[k] for b in res["blocks"]) for k in ("ops", "macs", "ideal_cycles")}
    vals = [b["device_lower_bound_us"] for b in res["blocks"]]
    tot["device_lower_bound_us"] = sum(vals) if None not in vals else None
    for k in ("torch_cpu_head_us", "torch_cpu_layer_us", "golden_numpy_head_us"):
        tot[k] = sum(b[k]["median"] for b in res["blocks"])
    if tot["device_lower_bound_us"]:
        # at least this many times one head's PyTorch time on this CPU
        tot["device_lower_bound_vs_torch_cpu"] = tot["device_lower_bound_us"] / tot["torch_cpu_head_us"]
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
        print(f"{b['what']} ({b['positions']} positions): {b['ops']} ops, {b['ideal_cycles']} ideal cycles; "
              f"torch cpu {fmt_stat(b['torch_cpu_head_us'])} us/head, golden {fmt_stat(b['golden_numpy_head_us'])} us")
    print(json.dumps(r["per_segment"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
