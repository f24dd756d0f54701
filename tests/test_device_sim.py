"""The ``sim`` backend: the Verilator/cocotb bridge in a child process, over a Unix socket."""

import os
import signal
import time

import pytest

from device_testlib import Shuttle, run_session
from hmtx.host import protocol as P
from hmtx.host.backends import GoldenTransport, SerialTransport
from hmtx.host.backends_sim import SimTransport
from hmtx.host.device import Device
from hmtx.host.golden_device import example_session
from hmtx.host.cmd_run import engine_config


# The engine `hmtx run --backbone tiny` simulates (tiny widened to the tiny Llama's d=32): one
# Verilator build serves these tests and tests/test_run_cli.py.
CFG = engine_config("tiny", 32, None)
SEED = int(os.environ.get("HMTX_SEED", "7"))
LOOPBACK = "hmtx.sim.bridge:Loopback"


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def test_loopback_bytes_round_trip_and_clean_close():
    data = bytes(range(256)) * 4 + bytes([P.END])
    with SimTransport(CFG, top=LOOPBACK) as t:
        assert t.socket_path.startswith("/") and os.stat(os.path.dirname(t.socket_path)).st_mode & 0o077 == 0
        t.write(data)
        got = b""
        deadline = time.monotonic() + 30
        while len(got) < len(data) and time.monotonic() < deadline:
            got += t.read(1.0)
        assert got == data
    assert t.proc.returncode == 0                      # the bridge ended when the host hung up


def test_killed_simulator_gives_clear_error_not_hang():
    t = SimTransport(CFG, top=LOOPBACK)
    try:
        t.write(b"\x01\x02" + bytes([P.END]))
        assert t.read(10.0)
        # Kill the simulator executable itself (the launcher's child), as a crash would.
        sims = [c for c in _children(t.proc.pid)] or [t.proc.pid]
        for pid in sims:
            os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="simulator process"):
            for _ in range(40):
                t.write(b"\x01" + bytes([P.END]))
                t.read(0.5)
        assert time.monotonic() - start < 20
    finally:
        t.kill()
        t.close()


def test_missing_top_fails_fast_with_log():
    with pytest.raises(ConnectionError, match="(?s)exited before accepting.*No module named 'hmtx.nope'"):
        SimTransport(CFG, top="hmtx.nope:Top")


def test_sim_and_golden_identical_bytes_for_recorded_session():
    session = [(label, raw) for label, raw in example_session(CFG, seed=SEED)]
    want = run_session(GoldenTransport(CFG), session)
    with SimTransport(CFG) as t:
        got = run_session(t, session)
    bad = []
    for (label, raw), w, g in zip(session, want, got):
        if raw[0] == P.Op.CYCLES:                      # implementation-defined counts
            continue
        if g != w:
            bad.append(f"{label}: sim {g.hex()} != golden {w.hex()}")
    assert not bad, f"{len(bad)} of {len(session)} responses differ:\n" + "\n".join(bad[:10])


def test_serial_backend_against_sim_through_pty():
    with SimTransport(CFG) as sim:
        shuttle = Shuttle(sim)
        try:
            with Device(SerialTransport(shuttle.port), CFG) as d:
                assert d.info().mismatches(CFG) == []
                assert d.status().fill == 0
        finally:
            shuttle.close()
