"""The host Device interface over the golden and serial (pseudo-terminal) backends."""

import os

import numpy as np
import pytest

from device_testlib import Recorder, Shuttle, run_session
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


# --- RECALL's probabilities on request (protocol 1.2 / 2.1) -----------------------------------------
@pytest.mark.parametrize("contract", [1, 2])
def test_recall_asks_for_the_probabilities_only_when_told(contract):
    rng = np.random.default_rng(SEED)
    events = []
    rec = Recorder(GoldenTransport(CFG, contract=contract), events)
    with Device(rec, CFG) as dev:
        assert dev.recall_flags and dev.device_info.version == P.gateware_version("lanes", contract)
        dev.load_weights(*weights(rng))
        for _ in range(3):
            dev.write_memory(*_mem(rng))
        s = _mem(rng)
        sent = len(rec.sent)
        full = dev.recall(*s)
        bare = dev.recall(*s, probabilities=False)
        frames = P.FrameDecoder().feed(bytes(rec.sent[sent:]))
    assert [(len(f.body), f.body[-2]) for f in frames] == [(CFG.d + 4, P.RECALL_PROBS), (CFG.d + 4, 0)]
    assert np.array_equal(full[0], bare[0]) and full[1] == bare[1] and full.n == bare.n == 3
    assert full[2].shape == (3,) and bare[2] is None


def test_an_older_device_gets_the_frame_without_flags_and_sends_the_probabilities():
    rng = np.random.default_rng(SEED)
    for old in ((1, 1), (2, 0)):
        events = []
        rec = Recorder(GoldenTransport(CFG, GoldenDevice(CFG, contract=old[0], version=old)), events)
        with Device(rec, CFG) as dev:
            assert not dev.recall_flags and dev.contract == old[0]
            dev.load_weights(*weights(rng))
            dev.write_memory(*_mem(rng))
            sent = len(rec.sent)
            p, pe, probs = ans = dev.recall(*_mem(rng), probabilities=False)
            (f,) = P.FrameDecoder().feed(bytes(rec.sent[sent:]))
        assert len(f.body) == CFG.d + 3 and probs.tolist() == [(1 << 15) - 1] and ans.n == 1


class _ProbsAlways(GoldenTransport):
    """A device that ignores the flags byte and sends the probabilities anyway (a broken 1.2)."""

    def write(self, data):
        out = []
        for f in P.FrameDecoder().feed(data):
            body = f.body
            if body[:1] == bytes([P.Op.RECALL]) and len(body) == CFG.d + 4:
                body = body[:-2] + bytes([P.crc8(body[:-2])])
            out.append(P.slip_escape(body))
        super().write(b"".join(out))


def test_a_device_that_sends_what_was_not_asked_for_is_a_protocol_error():
    rng = np.random.default_rng(SEED)
    with Device(_ProbsAlways(CFG), CFG, timeout=0.5) as dev:
        dev.load_weights(*weights(rng))
        dev.write_memory(*_mem(rng))
        with pytest.raises(ProtocolError, match="probabilities not asked for"):
            dev.recall(*_mem(rng), probabilities=False)
        assert dev.recall(*_mem(rng)).n == 1                       # resynchronized, usable


# --- split-phase commands: post now, collect later (issue 21, "overlap device work") ----------------
def _mem(rng):
    m, e = fixed.quantize_bfp(rng.normal(size=CFG.d))
    return m, int(e)


def test_posted_write_is_collected_in_order_and_by_the_next_transaction(dev):
    rng = np.random.default_rng(SEED)
    dev.load_weights(*weights(rng))
    mems = [_mem(rng) for _ in range(3)]
    p = dev.write_memory(*mems[0], wait=False)
    assert not p.done and dev.pending is p
    assert p.result() == (0, 1) and p.done and dev.pending is None
    assert p.result() == (0, 1)                              # asked again: the same answer
    q = dev.write_memory(*mems[1], wait=False)
    r = dev.write_memory(*mems[2], wait=False)               # collects q first: one in flight
    assert q.done and not r.done and q.result() == (1, 2)
    m, me, _, _ = dev.read_slot(2)                           # collects r, then reads its slot
    assert r.done and r.result() == (2, 3)
    assert np.array_equal(m, mems[2][0]) and me == mems[2][1]
    assert dev.collect() is None                             # nothing pending


def test_error_status_of_a_posted_write_is_raised_at_collection(dev):
    rng = np.random.default_rng(SEED)
    p = dev.write_memory(*_mem(rng), wait=False)             # no weights: NO_WEIGHTS
    with pytest.raises(DeviceError, match="NO_WEIGHTS to WRITE_MEMORY"):
        p.result()
    with pytest.raises(DeviceError, match="NO_WEIGHTS to WRITE_MEMORY"):
        p.result()                                           # kept, raised every time
    assert dev.status().fill == 0                            # the link is fine
    # Collected by another call: that call raises the write's error and does not send itself.
    dev.write_memory(*_mem(rng), wait=False)
    n = dev.transactions
    with pytest.raises(DeviceError, match="NO_WEIGHTS to WRITE_MEMORY") as e:
        dev.status()
    assert e.value.op == P.Op.WRITE_MEMORY and dev.transactions == n
    dev.load_weights(*weights(rng))
    assert dev.write_memory(*_mem(rng), wait=False).result() == (0, 1)
    assert dev.status().fill == 1


class _Lossy(GoldenTransport):
    """Drops ("drop") or garbles ("corrupt") the answer to the n-th command with opcode ``op``."""

    def __init__(self, op, n, mode):
        super().__init__(CFG)
        self.op, self.n, self.mode, self.seen = int(op), n, mode, 0

    def write(self, data):
        frames = P.FrameDecoder().feed(data)
        if any(f.body[:1] == bytes([self.op]) for f in frames):
            self.seen += 1
            if self.seen == self.n:
                out = self.device.feed(data)
                if self.mode == "corrupt":
                    self._rx.append(out[:1] + bytes([out[1] ^ 0x20]) + out[2:])
                return
        super().write(data)


@pytest.mark.parametrize("mode", ["drop", "corrupt"])
def test_lost_or_garbled_answer_of_a_posted_write_resyncs_and_raises_at_collection(mode):
    rng = np.random.default_rng(SEED)
    t = _Lossy(P.Op.WRITE_MEMORY, 2, mode)
    with Device(t, CFG, timeout=0.3) as dev:
        dev.load_weights(*weights(rng))
        assert dev.write_memory(*_mem(rng), wait=False).result() == (0, 1)
        p = dev.write_memory(*_mem(rng), wait=False)         # its answer is lost or garbled
        with pytest.raises(ProtocolError, match="WRITE_MEMORY: " + ("no response" if mode == "drop" else "")):
            dev.status()                                     # forces the collection
        with pytest.raises(ProtocolError):
            p.result()                                       # the handle says so too
        # Resynchronized: the device stored the write (only its answer went missing) and the
        # next commands get their own answers.
        assert dev.status().fill == 2
        assert dev.write_memory(*_mem(rng), wait=False).result() == (2, 3)


def test_close_collects_a_pending_command_and_reports_its_error():
    rng = np.random.default_rng(SEED)
    dev = Device(GoldenTransport(CFG), CFG)
    dev.load_weights(*weights(rng))
    p = dev.write_memory(*_mem(rng), wait=False)
    dev.close()
    assert p.done and p.result() == (0, 1)
    t = GoldenTransport(CFG)
    dev = Device(t, CFG)
    p = dev.write_memory(*_mem(rng), wait=False)             # no weights: NO_WEIGHTS
    with pytest.raises(DeviceError, match="NO_WEIGHTS to WRITE_MEMORY"):
        dev.close()
    assert t._closed                                         # the transport is closed all the same
    # Leaving a with-block on another exception: that exception stays, with the write's as a note.
    with pytest.raises(KeyError) as e:
        with Device(GoldenTransport(CFG), CFG) as dev:
            dev.write_memory(*_mem(rng), wait=False)
            raise KeyError("boom")
    assert any("NO_WEIGHTS to WRITE_MEMORY" in n for n in getattr(e.value, "__notes__", []))


def test_random_mix_of_posted_and_blocking_commands_matches_the_golden_device():
    """Random op sequences, each write posted or not and collected at a random point (or by the
    next command): every answer equals the golden device's own, in order."""
    rng = np.random.default_rng(SEED)

    def outcome(call):
        try:
            return call()
        except DeviceError as e:
            return e.status

    for trial in range(20):
        want_dev = Device(GoldenTransport(CFG), CFG)
        with Device(GoldenTransport(CFG), CFG) as dev:

            def do(call):
                # A posted write is collected first; if it failed, the call raises the write's
                # error without sending itself: call again then, as a caller would.
                pend = dev.pending
                try:
                    return call()
                except DeviceError as e:
                    if pend is not None and _raises(pend) is e:
                        return outcome(call)
                    return e.status

            if rng.random() < 0.9:
                qws = weights(rng)
                dev.load_weights(*qws)
                want_dev.load_weights(*qws)
            handles = []
            for step in range(int(rng.integers(5, 25))):
                kind = str(rng.choice(["write", "post", "read", "status", "recall", "collect"]))
                where = f"HMTX_SEED={SEED} trial {trial} step {step} {kind}"
                if kind == "collect":
                    outcome(dev.collect)                     # the handle keeps any error
                    continue
                if kind in ("write", "post"):
                    m = _mem(rng)
                    want = outcome(lambda: want_dev.write_memory(*m))
                    if kind == "post":
                        handles.append((do(lambda: dev.write_memory(*m, wait=False)), want, where))
                        continue
                    got = do(lambda: dev.write_memory(*m))
                elif kind == "read":
                    slot = int(rng.integers(0, CFG.n_slots))
                    want = outcome(lambda: want_dev.read_slot(slot))
                    got = do(lambda: dev.read_slot(slot))
                elif kind == "status":
                    want, got = want_dev.status(), do(dev.status)
                else:
                    s = _mem(rng)
                    want = outcome(lambda: want_dev.recall(*s))
                    got = do(lambda: dev.recall(*s))
                assert _same(got, want), where
            assert len(handles) == 0 or handles[-1][0].done or dev.pending is handles[-1][0]
            for h, want, where in handles:
                assert _same(outcome(h.result), want), where
                assert h.done


def _raises(pending):
    try:
        pending.result()
    except DeviceError as e:
        return e
    return None


def _same(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b
