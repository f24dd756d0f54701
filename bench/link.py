"""The link between host and board: which UART rates the design's clock divides well, and how long
one segment of `hmtx run` keeps the host waiting on the wire and the device.

* **Divisor table**: for each board's system clock (the PLL's, as ``hmtx synth`` builds it) and
  each candidate rate, the design's divisor (``hw.uart.baud_divisor``: round(clk / baud), refused
  beyond 2 % error or below 4 clocks per bit), the rate it gives, and the rate the board's USB
  bridge makes (FTDI: base clock / (n + k/8); FT231X base 3 MHz on the ULX3S, FT2232H 12 MHz on
  the iCEBreaker), so the mismatch between the two ends.
* **Segment model**: the frames of one steady-state segment as the golden device encodes them on
  random data (SLIP escapes included): RECALL over a full cache -- with the probabilities (every
  RECALL before protocol 1.2, ``RECALL``) and without (``RECALL_NOPROBS``, flags 0: `hmtx run`'s
  default since 1.2) -- and WRITE_MEMORY (the work), and the runtime's cache check (STATUS +
  READ_SLOT of every filled slot, or of the one slot written); 10 bits per
  byte at the line rate plus the compute cycles at the board's clock (not Fmax: the board runs at
  the PLL's frequency). With the host's own time per segment it gives the share of `hmtx run`
  spent waiting on the device. Two schedules: *blocking* (the host waits for every answer:
  RECALL, WRITE_MEMORY, the cache check) and *overlapped* (what ``run_document`` does by
  default: WRITE_MEMORY is posted and runs on the wire and the device while the host computes
  the next segment's representation pass, so it costs the host only what the pass does not
  cover; the RECALL and the cache check stay on the critical path). The representation pass is
  timed on the host (:func:`representation_pass_s`). And `hmtx run`'s default since protocol 1.2
  (``default_*``): RECALL without the probabilities, the write overlapped, the written slot checked
  every segment and the whole cache every ``full_check_every`` segments (its cost spread over
  them).
* **Measured on the virtual board** (:func:`measure_board`): `hmtx run`'s runtime on the tiny
  backbone against the board top under Verilator (hmtx.sim.board_sim), each segment's simulated
  time (wire bits at the line rate + device cycles) and bytes from the board's own counters.

    python -m hmtx.bench.link [--configs tiny,smollm] [--measure]
"""

import argparse
import json
import sys

import numpy as np

__all__ = ["CANDIDATE_BAUDS", "USB_BRIDGES", "usb_rate", "divisor_rows", "segment_traffic",
           "link_model", "measure_board", "representation_pass_s", "BITS_PER_BYTE"]

BITS_PER_BYTE = 10          # 8N1
CANDIDATE_BAUDS = (115_200, 921_600, 1_000_000, 1_500_000, 2_000_000, 3_000_000, 4_000_000, 6_000_000,
                   12_000_000)
# board -> (USB-UART bridge, its baud generator's base clock, fastest rate it is specified for)
USB_BRIDGES = {"ulx3s-85f": ("FT231X", 3_000_000, 3_000_000), "icebreaker": ("FT2232H", 12_000_000, 12_000_000)}


def usb_rate(base: int, baud: int) -> float | None:
    """The rate an FTDI part makes for ``baud``: base / divisor, divisor in steps of 1/8, >= 1."""
    div = round(base / baud * 8) / 8
    return None if div < 1 else base / div


def board_clock_hz(board: str) -> float:
    """The system clock `hmtx synth` makes for ``board`` (the PLL's achieved frequency)."""
    from hmtx.hw.board import EchoCore
    from hmtx.hw.flow.boards import board_top
    core = EchoCore(lanes=1)
    top = board_top(board, core)
    core._MustUse__silence = top._MustUse__silence = top.bridge._MustUse__silence = True
    return top.sync_mhz * 1e6


def divisor_rows(bauds=CANDIDATE_BAUDS) -> list[dict]:
    from hmtx.hw.uart import baud_divisor
    rows = []
    for board, (bridge, base, top_rate) in USB_BRIDGES.items():
        clk = board_clock_hz(board)
        for baud in bauds:
            row = {"board": board, "clk_mhz": clk / 1e6, "baud": baud, "usb_bridge": bridge}
            try:
                div = baud_divisor(clk, baud)
                row.update(divisor=div, design_rate=clk / div, design_error=clk / div / baud - 1)
            except ValueError as e:
                row.update(divisor=None, design_rate=None, design_error=None, refused=str(e))
            u = usb_rate(base, baud) if baud <= top_rate else None
            row["usb_rate"] = u
            row["usb_error"] = None if u is None else u / baud - 1
            if u is not None and row["design_rate"]:
                row["mismatch"] = row["design_rate"] / u - 1
            row["usable"] = bool(row["divisor"] and u is not None)
            rows.append(row)
    return rows


def segment_traffic(cfg, fill: int | None = None, seed: int = 0) -> dict:
    """Wire bytes of one segment, per op, as ``{op: {"out": n, "in": n, "frames": k}}``: the host's
    command frames out, the device's response frames in (golden device, random data, escapes
    included). ``fill``: memories in the cache when the segment recalls (default: full)."""
    from hmtx.model import protocol as P
    from hmtx.model.golden_device import GoldenDevice
    from hmtx.model import fixed

    fill = cfg.n_slots if fill is None else fill
    rng = np.random.default_rng(seed)
    dev = GoldenDevice(cfg)
    out = {}

    def vec():
        m, e = fixed.quantize_bfp(rng.normal(size=cfg.d) * 0.5)
        return P.pack_vector_cmd(m, int(e), cfg.d)

    def op(name, code, payload=b""):
        cmd = P.encode_command(code, payload)
        rsp = dev.feed(cmd)
        t = out.setdefault(name, {"out": 0, "in": 0, "frames": 0})
        t["out"] += len(cmd)
        t["in"] += len(rsp)
        t["frames"] += 1

    weights = {"out": 0, "in": 0, "frames": 0}
    for i in range(2):
        qw = fixed.quantize_weight(rng.normal(size=(cfg.d, cfg.d_h)) * 0.1)
        for p in P.weight_chunks(i, qw):
            cmd = P.encode_command(P.Op.LOAD_WEIGHTS, p)
            weights["out"] += len(cmd)
            weights["in"] += len(dev.feed(cmd))
            weights["frames"] += 1
    for _ in range(fill):
        dev.feed(P.encode_command(P.Op.WRITE_MEMORY, vec()))
    out.clear()
    if fill:
        s = vec()
        op("RECALL", P.Op.RECALL, s)                                # S_n alone: the probabilities come
        op("RECALL_NOPROBS", P.Op.RECALL, P.pack_recall_cmd(*P.unpack_bfp8(s, cfg.d), cfg.d, 0))
    op("WRITE_MEMORY", P.Op.WRITE_MEMORY, vec())
    op("STATUS", P.Op.STATUS)
    for s in range(dev.fill):                   # every valid slot, the one just written included
        op("READ_SLOT", P.Op.READ_SLOT, P.pack_read_slot(s))
    return {"fill": fill, "ops": out, "weights": weights}


WORK_OPS = ("RECALL", "WRITE_MEMORY")           # what the model needs from the device (probabilities too)
WORK_OPS_NOPROBS = ("RECALL_NOPROBS", "WRITE_MEMORY")   # the same without the probabilities (1.2)
CHECK_OPS = ("STATUS", "READ_SLOT")             # the runtime's per-segment whole-cache check


def link_model(cfg, baud: int, clk_hz: float, cycles: dict | None, traffic: dict,
               host_s_per_segment: float | None = None, representation_s: float | None = None,
               full_check_every: int = 16) -> dict:
    """Seconds per segment on the wire and in the device at ``baud`` and ``clk_hz``.

    ``cycles``: ``{"recall": n, "write": n}`` compute cycles (None: wire time only). Returns the
    work (RECALL + WRITE_MEMORY), the check (STATUS + READ_SLOT), their sum, the one-time weight
    load, and with ``host_s_per_segment`` the share of a segment's wall time spent waiting.

    Both schedules of the host's wait per segment (``*_s`` blocking, ``overlap_*_s`` with the
    write posted): blocking = RECALL + WRITE_MEMORY + check; overlapped = RECALL + what of the
    WRITE_MEMORY (its frames both ways and its compute) the host's ``representation_s`` does not
    cover + check. Each for the whole-cache check (``segment_s``) and for ``--cache-check
    written`` (``segment_written_s``: STATUS + the one READ_SLOT of the slot just written).

    ``default_*``: `hmtx run`'s default schedule since protocol 1.2 -- RECALL without the
    probabilities (``default_recall_s``), the write overlapped when ``representation_s`` is given
    (blocking otherwise), STATUS and the written slot every segment, and the whole cache every
    ``full_check_every`` segments instead, spread over them (``default_check_s``);
    ``default_segment_s`` their sum, ``wait_share_default`` its share of a segment. ``s_p_floor_s``:
    the wire time of S_n out and P_n back alone (the RECALL's two vectors, unframed), which no
    schedule removes."""
    ops = traffic["ops"]

    def wire(names):
        return sum(ops[n]["out"] + ops[n]["in"] for n in names if n in ops) * BITS_PER_BYTE / baud

    dev_s = 0.0
    rec_dev = wr_dev = 0.0
    if cycles:
        rec_dev = cycles["recall"] * ("RECALL" in ops) / clk_hz
        wr_dev = cycles["write"] / clk_hz
        dev_s = rec_dev + wr_dev
    work = wire(WORK_OPS) + dev_s
    check = wire(CHECK_OPS)
    slot_bytes = (ops["READ_SLOT"]["out"] + ops["READ_SLOT"]["in"]) / ops["READ_SLOT"]["frames"] \
        if ops.get("READ_SLOT", {}).get("frames") else 0
    check_written = wire(["STATUS"]) + slot_bytes * BITS_PER_BYTE / baud
    w = traffic["weights"]
    res = {"config": cfg.name, "baud": baud, "clk_mhz": clk_hz / 1e6, "fill": traffic["fill"],
           "bytes": {n: ops[n]["out"] + ops[n]["in"] for n in ops},
           "work_s": work, "work_wire_s": wire(WORK_OPS), "device_s": dev_s, "check_s": check,
           "segment_s": work + check, "weights_s": (w["out"] + w["in"]) * BITS_PER_BYTE / baud,
           "weights_bytes": w["out"] + w["in"],
           "recall_s": wire(["RECALL"]) + rec_dev, "write_s": wire(["WRITE_MEMORY"]) + wr_dev,
           "check_written_s": check_written, "segment_written_s": work + check_written}
    if "RECALL_NOPROBS" in ops:
        bare = wire(["RECALL_NOPROBS"]) + rec_dev
        hidden = min(res["write_s"], representation_s) if representation_s is not None else 0.0
        # K - 1 segments read their written slot, the K-th the whole cache instead
        k = full_check_every
        check_default = ((k - 1) * check_written + check) / k if k else check_written
        res.update(recall_noprobs_s=bare, work_noprobs_s=wire(WORK_OPS_NOPROBS) + dev_s,
                   full_check_every=full_check_every, default_overlap=representation_s is not None,
                   default_recall_s=bare, default_write_s=res["write_s"] - hidden,
                   default_check_s=check_default,
                   default_segment_s=bare + res["write_s"] - hidden + check_default,
                   s_p_floor_s=((1 + cfg.d) + (2 + 2 * cfg.d)) * BITS_PER_BYTE / baud)
    if representation_s is not None:
        hidden = min(res["write_s"], representation_s)
        res.update(representation_s=representation_s, overlap_hidden_s=hidden,
                   overlap_work_s=work - hidden, overlap_segment_s=work - hidden + check,
                   overlap_segment_written_s=work - hidden + check_written)
    if host_s_per_segment:
        res["host_s_per_segment"] = host_s_per_segment
        res["wait_share"] = res["segment_s"] / (host_s_per_segment + res["segment_s"])
        res["wait_share_work_only"] = work / (host_s_per_segment + work)
        if "default_segment_s" in res:
            res["wait_share_default"] = res["default_segment_s"] / (host_s_per_segment + res["default_segment_s"])
    return res


def representation_pass_s(backbone: str = "smollm2", repeats: int = 7) -> dict:
    """Host seconds of one representation pass (S_n: the backbone over [T || H_n[0:j) || T]),
    median of ``repeats`` after one warm-up, for ``hmtx run``'s default model of ``backbone``
    (the shipped checkpoint's sizes for SmolLM2): the host work a posted WRITE_MEMORY overlaps
    with before the next RECALL needs the device."""
    import statistics
    import time

    import torch

    from hmtx.model.backbone import load_backbone
    from hmtx.model.defaults import engine_config, run_sizes
    from hmtx.model.hmt import HMT

    bb = load_backbone(backbone, torch.device("cpu"))
    cfg = engine_config(backbone, bb.d, None)
    model = HMT.from_backbone(bb, **run_sizes(backbone), cache_size=cfg.n_slots, d_h=cfg.d_h).eval()
    j = model.config.j
    ids = torch.randint(0, 1000, (j,), generator=torch.Generator().manual_seed(0))
    h = bb.model.get_input_embeddings()(ids)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            model.representation(h)
            if i:
                times.append(time.perf_counter() - t0)
    return {"backbone": backbone, "j": j, "tokens": j + 2, "seconds": statistics.median(times),
            "min_s": min(times), "max_s": max(times), "repeats": repeats,
            "torch_threads": torch.get_num_threads()}


def measure_board(*, backbone: str = "tiny", segments: int = 4, baud: int | None = None, log=None) -> dict:
    """`hmtx run`'s runtime against the virtual board (the tiny backbone's engine on the ULX3S
    board top): per segment, the board's simulated seconds (wire at the line rate + device) and
    bytes each way, from the board's counters; the weight load separately."""
    import torch

    from hmtx.host.backends import DEFAULT_BAUD
    from hmtx.host.backends_board import BoardSimTransport
    from hmtx.model.defaults import BACKBONE_DEFAULTS, DEFAULT_TEXT, engine_config, pick_document
    from hmtx.host.device import Device
    from hmtx.host.runtime import run_document
    from hmtx.model.backbone import load_backbone
    from hmtx.model.hmt import HMT

    baud = baud or DEFAULT_BAUD
    bb = load_backbone(backbone, torch.device("cpu"))
    cfg = engine_config(backbone, bb.d, None)
    _, seg_len, sensory = BACKBONE_DEFAULTS[backbone]
    model = HMT.from_backbone(bb, segment_length=seg_len, sensory=sensory, cache_size=cfg.n_slots,
                              d_h=cfg.d_h).eval()
    doc = pick_document(str(DEFAULT_TEXT), bb.tokenizer, segments * model.config.tokens_per_segment)
    t = BoardSimTransport(cfg, baud=baud, log=log)
    marks = []
    try:
        dev = Device(t, cfg)
        marks.append(t.stats())
        # Blocking order: each segment's write and cache check are done when progress() marks
        # its end (with the write overlapped they would fall into the next segment's interval;
        # the board's simulated time is the same either way: it counts wire bits and cycles).
        res = run_document(model, doc.ids, dev, cfg, segments, overlap=False,
                           progress=lambda seg, r: marks.append(t.stats()))
        dev.close()
    finally:
        t.close()
    if res.mismatch is not None:
        raise RuntimeError(f"virtual board run hit a mismatch: {res.mismatch.describe()}")
    per = []
    for a, b in zip(marks, marks[1:]):
        per.append({"seconds": b["seconds"] - a["seconds"], "bytes_out": b["bytes_in"] - a["bytes_in"],
                    "bytes_in": b["bytes_out"] - a["bytes_out"], "frames": b["frames_out"] - a["frames_out"]})
    # the first segment also loads the weights; later segments are the steady state's shape
    return {"backbone": backbone, "engine_config": cfg.name, "board": t.design.board, "baud": baud,
            "clk_mhz": t.design.clk_hz / 1e6, "divisor": t.design.divisor, "segments": per,
            "framing_errors": marks[-1]["framing_errors"], "ops_checked": res.ops_checked}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny,smollm")
    ap.add_argument("--measure", action="store_true", help="also run the tiny backbone on the virtual board")
    ap.add_argument("--representation", action="store_true",
                    help="time SmolLM2's representation pass and model the overlapped write for smollm")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from hmtx.hw.board import DEFAULT_BAUD
    from hmtx.model.configs import get_config
    out = {"divisors": divisor_rows(), "model": []}
    for r in out["divisors"]:
        print(f"{r['board']:10s} {r['clk_mhz']:6g} MHz {r['baud']:>9d}: "
              + (f"divisor {r['divisor']:4d} {r['design_error']:+.2%}" if r["divisor"] else "refused           ")
              + (f"  {r['usb_bridge']} {r['usb_error']:+.2%}, mismatch {r.get('mismatch', 0):+.2%}"
                 if r["usb_rate"] else f"  beyond the {r['usb_bridge']}"))
    clk = board_clock_hz("ulx3s-85f")
    rep = representation_pass_s() if args.representation else None
    if rep:
        out["representation"] = rep
        print(f"representation pass ({rep['backbone']}, {rep['tokens']} tokens): {rep['seconds'] * 1e3:.1f} ms")
    for name in args.configs.split(","):
        cfg = get_config(name)
        tr = segment_traffic(cfg)
        for baud in (1_000_000, DEFAULT_BAUD):
            m = link_model(cfg, baud, clk, None, tr,
                           representation_s=rep["seconds"] if rep and name == "smollm" else None)
            out["model"].append(m)
            print(f"{name} @ {baud}: work {m['work_s'] * 1e3:.2f} ms, check {m['check_s'] * 1e3:.2f} ms, "
                  f"weights {m['weights_s']:.3f} s; bytes {m['bytes']}")
            if "default_segment_s" in m:
                print(f"  hmtx run's default: RECALL {m['recall_s'] * 1e3:.2f} -> {m['default_recall_s'] * 1e3:.2f} ms "
                      f"without the probabilities (S_n + P_n alone {m['s_p_floor_s'] * 1e3:.2f} ms), per segment "
                      f"{m['default_segment_s'] * 1e3:.2f} ms (written slot, whole cache every "
                      f"{m['full_check_every']} segments)")
            if "overlap_segment_s" in m:
                print(f"  wait per segment, blocking -> write overlapped: full check "
                      f"{m['segment_s'] * 1e3:.2f} -> {m['overlap_segment_s'] * 1e3:.2f} ms, written check "
                      f"{m['segment_written_s'] * 1e3:.2f} -> {m['overlap_segment_written_s'] * 1e3:.2f} ms")
    if args.measure:
        out["measured"] = measure_board()
        print(json.dumps(out["measured"], indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
