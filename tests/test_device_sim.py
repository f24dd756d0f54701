"""The ``sim`` backend: the Verilator/cocotb bridge in a child process, over a Unix socket."""

import os
import signal
import time

import pytest

from device_testlib import Shuttle, run_session
from hmtx.host.backends import GoldenTransport, SerialTransport
from hmtx.host.backends_sim import SimTransport
from hmtx.model.defaults import engine_config
from hmtx.host.device import Device
from hmtx.model import protocol as P
from hmtx.model.golden_device import example_session

# The engine `hmtx run --backbone tiny` simulates (tiny widened to the tiny Llama's d=32): one
# Verilator build serves these tests and tests/test_run_cli.py.
CFG = engine_config("tiny", 32, None)
SEED = int(os.environ.get("HMTX_SEED", "7"))


@pytest.fixture(autouse=True)
def _print_seed():
    # Shown with the output of a failing test: rerun with HMTX_SEED=<this> to reproduce.
    print(f"HMTX_SEED={SEED}")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


@pytest.fixture(scope="module")
def sim():
    t = SimTransport(CFG)
    yield t
    t.close()
    assert t.proc.returncode == 0          # the bridge ended its test when the host hung up


def test_sim_and_golden_identical_bytes_for_recorded_session(sim):
    assert (sim.name, sim.engine) == ("sim", "lanes")          # `hmtx run` picks its Fmax report by it
    assert os.stat(os.path.dirname(sim.socket_path)).st_mode & 0o077 == 0      # private socket folder
    session = example_session(CFG, seed=SEED)
    want = run_session(GoldenTransport(CFG), session)
    got = run_session(sim, session)
    bad = []
    for (label, raw), w, g in zip(session, want, got):
        if raw[0] == P.Op.CYCLES:                      # implementation-defined counts
            continue
        if g != w:
            bad.append(f"{label}: sim {g.hex()} != golden {w.hex()}")
    assert not bad, f"{len(bad)} of {len(session)} responses differ:\n" + "\n".join(bad[:10])


def test_serial_backend_against_sim_through_pty(sim):
    shuttle = Shuttle(sim)
    try:
        with Device(SerialTransport(shuttle.port), CFG) as d:
            assert d.info().mismatches(CFG) == []
            d.reset()
            assert d.status().fill == 0
            with pytest.raises(P.DeviceError, match="SLOT_RANGE to READ_SLOT"):
                d.read_slot(0)
    finally:
        shuttle.close()


def test_killed_simulator_gives_clear_error_not_hang():
    t = SimTransport(CFG)
    try:
        dev = Device(t, CFG)
        assert dev.status().fill == 0
        # Kill the simulator executable itself (the launcher's child), as a crash would.
        for pid in _children(t.proc.pid) or [t.proc.pid]:
            os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="STATUS on sim: simulator process"):
            for _ in range(20):
                dev.status()
                time.sleep(0.2)
        assert time.monotonic() - start < 20
        # No wall-clock limit was set, so the launcher's report cites none; it removed its run folder.
        t.proc.wait(timeout=10)
        with open(t.log_path) as f:
            log = f.read()
        assert "simulation ended without a results file (crash or $finish)" in log, log[-2000:]
        assert "0 s wall-clock" not in log
        from hmtx.sim.runner import BUILD
        assert not list(BUILD.glob(f"*/runs/*/bridge-{t.proc.pid}")), "the crashed run's folder was left behind"
    finally:
        t.kill()
        t.close()


def test_missing_top_fails_fast_with_log():
    with pytest.raises(ConnectionError, match="(?s)exited before accepting.*No module named 'hmtx.nope'"):
        SimTransport(CFG, top="hmtx.nope:Top")


@pytest.mark.slow
def test_loopback_bytes_round_trip():
    """The bridge alone, on a FIFO instead of the engine: every byte value both ways."""
    data = bytes(range(256)) * 4 + bytes([P.END])
    with SimTransport(CFG, top="hmtx.sim.bridge:Loopback") as t:
        t.write(data)
        got = b""
        deadline = time.monotonic() + 60
        while len(got) < len(data) and time.monotonic() < deadline:
            got += t.read(1.0)
        assert got == data


def test_overlapped_run_on_the_simulated_rtl_matches_the_run_without(sim):
    """run_document with the write posted to the simulated RTL (computing in its own process while
    the host runs the next segment's passes) against the golden device without overlap: the
    same NLLs, checks and command bytes, and the write's answer is read after the representation
    pass."""
    from device_testlib import Recorder
    from hmt_testlib import random_ids, tiny_hmt
    from hmtx.host.runtime import run_document

    model = tiny_hmt(cache_size=CFG.n_slots, d_h=CFG.d_h)
    segments = CFG.n_slots + 2                       # the ring wraps
    ids = random_ids(model.config.tokens_per_segment * segments, seed=SEED)
    events = []
    real = model.representation
    model.representation = lambda h: (events.append(("repr", None)), real(h))[1]
    rec = Recorder(sim, events)
    dev = Device(rec, CFG)
    try:
        got = run_document(model, ids, dev, CFG, segments, overlap=True, fixed_stream=False)
    finally:
        dev.collect()                                # the module's simulator stays open
    want_rec = Recorder(GoldenTransport(CFG), [])
    with Device(want_rec, CFG) as gdev:
        want = run_document(model, ids, gdev, CFG, segments, overlap=False, fixed_stream=False)
    assert got.mismatch is None and want.mismatch is None
    assert (got.nll, got.ops_checked, got.segments) == (want.nll, want.ops_checked, want.segments)
    strip = lambda b: b[b.index(bytes([P.Op.INFO])):]               # from INFO on (markers differ)
    assert strip(bytes(rec.sent)) == strip(bytes(want_rec.sent))
    for r in [i for i, e in enumerate(events) if e == ("send", P.Op.RECALL)]:
        rep = max(i for i in range(r) if events[i][0] == "repr")
        wa = max(i for i in range(r) if events[i] == ("answer", P.Op.WRITE_MEMORY))
        ws = max(i for i in range(r) if events[i] == ("send", P.Op.WRITE_MEMORY))
        assert ws < rep < wa < r, events[ws:r + 1]


def test_attention_head_cycles_on_the_simulated_chip_are_what_the_bench_counts(sim):
    """bench.attention_speed's RTL cycles of a causal head (every ATTN_PASS shape run on the
    lane engine in Amaranth's simulator, plus the top's cycle per operation) are what the
    Verilated chip's CYCLES adds up over the head that ``hmtx run --offload-attention`` sends."""
    import numpy as np
    from hmtx.bench.attention_speed import head_plan, op_shapes, rtl_cycles
    from hmtx.host.attention_tiles import CheckedAttention
    from hmtx.host.runtime import CheckedDevice
    from hmtx.model import fixed

    n = 2 * CFG.max_keys + 3          # three key tiles, a partial one last
    dev = Device(sim, CFG)
    att = CheckedAttention(CheckedDevice(dev, CFG))
    rng = np.random.default_rng(SEED)
    q, k, v = ((rng.integers(-127, 128, (n, CFG.head_dim)), rng.integers(-8, 2, n)) for _ in range(3))
    before = dev.cycles().total
    att.head(*q, *k, *v, fixed.causal_mask(n, n))
    plan = head_plan(CFG, n, rtl_cycles(CFG, op_shapes(CFG, n)))
    assert att.ops == plan["ops"]
    assert dev.cycles().total - before == plan["rtl_cycles"]
