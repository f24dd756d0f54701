"""A late answer must never be taken for the answer to a later command (issue 25, item 1).

The host resynchronizes after every timeout or undecodable answer with a marker command whose
answer it recognises uniquely (docs/protocol.md section 7): everything before that answer is
dropped, so an answer that arrives after its command timed out is discarded, however late.
"""

import os
import time

import numpy as np
import pytest

from hmtx.host.backends import GoldenTransport
from hmtx.host.device import Device, ProtocolError
from hmtx.model import fixed
from hmtx.model import protocol as P
from hmtx.model.configs import get_config

CFG = get_config("tiny")
SEED = int(os.environ.get("HMTX_SEED", "7"))


@pytest.fixture(autouse=True)
def _print_seed():
    print(f"HMTX_SEED={SEED}")


class _Late(GoldenTransport):
    """The golden device, except that the answer to the ``nth`` command with opcode ``op`` leaves
    the device ``delay`` seconds late (a device that computed too long). ``delays`` more answers
    may be held the same way (each late command delays all later answers too: in order)."""

    def __init__(self, op, nth=1, delay=1.0, count=1):
        super().__init__(CFG)
        self.op, self.nth, self.delay, self.count = op, nth, delay, count
        self.seen = 0
        self._held = []           # (release time, bytes), in order
        self.late_sent = 0

    def write(self, data):
        out = self.device.feed(data)
        if not out:
            return
        ops = {f.body[0] for f in P.FrameDecoder().feed(data) if f.body}
        late = False
        if self.op in ops:
            self.seen += 1
            late = self.nth <= self.seen < self.nth + self.count
        if late:
            self._held.append((time.monotonic() + self.delay, out, True))
        elif self._held:          # the device answers in order: behind the late one
            self._held.append((self._held[-1][0], out, False))
        else:
            self._rx.append(out)

    def read(self, timeout):
        end = time.monotonic() + max(timeout, 0)
        while True:
            now = time.monotonic()
            while self._held and self._held[0][0] <= now:
                _, out, late = self._held.pop(0)
                self._rx.append(out)
                self.late_sent += late
            if self._rx:
                data = b"".join(self._rx)
                self._rx.clear()
                return data
            if now >= end:
                return b""
            nxt = self._held[0][0] if self._held else end
            time.sleep(max(0.0, min(end, nxt) - now))


def _retry(call, tries=20):
    """Call until the link is back in step: a call refused as 'not sent' (its resynchronization
    found the late answers still on their way) sent nothing, so it may be repeated."""
    for _ in range(tries):
        try:
            return call()
        except ProtocolError as e:
            assert "not sent" in str(e), e
    raise AssertionError("the link never came back")


def _loaded(dev, rng):
    qw = [fixed.quantize_weight(rng.normal(size=(CFG.d, CFG.d_h))) for _ in range(2)]
    dev.load_weights(*qw)
    mems = [fixed.quantize_bfp(rng.normal(size=CFG.d)) for _ in range(3)]
    for m, e in mems:
        dev.write_memory(m, int(e))
    return qw, mems


def _want_recall(qw, mems, s, se):
    q, k = qw
    km, ke = zip(*(fixed.project(k, m[None], e.reshape(1)) for m, e in mems))
    return fixed.recall(q, s, se, np.concatenate(km), np.concatenate(ke),
                        np.stack([m for m, _ in mems]), np.array([e for _, e in mems]))


@pytest.mark.parametrize("delay", [0.45, 0.65, 0.9, 2.0])
def test_recall_answer_delayed_past_the_timeout_is_not_accepted(delay):
    """RECALL(s1) times out; its answer arrives later, while RECALL(s2) waits: s2 gets s2's
    answer. Delays: inside the old 0.2 s drain, while RECALL(s2) waits (the bug the old drain
    had), past RECALL(s2)'s own timeout, and long after."""
    rng = np.random.default_rng(SEED)
    t = _Late(P.Op.RECALL, delay=delay)
    dev = Device(t, CFG, timeout=0.3)
    qw, mems = _loaded(dev, rng)
    s1, e1 = fixed.quantize_bfp(rng.normal(size=CFG.d))
    s2, e2 = -s1, e1                                     # the opposite query: another slot wins
    w1, w2 = _want_recall(qw, mems, s1, e1), _want_recall(qw, mems, s2, e2)
    assert not np.array_equal(w1[2], w2[2])              # the two answers can be told apart
    with pytest.raises(ProtocolError, match="RECALL: no response"):
        dev.recall(s1, int(e1))
    p, pe, probs = _retry(lambda: dev.recall(s2, int(e2)))
    assert np.array_equal(p, w2[0]) and pe == w2[1] and np.array_equal(probs, w2[2]), \
        "RECALL(s2) returned a stale answer"
    assert t.late_sent == 1                              # the late answer did arrive (and was dropped)
    st = dev.status()                                    # and the link stays in step afterwards
    assert st.fill == 3 and dev.recall(s1, int(e1))[1] == w1[1]


def test_late_answer_of_the_same_kind_with_a_different_value_is_dropped():
    """STATUS answers look alike; a late one (fill 1) must not stand in for a newer one (fill 2)."""
    rng = np.random.default_rng(SEED + 1)
    t = _Late(P.Op.STATUS, delay=0.8)
    dev = Device(t, CFG, timeout=0.25)
    _loaded(dev, rng)
    dev.reset()
    dev.write_memory(*(lambda m: (m[0], int(m[1])))(fixed.quantize_bfp(rng.normal(size=CFG.d))))
    with pytest.raises(ProtocolError):
        dev.status()                                     # fill 1, answered late
    m, e = fixed.quantize_bfp(rng.normal(size=CFG.d))
    assert _retry(lambda: dev.write_memory(m, int(e))) == (1, 2)
    assert dev.status().fill == 2


def test_answers_late_through_several_timeouts_are_all_dropped():
    """Three WRITE_MEMORY answers in a row come late (each holds back the answers behind it,
    resynchronization markers included): every call either fails or returns the device's own
    answer to it, and once the link is back the host and the device agree."""
    rng = np.random.default_rng(SEED + 2)
    t = _Late(P.Op.WRITE_MEMORY, nth=1, delay=0.7, count=3)
    dev = Device(t, CFG, timeout=0.2)
    qw = [fixed.quantize_weight(rng.normal(size=(CFG.d, CFG.d_h))) for _ in range(2)]
    dev.load_weights(*qw)
    results = []
    for i in range(12):
        m, e = fixed.quantize_bfp(rng.normal(size=CFG.d))
        try:
            results.append(dev.write_memory(m, int(e)))
        except ProtocolError:
            continue
        assert results[-1] == ((t.device.write_ptr - 1) % CFG.n_slots, t.device.fill)
    assert len(results) >= 3 and t.late_sent >= 3
    assert dev.status().fill == t.device.fill


def test_interrupted_transaction_is_resynchronized_before_the_next():
    """A transaction cut short (here: an exception while waiting) leaves its answer owed; the
    next call must not read it as its own."""
    rng = np.random.default_rng(SEED + 3)
    t = _Late(P.Op.RECALL, delay=0.5)
    dev = Device(t, CFG, timeout=5.0)
    qw, mems = _loaded(dev, rng)
    s1, e1 = fixed.quantize_bfp(rng.normal(size=CFG.d))
    real_read = t.read

    def interrupted(timeout):
        raise KeyboardInterrupt
    t.read = interrupted
    with pytest.raises(KeyboardInterrupt):
        dev.recall(s1, int(e1))
    t.read = real_read
    st = dev.status()
    assert st.fill == 3 and t.late_sent == 1


def test_resync_markers_are_bad_opcodes_the_device_never_assigns():
    assert not set(P.RESYNC_OPS) & {int(o) for o in P.Op}
    dev = Device(GoldenTransport(CFG), CFG)
    for _ in range(2 * len(P.RESYNC_OPS)):               # markers rotate; the link stays usable
        dev.resync()
    assert dev.status().fill == 0


def test_silent_device_resync_fails_then_link_is_declared_dead():
    class Mute(GoldenTransport):
        mute = False

        def write(self, data):
            if not self.mute:
                super().write(data)

    t = Mute(CFG)
    dev = Device(t, CFG, timeout=0.05)
    t.mute = True
    with pytest.raises(ProtocolError, match="no response"):
        dev.status()
    for _ in range(len(P.RESYNC_OPS)):
        try:
            dev.status()
        except ProtocolError:
            pass
        except ConnectionError as e:
            assert "resynchroniz" in str(e)
            break
    else:
        pytest.fail("a device that never answers a resynchronization marker was not declared dead")


def test_silent_device_on_opening_is_named_clearly():
    class Silent(GoldenTransport):
        def write(self, data):
            pass

    with pytest.raises(ProtocolError, match="no answer from golden within 0.1 s on opening"):
        Device(Silent(CFG), CFG, timeout=0.1)


class _LateOver:
    """Any transport, with the answer to the first command of opcode ``op`` held back ``delay``
    seconds after it arrived (and, in order, every answer behind it)."""

    def __init__(self, inner, op, delay):
        self.inner, self.name, self.op, self.delay = inner, inner.name, op, delay
        self._ops = []                # opcode of each command sent whose answer is still to come
        self._dec = P.FrameDecoder()
        self._held, self._ready = [], bytearray()
        self._done, self.late_sent = False, 0

    def write(self, data):
        self._ops += [f.body[0] if f.body else 0 for f in P.FrameDecoder().feed(data) if f.body or f.error]
        self.inner.write(data)

    def read(self, timeout):
        end = time.monotonic() + max(timeout, 0)
        while True:
            now = time.monotonic()
            while self._held and self._held[0][0] <= now:
                _, raw, late = self._held.pop(0)
                self._ready += raw
                self.late_sent += late
            if self._ready:
                out = bytes(self._ready)
                self._ready.clear()
                return out
            if now >= end:
                return b""
            wait = (min(end, self._held[0][0]) if self._held else end) - now
            for f in self._dec.feed(self.inner.read(min(max(wait, 0.001), 0.05))):
                op = self._ops.pop(0) if self._ops else None
                raw = P.slip_escape(f.body)
                if op == self.op and not self._done:
                    self._done = True
                    self._held.append((time.monotonic() + self.delay, raw, True))
                elif self._held:
                    self._held.append((self._held[-1][0], raw, False))
                else:
                    self._ready += raw

    def close(self):
        self.inner.close()


def test_late_recall_answer_from_the_rtl_is_not_accepted():
    """The same through the generated Verilog (sim backend): the RTL's late RECALL(s1) answer is
    dropped by the resynchronization (the RTL answers the marker BAD_OPCODE, in order), and
    RECALL(s2) gets the RTL's answer to s2, equal to the golden device's."""
    from hmtx.host.backends_sim import SimTransport
    from hmtx.model.defaults import engine_config

    cfg = engine_config("tiny", 32, None)             # the model tests/test_device_sim.py builds
    rng = np.random.default_rng(SEED + 4)
    golden = Device(GoldenTransport(cfg), cfg)
    t = _LateOver(SimTransport(cfg), P.Op.RECALL, delay=2.5)
    try:
        dev = Device(t, cfg, timeout=1.5)
        qw = [fixed.quantize_weight(rng.normal(size=(cfg.d, cfg.d_h))) for _ in range(2)]
        for d in (dev, golden):
            d.load_weights(*qw)
        for _ in range(3):
            m, e = fixed.quantize_bfp(rng.normal(size=cfg.d))
            assert dev.write_memory(m, int(e)) == golden.write_memory(m, int(e))
        s1, e1 = fixed.quantize_bfp(rng.normal(size=cfg.d))
        w1, w2 = golden.recall(s1, int(e1)), golden.recall(-s1, int(e1))
        assert not np.array_equal(w1[2], w2[2])
        with pytest.raises(ProtocolError, match="RECALL: no response"):
            dev.recall(s1, int(e1))
        got = _retry(lambda: dev.recall(-s1, int(e1)))
        assert all(np.array_equal(np.asarray(g), np.asarray(w)) for g, w in zip(got, w2)), "stale answer"
        assert t.late_sent == 1 and dev.status().fill == 3
    finally:
        t.close()
