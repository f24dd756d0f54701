"""The virtual board: the board top `hmtx synth` builds (UART bridge, divisor, FIFOs, engine)
under Verilator behind a pseudo-terminal, driven through the unchanged serial backend.

One Verilator build of the tiny board top serves the module (cached under build/sim/); each
test starts its own board process (a fraction of a second), so every test sees a fresh device.
"""

import os
import time

import numpy as np
import pytest

from device_testlib import run_session
from hmtx.host.backends import DEFAULT_BAUD, GoldenTransport, SerialTransport, open_transport
from hmtx.model.defaults import engine_config
from hmtx.host.device import Device
from hmtx.model import fixed
from hmtx.model import protocol as P
from hmtx.model.golden_device import GoldenDevice, example_session

# The engine `hmtx run --backbone tiny` expects (tiny widened to the tiny Llama's d=32), so one
# Verilator build serves the sessions and the `hmtx run` test.
CFG = engine_config("tiny", 32, None)
BOARD = "ulx3s-85f"
SEED = int(os.environ.get("HMTX_SEED", "7"))


@pytest.fixture(scope="module")
def design():
    from hmtx.sim.board_sim import board_design, build_board
    d = board_design(BOARD, CFG)
    build_board(d)
    return d


@pytest.fixture
def board(design):
    from hmtx.sim.board_sim import BoardSim
    b = BoardSim(design)
    yield b
    b.close()


def test_host_and_bitstream_default_to_the_same_baud():
    from hmtx.hw.board import DEFAULT_BAUD as HW_BAUD
    assert DEFAULT_BAUD == HW_BAUD == 3_000_000


def test_simulated_design_is_the_board_top_synth_builds(design):
    """The bridge simulated has the clock, divisor, FIFOs and reset of hmtx synth's BoardTop."""
    from hmtx.hw.board import BoardTop, EchoCore
    from hmtx.hw.flow.boards import BOARDS, board_top
    from hmtx.hw.uart import baud_divisor
    core = EchoCore(lanes=1)
    top = board_top(BOARD, core)
    core._MustUse__silence = top._MustUse__silence = top.bridge._MustUse__silence = True  # described only
    assert isinstance(top, BoardTop)
    assert design.clk_hz == top.sync_mhz * 1e6 == BOARDS[BOARD].target_mhz * 1e6
    assert design.divisor == top.bridge.divisor == baud_divisor(design.clk_hz, DEFAULT_BAUD)
    assert (design.fifo_depth, design.fifo_ram) == (top.bridge.fifo_depth, top.bridge.fifo_ram)
    assert design.reset_cycles == top.reset_cycles
    assert design.baud == DEFAULT_BAUD and design.engine == BOARDS[BOARD].default_engine


def test_board_top_of_contract_2_is_a_build_of_its_own():
    """`hmtx board-sim --contract 2` simulates `hmtx synth --contract 2`'s board top: the core is
    HmtxTop for contract 2, and its Verilog and model are cached apart from contract 1's."""
    from hmtx.sim.board_sim import _board_top, _sources_key, board_design
    d1, d2 = board_design(BOARD, CFG), board_design(BOARD, CFG, contract=2)
    assert d2.contract == 2 and d2.name == d1.name.replace(f"{CFG.name}-", f"{CFG.name}-c2-")
    assert _sources_key(d1, None) != _sources_key(d2, None)
    top = _board_top(BOARD, CFG, d2.engine, d2.baud, None, d2.contract)
    core = top.bridge.core
    core._MustUse__silence = True
    assert core.contract == 2 and core.engine.contract == 2
    with pytest.raises(ValueError, match=r"unknown contract 3; choose one of \(1, 2\)"):
        board_design(BOARD, CFG, contract=3)


def test_full_session_byte_identical_to_golden_through_serial(board):
    """INFO, weights (with a damaged chunk), writes, recalls, every error status, malformed frames
    and garbage followed by valid frames: byte for byte what the golden device answers."""
    session = example_session(CFG, seed=SEED)
    want = run_session(GoldenTransport(CFG), session)
    t = SerialTransport(board.port)
    try:
        got = run_session(t, session)
    finally:
        t.close()
    bad = [f"{label}: board {g.hex()} != golden {w.hex()}"
           for (label, raw), w, g in zip(session, want, got) if raw[0] != P.Op.CYCLES and g != w]
    assert not bad, f"{len(bad)} of {len(session)} responses differ:\n" + "\n".join(bad[:10])
    s = board.stats()
    assert s["framing_errors"] == 0 and s["quiet_timeouts"] == 0
    assert s["frames_out"] == sum(len(P.FrameDecoder().feed(raw)) for _, raw in session)
    # every bit went over the wire at the line rate: the simulated time covers the bytes' 10 bits
    # each (less the half stop bit after which a last byte counts as received, and the host's
    # next frame arriving while a response still goes out)
    wire_s = 10 * (s["bytes_in"] + s["bytes_out"]) / DEFAULT_BAUD
    assert 0.95 * wire_s <= s["seconds"] <= 1.5 * wire_s


def test_device_api_errors_and_resync_through_serial(board):
    """The host's Device over the serial port: answers equal the golden device's, a device error
    leaves the link usable, and garbage on the line is recovered by the host's resync."""
    rng = np.random.default_rng(SEED)
    qws = [fixed.quantize_weight(rng.normal(size=(CFG.d, CFG.d_h)) * 0.2) for _ in range(2)]
    vecs = [fixed.quantize_bfp(rng.normal(size=CFG.d)) for _ in range(3)]
    golden = Device(GoldenTransport(CFG), CFG)
    with Device(SerialTransport(board.port), CFG) as dev:
        assert dev.info().mismatches(CFG) == []
        with pytest.raises(P.DeviceError, match="NO_WEIGHTS to RECALL"):
            dev.recall(*vecs[0])
        for d in (dev, golden):
            d.load_weights(*qws)
        for m, e in vecs:
            assert dev.write_memory(m, int(e)) == golden.write_memory(m, int(e))
            got, want = dev.recall(m, int(e)), golden.recall(m, int(e))
            for g, w in zip(got, want):
                assert np.array_equal(np.asarray(g), np.asarray(w))
        # garbage without an END: the device waits; the host's resync (END) ends it, and the
        # error response it provokes is drained
        garbage = bytes(rng.integers(1, 0xC0, 50, dtype=np.uint8))
        dev.transport.write(garbage)
        dropped = dev.resync()
        assert dropped and dropped == golden.transport.device.feed(garbage + bytes([P.END]))
        assert P.decode_response(P.FrameDecoder().feed(dropped)[0]).status != P.Status.OK
        assert dev.status().fill == 3
        assert dev.read_slot(2)[0].tolist() == golden.read_slot(2)[0].tolist()
    assert board.stats()["framing_errors"] == 0


@pytest.mark.parametrize("harness_gave_up", [False, True], ids=["reopened-at-once", "reopened-after-quiet"])
def test_host_at_the_wrong_baud_gets_garbage_then_recovers(design, harness_gave_up):
    """The line follows the rate the host sets on the port, as a USB-UART bridge does: a host at
    half the board's baud gets no valid answer; at the right rate the same board answers.

    The device holds the noise as a partial frame and answers it (an error) when the right host's
    END closes it: an answer the harness did not count as owed. Reopened after the harness stopped
    waiting for the wrong host's frame, that answer once froze the simulation half-way through the
    marker's answer (CI saw 'no answer ... on opening'); both orders are checked."""
    from hmtx.sim.board_sim import BoardSim
    with BoardSim(design, quiet_s=0.002 if harness_gave_up else 1.0) as board:
        wrong = SerialTransport(board.port, DEFAULT_BAUD // 2)
        try:
            # (garbled answers: ProtocolError; or no marker answered often enough: ConnectionError)
            with pytest.raises((P.ProtocolError, ConnectionError)):
                Device(wrong, CFG, timeout=1)
        finally:
            wrong.close()
        assert board.stats()["quiet_timeouts"] == int(harness_gave_up)
        with Device(SerialTransport(board.port), CFG, timeout=3) as dev:
            assert dev.status().fill == 0
        s = board.stats()
        assert s["line_baud"] == DEFAULT_BAUD and s["quiet_timeouts"] == int(harness_gave_up)


def test_board_sim_device_spec_starts_and_stops_the_board(design):
    t = open_transport("board-sim", CFG)
    try:
        assert t.port.startswith("/dev/")
        assert t.engine == design.engine      # what `hmtx run` reads to pick the Fmax report
        with Device(t, CFG) as dev:
            assert dev.info().lanes == CFG.lanes
            s = t.stats()
            assert s["frames_out"] >= 1 and s["line_baud"] == DEFAULT_BAUD
    finally:
        t.close()
    assert not t.board.alive()
    with pytest.raises(ValueError, match="board-sim"):
        open_transport("board-sim-x", CFG)
    with pytest.raises(ValueError, match="unknown config"):
        open_transport("board-sim:nope", CFG)


def _hmtx_run_serial(board, capsys, tmp_path, *args) -> dict:
    """`hmtx run --backbone tiny --device serial:PORT ARGS` against the virtual board; its JSON summary."""
    import json

    import hmt_testlib  # noqa: F401  (one torch thread)
    from hmtx.host.cli import main
    rc = main(["run", "--backbone", "tiny", "--quiet", "--device", f"serial:{board.port}", *args,
               "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert board.stats()["framing_errors"] == 0
    return json.loads((tmp_path / "r.json").read_text())


def test_hmtx_run_through_serial_port_of_the_board(board, capsys, tmp_path):
    """`hmtx run --device serial:PORT` on the tiny backbone against the virtual board: every write,
    recall and cache read checked, 0 mismatches."""
    r = _hmtx_run_serial(board, capsys, tmp_path, "--segments", "3")
    assert (r["segments"], r["mismatches"]) == (3, 0) and r["ops_checked"] > 3


def test_hmtx_run_offloads_attention_through_serial_port_of_the_board(board, capsys, tmp_path):
    """`hmtx run --device serial:PORT --offload-attention 1:0,3`: two heads of the tiny backbone's
    layer 1 go over the UART as ATTN_PASS frames to the board top's lane engine, every pass's answer
    checked against the golden passes, 0 mismatches."""
    r = _hmtx_run_serial(board, capsys, tmp_path, "--segments", "2", "--offload-attention", "1:0,3")
    assert (r["segments"], r["mismatches"], r["offload_attention"]) == (2, 0, "1:0,3")
    assert r["attention_heads"] > 0 and r["attention_heads"] % 2 == 0, r["attention_heads"]
    assert r["attention_ops"] >= 3 * r["attention_heads"]


def test_hmtx_board_sim_command_prints_port_and_stops_cleanly(design, tmp_path):
    import signal
    import subprocess
    import sys
    stats = tmp_path / "stats.json"
    link = tmp_path / "port"
    p = subprocess.Popen([sys.executable, "-m", "hmtx.host.cli", "board-sim", "--config", "tiny", "--d", "32",
                          "--stats", str(stats), "--link", str(link)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("port /dev/"), p.stderr.read() if p.poll() is not None else line
        with Device(SerialTransport(str(link)), CFG) as dev:
            assert dev.status().fill == 0
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "connect with: hmtx run --device serial:" in err and "--backbone tiny" in err
    import json
    s = json.loads(stats.read_text())
    assert s["frames_out"] == s["frames_in"] >= 2 and s["framing_errors"] == 0     # INFO, STATUS (+ resync marker)
    assert not link.exists()


@pytest.mark.slow
def test_hmtx_run_serial_on_the_smollm_board_top(tmp_path):
    """`hmtx run --device serial:PORT` with its defaults (SmolLM2 backbone, shipped checkpoint,
    smollm engine) against the smollm board top that `hmtx synth --board ulx3s-85f` builds, over
    the first 2 segments of the default document: 0 mismatches. The first run builds the model
    (Verilog ~1 min, Verilator + C++ ~6 min on 2 cores); the run is mostly the weights' 297 kB
    shifted bit by bit through the simulated UART (~0.1 s of board time)."""
    import json
    import subprocess
    import sys

    from hmtx.model.configs import get_config
    from hmtx.sim.board_sim import BoardSim, board_design
    with BoardSim(board_design(BOARD, get_config("smollm"))) as b:
        r = subprocess.run([sys.executable, "-m", "hmtx.host.cli", "run", "--device", f"serial:{b.port}",
                            "--segments", "2", "--timeout", "900", "--quiet", "--json", str(tmp_path / "r.json")],
                           capture_output=True, text=True)
        s = b.stats()
    print(r.stdout, r.stderr[-3000:], json.dumps(s), sep="\n")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert (res["segments"], res["mismatches"]) == (2, 0)
    assert s["framing_errors"] == 0 and s["quiet_timeouts"] == 0


@pytest.mark.slow
def test_icebreaker_board_top_session_byte_identical():
    """The iCEBreaker's board top (up5k, serial engine, UART FIFOs in block RAM, 24 MHz, divisor 8
    at 3 Mbaud): the golden session through the serial backend, byte for byte. ~100 s to build."""
    from hmtx.model.configs import get_config
    from hmtx.sim.board_sim import BoardSim, board_design
    cfg = get_config("up5k")
    design = board_design("icebreaker", cfg)
    assert (design.engine, design.fifo_ram, design.clk_hz, design.divisor) == ("serial", "block", 24e6, 8)
    session = example_session(cfg, seed=SEED)
    want = run_session(GoldenTransport(cfg, GoldenDevice(cfg, "serial")), session)    # (its INFO: 1.2, serial)
    with BoardSim(design) as b:
        t = SerialTransport(b.port)
        try:
            got = run_session(t, session)
        finally:
            t.close()
        s = b.stats()
    bad = [label for (label, raw), w, g in zip(session, want, got) if raw[0] != P.Op.CYCLES and g != w]
    assert not bad, bad[:10]
    assert s["framing_errors"] == 0
