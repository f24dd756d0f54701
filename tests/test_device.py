"""The host Device interface over the golden and serial (pseudo-terminal) backends."""

import os

import numpy as np
import pytest

from device_testlib import Shuttle, run_session
from hmtx.host.backends import GoldenTransport, SerialTransport, Transport, open_transport, parse_serial_spec
from hmtx.host.device import Device, DeviceError, ProtocolError
from hmtx.model import fixed
from hmtx.model import protocol as P
from hmtx.model.configs import get_config
from hmtx.model.golden_device import GoldenDevice, example_session

SEED = int(os.environ.get("HMTX_SEED", "7"))
CFG = get_config("tiny")


@pytest.fixture(autouse=True)
def _print_seed():
    # Shown with the output of a failing test: rerun with HMTX_SEED=<this> to reproduce.
    print(f"HMTX_SEED={SEED}")


@pytest.fixture
def dev():
    with Device(GoldenTransport(CFG), CFG) as d:
        yield d


def weights(rng):
    return [fixed.quantize_weight(rng.normal(size=(CFG.d, CFG.d_h))) for _ in range(2)]


def test_device_ops_match_fixed(dev):
    rng = np.random.default_rng(SEED)
    qw_q, qw_k = weights(rng)
    assert dev.info().mismatches(CFG) == []
    dev.load_weights(qw_q, qw_k)
    st = dev.status()
    assert st.wq_loaded and st.wk_loaded
    mems = [fixed.quantize_bfp(rng.normal(size=CFG.d)) for _ in range(3)]
    for i, (m, e) in enumerate(mems):
        assert dev.write_memory(m, int(e)) == (i, i + 1)
    m, me, k, ke = dev.read_slot(1)
    want_k, want_ke = fixed.project(qw_k, mems[1][0][None], mems[1][1].reshape(1))
    assert np.array_equal(m, mems[1][0]) and np.array_equal(k, want_k[0]) and ke == want_ke[0]
    s, se = fixed.quantize_bfp(rng.normal(size=CFG.d))
    p, pe, probs = dev.recall(s, int(se))
    km = np.stack([fixed.project(qw_k, mm[None], ee.reshape(1))[0][0] for mm, ee in mems])
    kex = np.array([fixed.project(qw_k, mm[None], ee.reshape(1))[1][0] for mm, ee in mems])
    wp, wpe, wprobs = fixed.recall(qw_q, s, se, km, kex, np.stack([x[0] for x in mems]), np.array([x[1] for x in mems]))
    assert np.array_equal(p, wp) and pe == wpe and np.array_equal(probs, wprobs)
    cyc = dev.cycles()
    assert cyc.last_op == P.Op.RECALL and cyc.total > cyc.last > 0
    q, qe = fixed.quantize_bfp(rng.normal(size=(2, CFG.head_dim)))
    out, oe = dev.attention(q, qe, q, qe, q, qe, causal=True)
    want, want_e, _ = fixed.attend(q, qe, q, qe, q, qe, fixed.causal_mask(2, 2))
    assert np.array_equal(out, want) and np.array_equal(oe, want_e)
    dev.reset()
    assert dev.status().fill == 0


def test_device_error_names_op_and_status_and_connection_survives(dev):
    s = np.zeros(CFG.d, np.int64)
    with pytest.raises(DeviceError, match="NO_WEIGHTS to RECALL") as e:
        dev.recall(s, 0)
    assert (e.value.op, e.value.status) == (P.Op.RECALL, P.Status.NO_WEIGHTS)
    with pytest.raises(DeviceError, match="SLOT_RANGE to READ_SLOT"):
        dev.read_slot(0)
    assert dev.status().fill == 0          # still usable


def test_load_weights_skips_identical_reload(dev):
    rng = np.random.default_rng(SEED)
    qws = weights(rng)
    dev.load_weights(*qws)
    n = dev.transactions
    dev.load_weights(*qws)
    assert dev.transactions == n + 1       # one STATUS to confirm, no LOAD_WEIGHTS
    other = weights(rng)
    dev.load_weights(*other)
    assert dev.transactions == n + 1 + 2     # tiny: one LOAD_WEIGHTS frame per matrix


class _Flaky(GoldenTransport):
    """Corrupts or drops the response to the n-th write."""

    def __init__(self, mode, at):
        super().__init__(CFG)
        self.mode, self.at, self.writes = mode, at, 0

    def write(self, data):
        self.writes += 1
        if self.writes == self.at:
            out = self.device.feed(data)
            if self.mode == "corrupt":
                self._rx.append(out[:1] + bytes([out[1] ^ 0x20]) + out[2:])
            return
        super().write(data)


@pytest.mark.parametrize("mode", ["corrupt", "drop"])
def test_garbled_or_lost_response_raises_then_recovers(mode):
    t = _Flaky(mode, at=3)                 # writes: resync END, INFO, then the STATUS below
    dev = Device(t, CFG, timeout=0.3)
    with pytest.raises(ProtocolError, match="CRC" if mode == "corrupt" else "no response"):
        dev.status()
    assert dev.status().fill == 0
    assert dev.info().d == CFG.d


def test_config_mismatch_is_refused():
    with pytest.raises(ValueError, match="does not match config 'up5k'.*d: device 24"):
        Device(GoldenTransport(CFG), get_config("up5k"))
    assert Device(GoldenTransport(CFG)).config.d == CFG.d          # no config: taken from INFO


def test_engine_kind_comes_from_info_and_must_match_the_transport():
    assert Device(GoldenTransport(CFG, GoldenDevice(CFG, "serial"))).engine == "serial"
    t = GoldenTransport(CFG, GoldenDevice(CFG, "serial"))
    t.engine = "lanes"                      # a transport that believes it holds the other kind
    with pytest.raises(ProtocolError, match="should hold the lanes engine, but its INFO reports the serial"):
        Device(t, CFG)


def test_open_and_specs():
    with pytest.raises(ValueError, match="unknown device"):
        open_transport("fpga", CFG)
    with pytest.raises(ValueError, match="unknown engine 'wide'"):      # before a simulator starts
        open_transport("sim:wide", CFG)
    assert parse_serial_spec("serial:/dev/ttyUSB0@115200") == ("/dev/ttyUSB0", 115200)
    assert parse_serial_spec("serial:/dev/ttyUSB0") == ("/dev/ttyUSB0", 3_000_000)
    with pytest.raises(ValueError, match="baud"):
        parse_serial_spec("serial:/dev/x@fast")
    with pytest.raises(ValueError, match="cannot open serial port"):
        SerialTransport("/nonexistent/tty")


def test_serial_backend_through_pty_matches_golden():
    """The serial backend moves exactly the bytes the golden device produces in-process."""
    session = example_session(CFG, seed=SEED)
    want = run_session(GoldenTransport(CFG), session)
    shuttle = Shuttle(GoldenTransport(CFG))
    try:
        with SerialTransport(shuttle.port, 115200) as t:
            got = run_session(t, session)
        with Device(SerialTransport(shuttle.port), CFG) as d:       # and the Device on top of it
            assert d.status().wq_loaded                            # the session left W_q loaded
    finally:
        shuttle.close()
    for (label, _), w, g in zip(session, want, got):
        assert g == w, f"{label}: serial {g.hex()} != golden {w.hex()}"


def test_example_session_covers_every_status():
    dev = GoldenDevice(CFG)
    seen = set()
    for _, raw in example_session(CFG):
        seen |= {P.decode_response(f).status for f in P.FrameDecoder().feed(dev.feed(raw))}
    assert seen == set(P.Status)
