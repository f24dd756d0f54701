"""`hmtx run`: a document through HMT with the memory recall on the device, checked bit for bit.

With no arguments: the SmolLM2-135M backbone, the shipped HMT checkpoint when there is one
(untrained HMT parameters otherwise, and the output says so), the first article of the shipped
WikiText-2 test text that is long enough, 8 segments, the ``smollm`` engine simulated from
its generated Verilog (``--device sim``). See docs/runtime.md.
"""

import json
import os
import signal
import sys
import time

from hmtx.model.defaults import (BACKBONE_D, BACKBONE_DEFAULTS, DEFAULT_CHECKPOINT, DEFAULT_TEXT,
                                 engine_config, pick_document)
from hmtx.model.paths import REPO

from . import cli_options

# (the runtime's default, without importing torch to build the parser)
FULL_CHECK_EVERY = 16

__all__ = ["register"]

# Where a failing case goes without --case (beside build/sim, whatever the current folder).
CASES_DIR = REPO / "build" / "cases"

EXIT_MISMATCH, EXIT_USAGE, EXIT_DEVICE = 1, 2, 3

UNTRAINED = ("HMT's own parameters (T, memory token, W_q, W_k) are UNTRAINED (random init, seed {seed}): "
             "the PPLs show the plumbing, not HMT's benefit. Pass --checkpoint with a trained one.")
# What the shipped checkpoint holds (checkpoints/smollm2-hmt/README.md).
SHIPPED_NOTE = ("HMT parameters from the shipped checkpoint {path}: trained in three stages (frozen backbone; "
                "stage 3 trained the search and the host-side read-out on long documents); see its README.md.")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run a document through HMT with every memory write and recall on the device, checked bit for bit",
        description="Stream a document through HMT segment by segment. Every memory write and recall runs on "
                    "the device (golden model, simulated RTL, or a board on a serial port) and is checked bit for "
                    "bit against the fixed-point reference, as is the memory cache (the slot each segment writes; the "
                    "whole cache every 16 segments and at the end, or after every segment with --cache-check full). "
                    "Reports PPL (backbone only, HMT float, HMT on the device), device cycles and time. "
                    "Exit status: 0 ok, 1 mismatch, 2 bad arguments/input, 3 device error.")
    p.add_argument("--device", default="sim", help="golden | sim[:ENGINE] | serial:PORT[@BAUD] | board-sim[:CONFIG][@BAUD] "
                                                   "(default sim; ENGINE: lanes, the default, or serial, the iCE40 "
                                                   "engine; BAUD default 3000000, as hmtx synth builds; board-sim: "
                                                   "the board top with its UART simulated behind a pseudo-terminal)")
    p.add_argument("--contract", type=int, choices=(1, 2),
                   help="arithmetic contract the device must compute (default: the device's own, from its INFO). "
                        "The golden device is built with it: 1 speaks protocol 1.3 (the keys K_i), 2 protocol 2.2 "
                        "(the folded keys K'_i = W_q K_i; docs/arithmetic.md section 10); sim and board-sim "
                        "build the gateware for it")
    p.add_argument("--text", help=f"text file or folder (default the shipped {DEFAULT_TEXT.relative_to(REPO)}); "
                                  "the first document long enough for --segments is used")
    p.add_argument("--segments", type=int, default=8, help="run the first N segments (default 8)")
    p.add_argument("--config", help="engine config name (default: smollm for smollm2, tiny widened to d=32 for tiny)")
    cli_options.add_backbone(p)
    cli_options.add_checkpoint(p)
    cli_options.add_hmt_sizes(p, "HMT sizes of an untrained HMT (default L=512, k=32 for smollm2; L=24, k=4 "
                                 "for tiny; N and d_h come from the engine config)",
                              names=("segment_length", "sensory"), defaults={"segment_length": None, "sensory": None})
    cli_options.add_torch_device(p, "--torch-device")
    p.add_argument("--json", dest="json_out", help="write the results as JSON here")
    p.add_argument("--plot", help="write PNGs here: PPL per segment, recall weights over past segments")
    p.add_argument("--waves", action="store_true", help="sim: record waves (FST/VCD; the path is printed)")
    p.add_argument("--timeout", type=float, help="seconds per device transaction (default by backend)")
    p.add_argument("--fmax", type=float, help="device clock in MHz for the time estimate (default: from the "
                                              "latest `hmtx synth` report of this config, if any)")
    p.add_argument("--case", help="where to save a failing case (default build/cases/run-TIME.json in the "
                                  "hmtx source tree, printed when used)")
    p.add_argument("--inject-fault", metavar="SEG:ELEM:BIT",
                   help="testing aid: flip bit BIT of P_n mantissa ELEM in the device's RECALL answer at "
                        "segment SEG (the checker must report exactly that)")
    p.add_argument("--reference", choices=("inline", "stream"), default="inline",
                   help="inline (default): check each device answer against the fixed-point arithmetic "
                        "(numpy golden and torch) on the same inputs; stream: also run the fixed-recall "
                        "variant as its own stream (two more backbone passes per segment) and require its "
                        "PPL to equal the device variant's exactly")
    p.add_argument("--cache-check", choices=("full", "written"), default="written",
                   help="written (default): after each segment read back the slot it wrote (all a segment "
                        "changes in the cache) and STATUS, and the whole cache every --full-check-every "
                        "segments and after the last; full: the whole cache after every segment (on a serial "
                        "link at a full smollm cache that is 236 ms per segment at 3 Mbaud, 10 %% of the run)")
    p.add_argument("--full-check-every", type=int, default=FULL_CHECK_EVERY, metavar="K",
                   help="with --cache-check written: read the whole cache back after every K-th segment "
                        f"too (default {FULL_CHECK_EVERY}; 0: only after the last segment)")
    p.add_argument("--probabilities", action="store_true",
                   help="ask the device for the recall's softmax probabilities on every RECALL and check them "
                        "(protocol 1.2 / 2.1 sends only P_n and n otherwise: 2 bytes per cached memory less; "
                        "P_n is checked exactly either way). --plot implies it (the recall heatmap); with it "
                        "the JSON's recall_weights are filled")
    p.add_argument("--no-overlap", dest="overlap", action="store_false",
                   help="debugging: wait for each memory write's answer and check the cache before the next "
                        "segment starts (default: the write runs on the device while the host computes the "
                        "next segment's representation pass; its answer and the segment's cache check are "
                        "checked just before the device is next needed -- the same checks, in the same order "
                        "on the device)")
    p.add_argument("--offload-attention", metavar="SPEC",
                   help="run the backbone's attention of these layers[:heads] on the device too (e.g. 29, 0-29, "
                        "29:0,3, all), in ATTN_PASS tiles, every answer checked bit for bit; the other variants "
                        "run those heads in the same arithmetic on the host (needs protocol 1.3 / 2.2: the golden "
                        "device or the lane engine's gateware; with --device sim one layer is practical)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from .device import DeviceError, ProtocolError
    try:
        return _run(args)
    except ValueError as e:
        print(f"hmtx run: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (DeviceError, ProtocolError, ConnectionError) as e:
        print(f"hmtx run: device error: {e}", file=sys.stderr)
        return EXIT_DEVICE


def parse_fault(spec: str | None, segments: int | None = None, d: int | None = None):
    """(SEG, ELEM, BIT) of ``--inject-fault``; with ``segments`` and ``d`` also checked against the
    run (a fault at a segment the run never reaches would be silently ignored)."""
    if not spec:
        return None
    try:
        seg, elem, bit = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ValueError(f"--inject-fault {spec!r}: expected SEG:ELEM:BIT, three integers") from None
    if seg < 2 or elem < 0 or not 0 <= bit < 16:
        raise ValueError(f"--inject-fault {spec!r}: segment >= 2 (the first recall), element >= 0, bit in 0..15")
    if segments is not None and seg >= segments:
        raise ValueError(f"--inject-fault {spec!r}: segment {seg} is not reached by a run of --segments {segments} "
                         f"(segments 0..{segments - 1})")
    if d is not None and elem >= d:
        raise ValueError(f"--inject-fault {spec!r}: element {elem} >= d={d} (P_n has d elements)")
    return seg, elem, bit


def default_case_path() -> str:
    """build/cases/run-TIME.json in the hmtx tree (where build/sim lives), not in whatever folder
    the command was started from; a temporary folder when the tree cannot be written."""
    name = time.strftime("run-%Y%m%d-%H%M%S.json")
    path = str(CASES_DIR / name)
    try:
        return cli_options.check_output_path(path, "--case")
    except ValueError:
        import tempfile
        return os.path.join(tempfile.gettempdir(), "hmtx-cases", name)


def report_case(res, device_spec: str) -> None:
    """The line about the failing case, after the report: where it was saved, or why it was not."""
    if res is None:
        return
    if res.case_file:
        print(f"failing case saved: {res.case_file}  (replay: hmtx replay {res.case_file} --device {device_spec})",
              file=sys.stderr)
    elif res.case_error:
        print(f"hmtx run: could not save the failing case: {res.case_error}", file=sys.stderr)


def find_fmax(cfg, engine: str = "lanes", contract: int = 1) -> tuple[float, str] | None:
    """(Fmax MHz, report path) of the newest `hmtx synth` report of ``engine`` and ``contract``
    with this config."""
    from hmtx.hw.flow.reports import engine_report

    rep = engine_report(cfg, REPO, engine, contract)
    return (float(rep["fmax_mhz"]), rep["path"]) if rep else None


def _run(args) -> int:
    from hmtx.model.backbone import load_backbone
    from hmtx.model.hmt import HMT, read_checkpoint
    from hmtx.model.text import load_documents

    from .backends import FaultInjector, check_contract, open_transport
    from .device import Device, DeviceError, ProtocolError
    from .runtime import run_document

    t_start = time.monotonic()
    # Everything the user can get wrong is checked before the backbone loads (20 s for SmolLM2).
    if not isinstance(args.segments, int) or args.segments < 1:
        raise ValueError(f"--segments must be a positive integer, got {args.segments}")
    if args.full_check_every < 0:
        raise ValueError(f"--full-check-every must be >= 0 (0: only after the last segment), "
                         f"got {args.full_check_every}")
    # The heatmap is drawn from the device's own probabilities.
    probabilities = args.probabilities or bool(args.plot)
    timeout = cli_options.check_timeout(args.timeout)
    cfg = engine_config(args.backbone, BACKBONE_D[args.backbone], args.config)
    fault = parse_fault(args.inject_fault, args.segments, cfg.d)
    cli_options.check_device_spec(args.device, cfg)
    check_contract(args.device, args.contract)
    if args.offload_attention:
        from hmtx.model.attention_offload import check_offload_spec
        check_offload_spec(args.offload_attention)          # the syntax, before the slow load
    text = args.text or str(DEFAULT_TEXT)
    docs = load_documents(text)
    tdev = cli_options.torch_device(args.torch_device, "--torch-device")
    checkpoint = cli_options.resolve_checkpoint(args)
    cli_options.check_sizes_match(args, checkpoint)
    if checkpoint:
        ck, _ = read_checkpoint(checkpoint)
        if (ck.d, ck.d_h, ck.cache_size) != (cfg.d, cfg.d_h, cfg.n_slots):
            raise ValueError(f"checkpoint {checkpoint} (d={ck.d}, d_h={ck.d_h}, N={ck.cache_size}) does not fit "
                             f"engine config {cfg.name!r} (d={cfg.d}, d_h={cfg.d_h}, N={cfg.n_slots})")
    cli_options.check_output_path(args.json_out, "--json")
    cli_options.check_output_path(args.plot, "--plot", folder=True)
    case = cli_options.check_output_path(args.case, "--case") or default_case_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    backbone = load_backbone(args.backbone, tdev)
    cfg = engine_config(args.backbone, backbone.d, args.config)
    _, seg_len, sensory = BACKBONE_DEFAULTS[args.backbone]
    if checkpoint:
        from hmtx.model.train import load_trained
        model = load_trained(checkpoint, backbone)
    else:
        model = HMT.from_backbone(backbone, segment_length=args.segment_length or seg_len,
                                  sensory=sensory if args.sensory is None else args.sensory,
                                  cache_size=cfg.n_slots, d_h=cfg.d_h)
    model.to(tdev).eval()
    need = args.segments * model.config.tokens_per_segment
    doc = pick_document(text, backbone.tokenizer, need, docs)

    # A terminated run still stops its simulator and removes its socket folder (close() runs).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    transport = open_transport(args.device, cfg, waves=args.waves, contract=args.contract)
    injector = None
    if fault:
        transport = injector = FaultInjector(transport)
    try:
        device = Device(transport, cfg, timeout, args.contract)
    except BaseException:
        transport.close()
        raise
    from hmtx.model.protocol import Op

    def before_segment(seg):
        if fault and seg == fault[0]:
            _, elem, bit = fault
            injector.arm(Op.RECALL, 2 + 2 * elem + bit // 8, bit % 8)

    info = device.device_info
    print(f"hmtx run: {args.segments} segments x {model.config.tokens_per_segment} tokens of {doc.name!r}, "
          f"backbone {args.backbone}, engine {cfg.name} (d={info.d}, d_h={info.d_h}, N={info.n_slots}, "
          f"P={info.lanes}, {device.engine or 'lanes?'} engine) on device {args.device}, protocol "
          f"{info.version[0]}.{info.version[1]} (contract {device.contract}); "
          + _checks_line(args, probabilities, device.recall_flags, info.version), file=sys.stderr)
    bar = None
    if not args.quiet:
        from tqdm import tqdm
        bar = tqdm(total=args.segments, desc=f"segments on {args.device}", unit="seg", file=sys.stderr)

    def progress(seg, res):
        if bar is not None:
            bar.set_postfix(ops=res.ops_checked, mismatches=0)
            bar.update(1)

    try:
        with device:
            res = run_document(model, doc.ids, device, cfg, args.segments, case_path=case,
                               progress=progress, before_segment=before_segment,
                               fixed_stream=args.reference == "stream", cache_check=args.cache_check,
                               full_check_every=args.full_check_every, overlap=args.overlap,
                               probabilities=probabilities, offload_attention=args.offload_attention)
    except (DeviceError, ProtocolError, ConnectionError, ValueError) as e:
        # Report first, then where the case went (or why it could not be saved).
        if bar is not None:
            bar.close()
        device_error = not isinstance(e, ValueError)
        print(f"hmtx run: {'device error' if device_error else 'error'}: {e}", file=sys.stderr)
        report_case(getattr(e, "run_result", None), args.device)
        return EXIT_DEVICE if device_error else EXIT_USAGE
    except Exception:
        if bar is not None:
            bar.close()
        raise
    if bar is not None:
        bar.close()
    if args.waves and hasattr(transport, "waves_path") and transport.waves_path:
        print(f"waves: {transport.waves_path}")
    wall = time.monotonic() - t_start
    # INFO names the engine kind (protocol 1.1); a 1.0 device is taken for the lanes engine
    engine = device.engine or "lanes"
    fmax = (args.fmax, "--fmax") if args.fmax else find_fmax(cfg, engine, device.contract)
    summary = {
        "segments": res.segments,
        "ops_checked": res.ops_checked,
        "mismatches": 0 if res.mismatch is None else 1,
        "ppl": {"backbone": res.ppl("backbone"), "hmt_norecall": res.ppl("hmt_norecall"),
                "hmt_float": res.ppl("hmt_float"), "hmt_device": res.ppl("hmt_device"),
                "hmt_fixed": res.ppl("hmt_fixed")},
        "recall_gain": _gain(res.ppl("hmt_device"), res.ppl("hmt_norecall")),
        "device": args.device,
        "protocol": "%d.%d" % info.version,
        "contract": device.contract,
        "device_cycles": res.device_cycles,
        "fmax_mhz": fmax[0] if fmax else None,
        "fmax_source": fmax[1] if fmax else None,
        "device_time_s": res.device_cycles / (fmax[0] * 1e6) if fmax else None,
        "wall_s": wall,
        "run_s": res.wall_s,
        "tokens": res.tokens,
        "document": doc.name,
        "text": text,
        "backbone": args.backbone,
        "engine_config": cfg.to_dict(),
        "hmt_config": model.config.to_dict(),
        "checkpoint": checkpoint,
        "trained": bool(checkpoint),
        "reference": args.reference,
        "overlap": args.overlap,
        "cache_check": args.cache_check,
        "full_check_every": args.full_check_every if args.cache_check == "written" else None,
        "probabilities": probabilities,
        "offload_attention": args.offload_attention,
        "attention_heads": res.attention_heads,
        "attention_ops": res.attention_ops,
        "per_segment": {v: res.ppl_per_segment(v) for v in res.nll},
        "recall_weights": [{str(k): v for k, v in w.items()} if w else None for w in res.recall_probs],
        "mismatch": None if res.mismatch is None else vars(res.mismatch),
        "case_file": res.case_file,
    }
    if not checkpoint:
        summary["note"] = UNTRAINED.format(seed=model.config.seed)
    elif os.path.realpath(checkpoint) == os.path.realpath(DEFAULT_CHECKPOINT):
        summary["note"] = SHIPPED_NOTE.format(path=DEFAULT_CHECKPOINT.relative_to(REPO))
    print(format_summary(summary))
    if res.mismatch is not None:
        print(res.mismatch.describe(), file=sys.stderr)
        report_case(res, args.device)
    rc = EXIT_MISMATCH if res.mismatch is not None else 0
    # The outputs were checked before the run; should writing one fail anyway (disk full, the
    # folder removed meanwhile), the report above stands and the exit status says so.
    for what, path, write in (("--json", args.json_out, lambda p: _write_json(summary, p)),
                              ("--plot", args.plot, lambda p: write_plots(summary, p))):
        if path:
            try:
                write(path)
            except OSError as e:
                print(f"hmtx run: error: {what} {path}: could not write ({e.strerror or e})", file=sys.stderr)
                rc = rc or EXIT_USAGE
    return rc


def _checks_line(args, probabilities: bool, flags: bool, version) -> str:
    """What the run reads back besides the work: the cache check and the probabilities."""
    if args.cache_check == "full":
        cache = "whole cache checked after every segment"
    else:
        every = (f"every {args.full_check_every} segments and " if args.full_check_every else "")
        cache = f"written slot checked per segment, whole cache {every}at the end"
    if probabilities:
        probs = "probabilities asked for and checked"
    elif flags:
        probs = "probabilities not asked for (--probabilities)"
    else:
        probs = (f"probabilities sent anyway (protocol {version[0]}.{version[1]} has no RECALL flags) "
                 "and checked")
    return f"{cache}; {probs}"


def _write_json(summary: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)


def _gain(ppl_hmt, ppl_norecall):
    """What the recall is worth: 1 - PPL(HMT) / PPL(HMT with the recall off)."""
    if ppl_hmt is None or not ppl_norecall:
        return None
    return 1 - ppl_hmt / ppl_norecall


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def format_summary(s: dict) -> str:
    ppl = s["ppl"]
    rows = [
        ("segments", f"{s['segments']} ({s['tokens']} scored tokens)"),
        ("device ops checked", str(s["ops_checked"])),
        *([("attention on device", f"layers[:heads] {s['offload_attention']}: {s['attention_heads']} heads, "
                                   f"{s['attention_ops']} ATTN_PASS ops, all checked")]
          if s.get("offload_attention") else []),
        ("mismatches", str(s["mismatches"])),
        ("PPL backbone only", _fmt(ppl["backbone"])),
        ("PPL HMT, recall off", _fmt(ppl.get("hmt_norecall"))),
        ("PPL HMT float", _fmt(ppl["hmt_float"])),
        ("PPL HMT fixed (reference)", _fmt(ppl["hmt_fixed"]) if ppl["hmt_fixed"] is not None else
         "(not run as its own stream: every device answer checked inline; --reference stream runs it)"),
        ("PPL HMT on device", _fmt(ppl["hmt_device"]) + ("  (== reference, bit-exact)"
                                                         if ppl["hmt_device"] is not None
                                                         and ppl["hmt_device"] == ppl["hmt_fixed"] else "")),
        ("recall gain (device)", "-" if s.get("recall_gain") is None else
         f"{100 * s['recall_gain']:+.2f} %  (1 - PPL on device / PPL recall off)"),
        ("device cycles (compute)", f"{s['device_cycles']:,}"),
        ("est. device time", f"{s['device_time_s'] * 1e3:.3f} ms at {s['fmax_mhz']:g} MHz ({s['fmax_source']})"
         if s["device_time_s"] is not None else "unknown (no Fmax: pass --fmax or run `hmtx synth`)"),
        ("host wall time", f"{s['wall_s']:.1f} s (run {s['run_s']:.1f} s)"),
    ]
    width = max(len(k) for k, _ in rows)
    contract = f", contract {s['contract']}" if s.get("contract") else ""
    lines = [f"hmtx run summary — device {s['device']}{contract}, document {s['document']!r}"]
    if s.get("mismatch"):
        lines.append(f"  STOPPED at the first mismatch (segment {s['mismatch']['segment']}); "
                     "the numbers below cover the segments completed before it")
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    if s.get("note"):
        lines.append("note: " + s["note"])
    return "\n".join(lines)


def write_plots(s: dict, folder: str) -> list[str]:
    """PPL per segment for the three variants, and the recall weights over past segments."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    os.makedirs(folder, exist_ok=True)
    paths = []
    per = s["per_segment"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for v, label in (("backbone", "backbone only"), ("hmt_norecall", "HMT, recall off"), ("hmt_float", "HMT float"),
                     ("hmt_device", "HMT on device")):
        if v not in per:
            continue
        ax.plot(range(len(per[v])), per[v], marker="o", label=f"{label} ({_fmt(s['ppl'][v], '.2f')})")
    ax.set_xlabel("segment")
    ax.set_ylabel("perplexity")
    ax.set_title(f"PPL per segment — {s['document']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(folder, "ppl_per_segment.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    n = s["segments"]
    heat = np.full((n, n), np.nan)
    for seg, w in enumerate(s["recall_weights"][:n]):
        for past, p in (w or {}).items():
            heat[seg, int(past)] = p
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    im = ax.imshow(heat, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xlabel("recalled memory of segment")
    ax.set_ylabel("current segment")
    ax.set_title("device recall weights (context distance)")
    fig.colorbar(im, ax=ax, label="softmax weight")
    fig.tight_layout()
    paths.append(os.path.join(folder, "recall_heatmap.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
