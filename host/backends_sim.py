"""The ``sim`` backend: the engine's generated Verilog under Verilator + cocotb, in a child process.

:class:`SimTransport` starts ``python -m hmtx.host.backends_sim`` in its own process group. That
launcher writes the Verilog of the top (``hmtx.hw.top.HmtxTop(config, engine, contract)`` by default), builds it
with ``hmtx.sim.runner`` (cached by content hash), and runs the cocotb module
``hmtx.sim.bridge``, which listens on a Unix socket in a private temporary folder; the transport
connects to it and moves bytes. Nothing listens on a network interface.

A simulator that cannot start, or that dies, surfaces as :class:`ConnectionError` with the exit
status and the tail of its log; ``close()`` stops the whole process group.
"""

import argparse
import importlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from hmtx.model.configs import EngineConfig

from .transport import Transport

__all__ = ["SimTransport", "DEFAULT_TOP"]

DEFAULT_TOP = "hmtx.hw.top:HmtxTop"
START_TIMEOUT_S = 600      # a first Verilator build of a large config takes minutes on 2 cores


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class SimTransport(Transport):
    """Bytes to and from the simulated engine (see the module docstring).

    Parameters
    ----------
    config : EngineConfig
        Sizes of the engine to generate.
    waves : bool
        Build a tracing model and write waves (the path is in the log).
    top : str
        ``module:Class`` of the Amaranth component to simulate; called with ``config`` (and
        ``engine=`` when ``engine`` is not the default).
    engine : str
        HmtxTop's engine, one of :data:`hmtx.hw.ENGINES` (``lanes`` or ``serial``). The
        transport's name is ``sim`` for lanes, ``sim:<engine>`` otherwise (the device spec).
    contract : int
        The arithmetic contract HmtxTop is built for (1 or 2; its INFO then reports 1.x or 2.x).
    """

    def __init__(self, config: EngineConfig, *, waves: bool = False, top: str = DEFAULT_TOP,
                 engine: str = "lanes", contract: int = 1, start_timeout: float = START_TIMEOUT_S):
        from hmtx.hw import ENGINES
        from hmtx.model.protocol import CONTRACTS
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        if contract not in CONTRACTS:
            raise ValueError(f"unknown contract {contract!r}; choose one of {CONTRACTS}")
        self.name = "sim" if engine == "lanes" else f"sim:{engine}"
        self.engine = engine
        self._dir = tempfile.mkdtemp(prefix="hmtx-sim-")       # mode 0700: the socket is private
        self.socket_path = os.path.join(self._dir, "bridge.sock")
        self.log_path = os.path.join(self._dir, "launcher.log")
        self._sock = None
        self.waves_path = None
        self._waves = waves
        cmd = [sys.executable, "-m", "hmtx.host.backends_sim", "--socket", self.socket_path,
               "--config", json.dumps(config.to_dict()), "--top", top, "--engine", engine,
               "--contract", str(contract)] + \
              (["--waves"] if waves else [])
        with open(self.log_path, "w") as log:
            # (the simulator is found by hmtx.sim.runner, which puts the venv's bin on PATH if needed)
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            self._connect(start_timeout)
        except BaseException:
            self.close()
            raise

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ConnectionError(self._dead("exited before accepting a connection"))
            if os.path.exists(self.socket_path):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(self.socket_path)
                    self._sock = s
                    return
                except OSError:
                    s.close()
            if time.monotonic() > deadline:
                raise ConnectionError(f"simulator did not open its socket within {timeout:g} s; "
                                      f"log {self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(0.05)

    def _dead(self, what: str) -> str:
        try:
            rc = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            rc = None
        status = "still running" if rc is None else (f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}")
        return f"simulator process {what} ({status}); log {self.log_path}:\n{_tail(self.log_path)}"

    def write(self, data: bytes) -> None:
        if self._sock is None:
            raise ConnectionError("sim transport is closed")
        try:
            self._sock.sendall(data)
        except OSError:
            raise ConnectionError(self._dead("closed the connection")) from None

    def read(self, timeout: float) -> bytes:
        if self._sock is None:
            raise ConnectionError("sim transport is closed")
        r, _, _ = select.select([self._sock], [], [], max(timeout, 0))
        if not r:
            if self.proc.poll() is not None:
                raise ConnectionError(self._dead("died"))
            return b""
        try:
            data = self._sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            raise ConnectionError(self._dead("closed the connection"))
        return data

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)        # the bridge ends its test when the host hangs up
            except subprocess.TimeoutExpired:
                self.kill()
        for line in _tail(self.log_path, 200).splitlines():
            if line.startswith("waves: "):
                self.waves_path = line[len("waves: "):].strip()
        shutil.rmtree(self._dir, ignore_errors=True)

    def kill(self) -> None:
        """Stop the simulator's whole process group now (launcher, simulator)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if not self._waves:
            # The launcher had no chance to remove its run folder (tagged with its pid).
            from hmtx.sim.runner import BUILD
            for out in BUILD.glob(f"*/runs/*/bridge-{self.proc.pid}"):
                shutil.rmtree(out, ignore_errors=True)


# --- the launcher (runs in the child process) ----------------------------------------------------
def _load_top(spec: str):
    module, _, cls = spec.partition(":")
    if not cls:
        raise ValueError(f"--top must be module:Class, got {spec!r}")
    return getattr(importlib.import_module(module), cls)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hmtx.host.backends_sim",
                                 description="Build the engine's Verilog and serve it on a Unix socket (cocotb bridge).")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--config", required=True, help="EngineConfig as JSON")
    ap.add_argument("--top", default=DEFAULT_TOP)
    from hmtx.hw import ENGINES
    ap.add_argument("--engine", choices=ENGINES, default="lanes",
                    help="HmtxTop's engine: lanes (hw/engine.py, default) or serial (hw/serial_engine.py)")
    ap.add_argument("--contract", type=int, choices=(1, 2), default=1,
                    help="the arithmetic contract HmtxTop computes (1, default, or 2)")
    ap.add_argument("--waves", action="store_true")
    args = ap.parse_args(argv)
    from hmtx.sim import runner

    config = EngineConfig(**json.loads(args.config))
    top_cls = _load_top(args.top)
    # (a --top other than HmtxTop, e.g. the bridge's Loopback, need not take an engine or contract)
    kwargs = ({} if args.engine == "lanes" else {"engine": args.engine}) | \
        ({} if args.contract == 1 else {"contract": args.contract})
    top = top_cls(config, **kwargs)
    c = config
    # the engine and contract are in the name: the runner keeps one model per name and drops the older ones
    engine = ("" if args.engine == "lanes" else f"-{args.engine}") + ("" if args.contract == 1 else f"-c{args.contract}")
    name = (f"bridge-{top_cls.__name__}{engine}-{c.name}-{c.d}x{c.d_h}x{c.n_slots}x{c.lanes}-"
            f"{c.head_dim}x{c.max_queries}x{c.max_keys}")
    from hmtx.sim.bridge import BlockBridge
    target = runner.component_target(name, BlockBridge(top), toplevel="top")
    print(f"building {name} ...", flush=True)
    model = runner.build(target, waves=args.waves)
    print(f"model {model.build_dir}; serving on {args.socket}", flush=True)
    try:
        model.run("hmtx.sim.bridge", tag=f"bridge-{os.getpid()}", env={"HMTX_BRIDGE_SOCKET": args.socket})
    finally:
        # The run folder holds only the waves worth keeping; a crashed simulator's log tail is
        # already in this process's output, which the host shows.
        if not args.waves:
            for out in model.runs:
                shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
