"""`hmtx synth`: a bitstream for a board with the open tools, and a JSON report read from them."""

import argparse
import json
import os
import sys

__all__ = ["register", "make_core", "resolve_engine", "resolve_seed", "synth_options", "default_out_dir",
           "format_summary"]

CORES = ("hmtx", "echo")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="build a bitstream (YoWASP Yosys + nextpnr) and report Fmax and resources",
        description="Synthesize, place and route the accelerator behind a UART bridge for a board, "
                    "write the bitstream and a JSON report whose numbers come from the tools' own "
                    "reports (nextpnr --report JSON and log, Yosys statistics). See docs/synthesis.md.")
    add_build_arguments(p)
    p.add_argument("--lanes", type=int, help="P, MAC lanes (default: the config's)")
    p.add_argument("--out", help="build directory inside the project (default build/synth/BOARD-CONFIG-pP, "
                                 "with -serial appended for the serial engine)")
    p.add_argument("--json", dest="json_out", help="write the report here (default OUT/synth_report.json; OUT/report.json is nextpnr's own)")
    p.set_defaults(func=run)


def add_build_arguments(p) -> None:
    """Arguments `hmtx synth` and `hmtx sweep` share."""
    from hmtx.hw import ENGINES
    from hmtx.hw.board import DEFAULT_BAUD
    from hmtx.hw.flow.boards import BOARDS

    p.add_argument("--board", required=True, choices=sorted(BOARDS), help="target board")
    p.add_argument("--config", help="engine config name (default: the board's, smollm or up5k)")
    p.add_argument("--core", choices=CORES, default="hmtx",
                   help="hmtx: the accelerator (hmtx.hw.top.HmtxTop); echo: the small stand-in "
                        "EchoCore (UART loopback with P int8 MAC lanes) for checking a board")
    p.add_argument("--engine", choices=ENGINES,
                   help="datapath of --core hmtx: lanes, P pipelined MAC lanes (hw/engine.py), or "
                        "serial, one time-shared multiplier (hw/serial_engine.py); default: serial "
                        "on icebreaker, lanes on ulx3s-85f")
    p.add_argument("--contract", type=int, choices=(1, 2), default=1,
                   help="arithmetic contract of --core hmtx (docs/arithmetic.md section 10): 1 "
                        "(default; protocol 1.x) or 2, the keys folded with W_q at WRITE_MEMORY "
                        "(protocol 2.x); 2 builds to OUT with -c2 appended")
    p.add_argument("--freq", type=float, help="system clock in MHz made by the PLL "
                                             "(default: 100 on ulx3s-85f, 24 on icebreaker)")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                   help=f"UART rate, 8N1 (default {DEFAULT_BAUD}, the host runtime's default)")
    p.add_argument("--seed", metavar="SEED[,SEED...]",
                   help="nextpnr placement seed, or several separated by commas: Yosys runs once, "
                        "place and route once per seed (OUT/seedN), and the build with the "
                        "highest Fmax is kept (default for hmtx synth: 1,2,3 on ulx3s-85f, where "
                        "smollm's Fmax moves by several MHz with the seed around 100 MHz, 1 on "
                        "icebreaker; hmtx sweep: 1)")
    p.add_argument("--jobs", type=int,
                   help="place-and-route runs at a time with several seeds (default: one per "
                        "seed, at most the CPU count)")
    p.add_argument("--router", choices=["router1", "router2"],
                   help="nextpnr router (default: nextpnr's own, router1: on the same smollm "
                        "netlist it reached 65.6 MHz where router2 reached 41.4)")
    p.add_argument("--placer-density", type=float,
                   help="nextpnr HeAP's maximum placement density (--placer-heap-beta; default "
                        "0.7 on ECP5, nextpnr's own 0.9 elsewhere): lower spreads the logic, "
                        "which is what lets smollm at P=64 route")
    p.add_argument("--timing-weight", type=int,
                   help="nextpnr's placer timing weight (--placer-heap-timingweight; nextpnr's default "
                        "10). 40 raised smollm's post-placement estimate from 54.4 to 57.4 MHz")
    p.add_argument("--no-floorplan", dest="floorplan", action="store_false",
                   help="leave the engine's block RAMs and lane multipliers to the placer (by "
                        "default they are pinned per lane quad on the LFE5U-85F, hw/flow/floorplan.py)")
    p.add_argument("--detailed-timing", action="store_true",
                   help="have nextpnr add every net's routed delays to its report.json "
                        "(--detailed-timing-report; tens of MB at P=64), for "
                        "bench/routed_nets.py")
    p.add_argument("--hierarchy", action="store_true",
                   help="also report what each module costs (LUTs, flip-flops, carries, DSPs, "
                        "block RAMs per module of the design; Yosys runs once more without "
                        "flattening), also for a design that does not fit")
    p.add_argument("--yosys-opts", help="options for synth_ecp5/synth_ice40 instead of the "
                                        "defaults (-nolutram on ECP5, none on iCE40); quote "
                                        "them, e.g. --yosys-opts='-nolutram -dff', or "
                                        "--yosys-opts= for none")
    p.add_argument("--ice40-dsp", action=argparse.BooleanOptionalAction,
                   help="let Yosys map multipliers to SB_MAC16 (synth_ice40 -dsp). On by default "
                        "for the serial engine, whose one multiplier is meant for an SB_MAC16; off "
                        "otherwise: it has miscompiled here (two int8 products merged into one "
                        "SB_MAC16), so check such a netlist by gate-level simulation")


def make_core(name, config, engine="lanes", contract=1):
    """The core instance for ``--core``: HmtxTop(config, engine, contract) or EchoCore(config)."""
    if name == "hmtx":
        try:
            from hmtx.hw.top import HmtxTop
        except ImportError as e:
            raise ValueError(f"--core hmtx: hmtx.hw.top.HmtxTop cannot be imported ({e}); "
                             f"use --core echo") from None
        try:
            return HmtxTop(config, engine, contract)
        except ImportError as e:
            raise ValueError(f"--engine {engine}: its engine cannot be imported ({e})") from None
    if contract != 1:
        raise ValueError(f"--contract {contract} applies to --core hmtx, not --core {name}")
    if name == "echo":
        from hmtx.hw.board import EchoCore
        return EchoCore(config)
    raise ValueError(f"unknown core {name!r}; choose one of {', '.join(CORES)}")


def resolve_engine(args):
    """(engine, ice40_dsp) of a parsed `hmtx synth`/`hmtx sweep` command line.

    The engine defaults to the board's (serial on the iCE40 UP5K, whose few LUTs hold no lanes,
    lanes elsewhere); it is None for the echo core, which has none. ``--ice40-dsp`` defaults to
    on for the serial engine on iCE40: its multiplier is sized for one SB_MAC16, and in logic
    cells it would cost a large share of the UP5K.
    """
    from hmtx.hw.flow.boards import BOARDS

    board = BOARDS[args.board]
    if args.core != "hmtx":
        if args.engine is not None:
            raise ValueError(f"--engine applies to --core hmtx, not --core {args.core}")
        engine = None
    else:
        engine = args.engine or board.default_engine
    dsp = args.ice40_dsp
    if dsp is None:
        dsp = board.family == "ice40" and engine == "serial"
    return engine, dsp


def default_out_dir(board, config_name, lanes, core="hmtx", engine="lanes", contract=1):
    suffix = "" if core == "hmtx" else f"-{core}"
    if core == "hmtx" and engine not in (None, "lanes"):
        suffix += f"-{engine}"      # (lanes keeps the folder names of the builds made before)
    if contract != 1:
        suffix += f"-c{contract}"
    return os.path.join("build", "synth", f"{board}-{config_name}-p{lanes}{suffix}")


def resolve_config(args, lanes=None, n_slots=None):
    from hmtx.hw.flow.boards import BOARDS
    from hmtx.model.configs import get_config

    name = args.config or BOARDS[args.board].default_config
    config = get_config(name)
    changes = {}
    if lanes is not None:
        changes["lanes"] = lanes
    if n_slots is not None:
        changes["n_slots"] = n_slots
    return name, config.with_(**changes) if changes else config


def resolve_seed(args):
    """``--seed`` as given, else the board's default seeds (hw.flow.boards.Board.default_seeds)."""
    from hmtx.hw.flow.boards import BOARDS
    return args.seed if args.seed is not None else BOARDS[args.board].default_seeds


def synth_options(args, config_name, config):
    """The :class:`~hmtx.hw.flow.synth.SynthOptions` of a parsed `hmtx synth`/`hmtx sweep`
    command line for one build of ``config``."""
    from hmtx.hw.flow.synth import SynthOptions

    _, ice40_dsp = resolve_engine(args)
    return SynthOptions(
        config_name=config_name, lanes=config.lanes, sync_mhz=args.freq, baud=args.baud,
        seeds=resolve_seed(args), jobs=args.jobs, progress=_seed_done, ice40_dsp=ice40_dsp,
        synth_opts=None if args.yosys_opts is None else args.yosys_opts.split(),
        router=args.router, timing_weight=args.timing_weight, floorplan=args.floorplan,
        placer_density=args.placer_density, detailed_timing=args.detailed_timing,
        hierarchy=args.hierarchy)


def build_one(args, config_name, config, out_dir):
    """One build; raises BuildFailed (with a partial report) when no bitstream comes out."""
    from hmtx.hw.flow.synth import BuildFailed, synthesize

    engine, _ = resolve_engine(args)
    options = synth_options(args, config_name, config)
    extra = {"n_slots": config.n_slots, "engine_config": config.to_dict()}
    try:
        report = synthesize(args.board, make_core(args.core, config, engine, args.contract), out_dir, options)
    except BuildFailed as e:
        e.report.update(extra)
        raise
    report.update(extra)
    return report


def _seed_done(seed, fmax_mhz, error):
    print(f"  seed {seed}: " + (f"{fmax_mhz:.2f} MHz" if error is None else f"failed: {error}"),
          file=sys.stderr, flush=True)


def format_summary(report):
    res = report["resources"]

    def pct(kind):
        r = res[kind]
        return f"{r['used']}/{r['total']} ({100 * r['used'] / r['total']:.1f}%)"

    verdict = "met" if report["timing_met"] else \
        f"MISSED by {report['target_mhz'] - report['fmax_mhz']:.2f} MHz"
    lines = [
        f"{report['board']} ({report['device']}), config {report['config']}, P={report['lanes']}, "
        f"core {report['core']}" + (f" ({report['engine']} engine)" if report.get("engine") else "")
        + (f", contract {report['contract']}" if report.get("contract", 1) != 1 else ""),
        f"  Fmax {report['fmax_mhz']:.2f} MHz, target {report['target_mhz']:g} MHz: timing {verdict}"
        + (f" (seed {report['seed']}, best of {len(report['seeds'])})" if report.get("seeds") else ""),
        f"  LUT {pct('lut')}  FF {pct('ff')}  DSP {pct('dsp')}  BRAM {pct('bram')}"
        # (an iCE40 logic cell is a LUT and a flip-flop: the cells, not the LUTs, are what runs out)
        + (f"  logic cells {pct('logic_cells')}" if "logic_cells" in res else ""),
    ]
    cp = report.get("critical_path")
    if cp:
        lines.append(f"  critical path {cp['delay_ns']:.2f} ns ({cp['logic_ns']:.2f} logic, "
                     f"{cp['routing_ns']:.2f} routing, {cp['logic_levels']} logic levels): "
                     f"{cp['start']} -> {cp['end']}")
        if cp.get("rtl_sources"):
            lines.append(f"    through {', '.join(cp['rtl_sources'])}")
    lines.append(f"  bitstream {report['bitstream']}")
    return "\n".join(lines)


def run(args) -> int:
    from hmtx.hw.flow.synth import BuildFailed

    try:
        config_name, config = resolve_config(args, lanes=args.lanes)
        engine, _ = resolve_engine(args)
        out_dir = args.out or default_out_dir(args.board, config_name, config.lanes, args.core, engine,
                                              args.contract)
        from .cli_options import check_output_path
        check_output_path(out_dir, "--out", folder=True)        # before minutes of synthesis
        check_output_path(args.json_out, "--json")
        report = build_one(args, config_name, config, out_dir)
    except ValueError as e:
        print(f"hmtx synth: error: {e}", file=sys.stderr)
        return 2
    except BuildFailed as e:
        report = e.report
        pnr_dir = os.path.join(out_dir, "seed*") if report.get("seeds") else out_dir
        print(f"hmtx synth: error: {e}; logs: top.rpt (Yosys) in {out_dir}, top.tim (nextpnr) "
              f"in {pnr_dir}", file=sys.stderr)
    json_out = args.json_out or os.path.join(out_dir, "synth_report.json")
    os.makedirs(os.path.dirname(json_out) or ".", exist_ok=True)
    with open(json_out, "w") as f:
        json.dump(report, f, indent=2)
    if report["fits"]:
        print(format_summary(report))
    if report.get("modules"):
        from hmtx.hw.flow.hierarchy import costs_table
        print(costs_table(report["modules"]))
    if report.get("modules_error"):
        print(f"hmtx synth: {report['modules_error']}", file=sys.stderr)
    print(f"  report {json_out}")
    return 0 if report["fits"] else 1
