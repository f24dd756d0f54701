"""Consistency of a `hmtx bench` result: what must hold whatever the machine.

Cycles are never below the ideal MACs / P (utilization <= 100%), every rate and time that is
present is positive and finite, every missing figure has a reason, and the required keys exist.
"""

import math

__all__ = ["REQUIRED", "problems"]

REQUIRED = ("device", "fmax_mhz", "us_per_recall", "sim_cycles_per_s", "run_tokens_per_s", "machine")
# the keys each section writes: a result of some sections (`hmtx bench --only ...` into a new
# file) needs only theirs
SECTION_KEYS = {"device": ("device",), "recall": ("fmax_mhz", "us_per_recall"), "sim": ("sim_cycles_per_s",),
                "run": ("run_tokens_per_s",)}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _op_problems(where: str, e: dict) -> list[str]:
    bad = []
    for k in ("cycles", "ideal", "utilization"):
        if not _positive(e.get(k)):
            bad.append(f"{where}.{k} = {e.get(k)!r} is not a positive number")
    if not bad:
        if e["cycles"] < e["ideal"]:
            bad.append(f"{where}: {e['cycles']} cycles < ideal {e['ideal']}")
        if e["utilization"] > 100.0 + 1e-9:
            bad.append(f"{where}: utilization {e['utilization']}% > 100%")
        if abs(e["utilization"] - 100.0 * e["ideal"] / e["cycles"]) > 1e-6:
            bad.append(f"{where}: utilization {e['utilization']} != 100 * ideal / cycles")
    return bad


def problems(res: dict) -> list[str]:
    """Every inconsistency found (empty when the result is sound)."""
    sections = res.get("sections")
    required = REQUIRED if sections is None else \
        ("machine",) + tuple(k for s in sections for k in SECTION_KEYS.get(s, ()))
    bad = [f"missing key {k!r}" for k in required if k not in res]
    if bad:
        return bad
    if not isinstance(res["machine"], str) or not res["machine"]:
        bad.append("machine must be a non-empty string")
    reasons = res.get("reasons", {})
    for cfg, ops in res.get("device", {}).items():
        for op in ("recall", "write"):
            if op not in ops:
                bad.append(f"device.{cfg} has no {op}")
            else:
                bad += _op_problems(f"device.{cfg}.{op}", ops[op])
    for i, row in enumerate(res.get("device_sweep", [])):
        for op in ("recall", "write"):
            bad += _op_problems(f"device_sweep[{i}].{op}", row[op])
    for cfg, f in res.get("fmax_mhz", {}).items():
        if f is not None and not _positive(f):
            bad.append(f"fmax_mhz.{cfg} = {f!r}")
    us = res.get("us_per_recall")
    for k in ("device", "torch_cpu", "torch_cuda") if us is not None else ():
        v = us.get(k)
        if v is None:
            if k != "torch_cpu" and f"us_per_recall.{k}" not in reasons:
                bad.append(f"us_per_recall.{k} is null without a reason")
            elif k == "torch_cpu":
                bad.append("us_per_recall.torch_cpu is missing: it is measured on every machine")
        elif not _positive(v):
            bad.append(f"us_per_recall.{k} = {v!r}")
    if "sim_cycles_per_s" not in res:
        pass            # (the sim section did not run)
    elif res["sim_cycles_per_s"] is None:
        if "sim_cycles_per_s" not in reasons:
            bad.append("sim_cycles_per_s is null without a reason")
    elif not _positive(res["sim_cycles_per_s"]):
        bad.append(f"sim_cycles_per_s = {res['sim_cycles_per_s']!r}")
    for backend in ("golden", "sim") if "run_tokens_per_s" in res else ():
        v = res["run_tokens_per_s"].get(backend, None)
        if v is None:
            if f"run_tokens_per_s.{backend}" not in reasons:
                bad.append(f"run_tokens_per_s.{backend} is null without a reason")
        elif not _positive(v):
            bad.append(f"run_tokens_per_s.{backend} = {v!r}")
    for backend, r in res.get("run", {}).items():
        total = sum(r["share"].values())
        if abs(total - 1.0) > 0.02 or min(r["share"].values()) < 0:
            bad.append(f"run.{backend}: time shares {r['share']} do not split the wall time")
    for k, v in res.get("golden_ops_per_s", {}).items():
        for op, s in v.items():
            if not _positive(s["median"]):
                bad.append(f"golden_ops_per_s.{k}.{op} = {s['median']!r}")
    bad += _attention_problems(res)
    bad += _link_problems(res)
    return bad


def _attention_problems(res: dict) -> list[str]:
    """The attention section: its plan adds up, the ideal is ceil(MACs / P) or more and the RTL's
    cycles no fewer, every time positive, a missing device time has a reason."""
    a = res.get("attention")
    if not a:
        return []
    bad = []
    for b in a["blocks"]:
        w = f"attention.{b['what']}"
        if b["ops"] != 3 * b["pairs"] or b["macs"] != 2 * b["one_pass_macs"]:
            bad.append(f"{w}: {b['ops']} ops for {b['pairs']} tile pairs, {b['macs']} MACs for "
                       f"{b['one_pass_macs']} one-pass MACs (three passes, the scores three times)")
        if b["ideal_cycles"] * a["P"] < b["macs"]:
            bad.append(f"{w}: {b['ideal_cycles']} ideal cycles < {b['macs']} MACs / P = {a['P']}")
        for k in ("torch_cpu_head_us", "torch_cpu_layer_us", "golden_numpy_head_us"):
            if not _positive(b[k]["median"]):
                bad.append(f"{w}.{k} = {b[k]['median']!r}")
        if b["rtl_cycles"] < b["ideal_cycles"]:
            bad.append(f"{w}: {b['rtl_cycles']} RTL cycles < {b['ideal_cycles']} ideal (P MACs a cycle at most)")
        if b["device_us"] is not None and not _positive(b["device_us"]):
            bad.append(f"{w}.device_us = {b['device_us']!r}")
    if a["per_segment"]["device_us"] is None and not a.get("device_reason"):
        bad.append("attention: no device time and no reason")
    return bad


def _link_problems(res: dict) -> list[str]:
    """The link section: positive times, wire time = bytes x 10 bits / baud, a faster rate never
    slower, every measured segment at least as long as its bytes take on the wire."""
    bad = []
    by_cfg = {}
    for m in res.get("link") or []:
        where = f"link[{m['config']} @ {m['baud']}]"
        for k in ("work_s", "segment_s", "weights_s"):
            if not _positive(m.get(k)):
                bad.append(f"{where}.{k} = {m.get(k)!r} is not a positive number")
        wire = (m["bytes"].get("RECALL", 0) + m["bytes"].get("WRITE_MEMORY", 0)) * 10 / m["baud"]
        if abs(m["work_wire_s"] - wire) > 1e-12 or m["work_s"] < m["work_wire_s"]:
            bad.append(f"{where}: work {m['work_s']} s is not its {wire} s of wire plus device time")
        if "recall_s" in m and abs(m["recall_s"] + m["write_s"] - m["work_s"]) > 1e-9:
            bad.append(f"{where}: RECALL {m['recall_s']} s + WRITE_MEMORY {m['write_s']} s != work {m['work_s']} s")
        if "overlap_segment_s" in m:
            # The overlapped write hides at most itself; the RECALL and the check stay.
            if not (m["segment_s"] - m["write_s"] - 1e-12 <= m["overlap_segment_s"] <= m["segment_s"] + 1e-12):
                bad.append(f"{where}: overlapped segment {m['overlap_segment_s']} s is not the blocking "
                           f"{m['segment_s']} s less at most the write's {m['write_s']} s")
            if m["overlap_work_s"] < m["recall_s"] - 1e-12:
                bad.append(f"{where}: overlapped work {m['overlap_work_s']} s < the RECALL's {m['recall_s']} s")
        if "default_segment_s" in m:
            # Without the probabilities the RECALL is shorter, never below S_n + P_n on the wire
            if not m["s_p_floor_s"] - 1e-12 <= m["default_recall_s"] <= m["recall_s"] + 1e-12:
                bad.append(f"{where}: RECALL without probabilities {m['default_recall_s']} s is not between S_n + "
                           f"P_n's {m['s_p_floor_s']} s and the RECALL with them, {m['recall_s']} s")
            parts = m["default_recall_s"] + m["default_write_s"] + m["default_check_s"]
            if abs(parts - m["default_segment_s"]) > 1e-9 or m["default_check_s"] > m["check_s"] + 1e-12:
                bad.append(f"{where}: default segment {m['default_segment_s']} s is not RECALL + write + check "
                           f"({parts} s), or its check exceeds the whole cache's {m['check_s']} s")
        by_cfg.setdefault(m["config"], []).append(m)
    for cfg, rows in by_cfg.items():
        rows = sorted(rows, key=lambda m: m["baud"])
        if any(a["segment_s"] < b["segment_s"] for a, b in zip(rows, rows[1:])):
            bad.append(f"link[{cfg}]: a faster rate gives a longer segment")
    meas = res.get("link_measured")
    if meas is None and res.get("link") is not None and "link_measured" not in res.get("reasons", {}):
        bad.append("link_measured is null without a reason")
    for i, s in enumerate((meas or {}).get("segments", [])):
        wire = (s["bytes_out"] + s["bytes_in"]) * 10 / meas["baud"]
        if not _positive(s["seconds"]) or s["seconds"] < 0.95 * wire:
            bad.append(f"link_measured.segments[{i}]: {s['seconds']} s simulated for {wire} s of wire")
    return bad
