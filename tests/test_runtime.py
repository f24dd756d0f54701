"""The HMT runtime on the tiny backbone and the golden device: checks, fault reports, cases."""

import json

import pytest

from device_testlib import FaultOnNth, Recorder
from hmt_testlib import SEED, random_ids, tiny_hmt
from hmtx.host.backends import FaultInjector, GoldenTransport, Transport
from hmtx.host.device import Device
from hmtx.host.runtime import MismatchError, load_case, replay_case, run_document
from hmtx.model import protocol as P
from hmtx.model.configs import get_config
from hmtx.model.golden_device import GoldenDevice

# tiny_hmt: d=32 (tiny Llama), d_h=8, N=2, B=7 tokens per segment.
CFG = get_config("tiny").with_(name="tiny-hmt", d=32, n_slots=2)
SEGMENTS = 6                                  # 4 recalls; the 2-slot ring wraps twice


@pytest.fixture(autouse=True)
def _print_seed():
    # Shown with the output of a failing test: rerun with HMTX_SEED=<this> to reproduce.
    print(f"HMTX_SEED={SEED}")


@pytest.fixture(scope="module")
def model():
    return tiny_hmt()


@pytest.fixture(scope="module")
def ids():
    return random_ids(7 * SEGMENTS, seed=SEED)


class _FaultOnNthRecall(FaultInjector):
    """Flips a bit of P_n element ``elem`` in the answer to the n-th RECALL sent."""

    def __init__(self, n, elem, bit):
        super().__init__(GoldenTransport(CFG))
        self.n, self.elem, self.bit, self.recalls = n, elem, bit, 0

    def write(self, data):
        frames = P.FrameDecoder().feed(data)
        if frames and frames[0].body[:1] == bytes([P.Op.RECALL]):
            self.recalls += 1
            if self.recalls == self.n:
                self.arm(P.Op.RECALL, 2 + 2 * self.elem + self.bit // 8, self.bit % 8)
        super().write(data)


def device(transport=None) -> Device:
    return Device(transport or GoldenTransport(CFG), CFG)


def test_clean_run_matches_reference(model, ids, tmp_path):
    with device() as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(tmp_path / "case.json"),
                           cache_check="full", probabilities=True)
    assert res.mismatch is None and res.case_file is None
    assert res.segments == SEGMENTS and res.tokens == 7 * SEGMENTS - 1
    # reset + weights + 6 writes + 4 recalls + every valid slot read back after each segment.
    assert res.ops_checked == 1 + 1 + 6 + 4 + (1 + 2 * 5)
    assert res.ppl("hmt_device") == res.ppl("hmt_fixed")           # bit-exact recall => same PPL
    assert res.ppl("hmt_device") != res.ppl("backbone")
    assert res.device_cycles > 0
    assert [w is None for w in res.recall_probs] == [True, True, False, False, False, False]
    assert sorted(res.recall_probs[-1]) == [3, 4]                  # the 2 newest memories


@pytest.mark.parametrize("seg,elem,bit", [(2, 0, 0), (4, 31, 15), (5, 7, 9)])
def test_one_bit_fault_in_recall_is_reported_exactly(model, ids, tmp_path, seg, elem, bit):
    inj = FaultInjector(GoldenTransport(CFG))
    with device(inj) as dev:
        def arm(s):
            if s == seg:
                inj.arm(P.Op.RECALL, 2 + 2 * elem + bit // 8, bit % 8)
        res = run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(tmp_path / "c.json"), before_segment=arm)
    m = res.mismatch
    assert inj.injected == 1
    assert (m.segment, m.op, m.field, m.element) == (seg, "RECALL", "p_mant", elem)
    flipped = (m.expected & 0xFFFF) ^ (1 << bit)
    assert m.got == flipped - (1 << 16) if flipped & 0x8000 else m.got == flipped
    assert res.segments == seg                                      # stopped at the faulty segment
    case = load_case(res.case_file)
    assert case["mismatch"]["element"] == elem
    assert [o["op"] for o in case["ops"]][:3] == ["reset", "load_weights", "write"]
    # Replayed on a healthy device, the case passes; on the faulty one it fails the same way.
    with device() as dev:
        assert replay_case(case, dev).ops_checked > 0
    n_recall = sum(1 for o in case["ops"] if o["op"] == "recall")
    with device(_FaultOnNthRecall(n_recall, elem, bit)) as dev:
        with pytest.raises(MismatchError) as e:
            replay_case(case, dev)
    assert (e.value.mismatch.op, e.value.mismatch.element) == ("RECALL", elem)


@pytest.mark.parametrize("overlap", [True, False])
def test_fault_in_cache_readback_names_slot_and_element(model, ids, tmp_path, overlap):
    j, bit = 3, 4
    # Segment 3's first READ_SLOT is the 6th (segment 0 reads 1 slot, 1 and 2 two each). Counted by
    # command: with overlap, segment 2's read-back happens after before_segment(3).
    inj = FaultOnNth(GoldenTransport(CFG), P.Op.READ_SLOT, 6, 1 + CFG.d + 2 + 2 * j, bit)
    with device(inj) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(tmp_path / "c.json"), overlap=overlap,
                           cache_check="full")
    m = res.mismatch
    assert (m.segment, m.op, m.slot, m.field, m.element) == (3, "READ_SLOT", 0, "k_mant", j)
    assert m.got ^ m.expected == 1 << bit
    assert res.segments == 3 and len(res.nll["hmt_device"]) == 3      # segment 3 not counted as done


class _Dies(Transport):
    """A link that breaks after ``n`` writes."""

    name = "dies"

    def __init__(self, n):
        self.inner, self.n = GoldenTransport(CFG), n

    def write(self, data):
        self.n -= 1
        if self.n < 0:
            raise ConnectionError("link lost")
        self.inner.write(data)

    def read(self, timeout):
        return self.inner.read(timeout)


def test_device_error_mid_run_raises_and_saves_case(model, ids, tmp_path):
    case = tmp_path / "dead.json"
    with device(_Dies(12)) as dev:
        with pytest.raises(ConnectionError, match="link lost"):
            run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(case))
    saved = json.loads(case.read_text())
    assert "link lost" in saved["error"] and saved["mismatch"] is None


def test_broken_device_is_caught_by_replay(model, ids, tmp_path):
    """A device whose K projection is off by one LSB in one element fails on the first read-back."""
    class OffByOne(GoldenDevice):
        def _op_write_memory(self, p):
            out = super()._op_write_memory(p)
            slot = (self.write_ptr - 1) % self.config.n_slots
            self.k_mant[slot, 5] += 1
            return out

    bad = GoldenTransport(CFG, device=OffByOne(CFG))
    with device(bad) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(tmp_path / "c.json"))
    m = res.mismatch
    assert (m.segment, m.op, m.slot, m.field, m.element) == (0, "READ_SLOT", 0, "k_mant", 5)
    assert m.got == m.expected + 1


def test_inline_reference_skips_the_fixed_stream(model, ids):
    with device() as dev:
        inline = run_document(model, ids, dev, CFG, SEGMENTS, fixed_stream=False)
    with device() as dev:
        stream = run_document(model, ids, dev, CFG, SEGMENTS)
    assert inline.mismatch is None and inline.ppl("hmt_fixed") is None and "hmt_fixed" not in inline.nll
    assert inline.ppl("hmt_device") == stream.ppl("hmt_device") == stream.ppl("hmt_fixed")
    assert inline.ops_checked == stream.ops_checked


def test_size_mismatch_is_refused(model, ids):
    with Device(GoldenTransport(get_config("tiny"))) as dev:
        with pytest.raises(ValueError, match="do not match engine config"):
            run_document(model, ids, dev, get_config("tiny"), 2)
    with device() as dev:
        with pytest.raises(ValueError, match="segments need"):
            run_document(model, ids[:10], dev, CFG, 3)


def test_load_case_rejects_bad_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{}")
    with pytest.raises(ValueError, match="not an hmtx case file"):
        load_case(str(p))
    with pytest.raises(ValueError, match="cannot read case file"):
        load_case(str(tmp_path / "missing.json"))


def test_written_cache_check_reads_only_the_new_slot_then_the_whole_cache(model, ids, tmp_path):
    reads = []

    class _Counting(GoldenTransport):
        def write(self, data):
            for f in P.FrameDecoder().feed(data):
                if f.body[:1] == bytes([P.Op.READ_SLOT]):
                    reads.append(f.body[1])
            super().write(data)

    with device(_Counting(CFG)) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(tmp_path / "c.json"),
                           cache_check="written")
    assert res.mismatch is None and res.ppl("hmt_device") == res.ppl("hmt_fixed")
    # The slot each of segments 0-4 wrote (write count mod N=2), then both slots after segment 5.
    assert reads == [0, 1, 0, 1, 0, 0, 1]
    assert res.ops_checked == 1 + 1 + 6 + 4 + 5 + 2
    # A damaged K in the slot being checked is still named exactly, and the case replays it.
    inj = FaultOnNth(GoldenTransport(CFG), P.Op.READ_SLOT, 4, 1 + CFG.d + 2 + 2 * 3, 4)   # segment 3's
    with device(inj) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(tmp_path / "c2.json"),
                           cache_check="written")
    assert (res.mismatch.segment, res.mismatch.op, res.mismatch.slot) == (3, "READ_SLOT", 1)
    case = load_case(res.case_file)
    # segments 0-3, the last being the check that failed
    assert [o.get("slots") for o in case["ops"] if o["op"] == "check_cache"] == [[0], [1], [0], [1]]
    with device() as dev:
        assert replay_case(case, dev).ops_checked > 0
    with pytest.raises(ValueError, match="cache_check"):
        run_document(model, ids, device(), CFG, SEGMENTS, cache_check="some")


# --- the write overlapped with the next segment's representation pass (issue 21) ---------------------
def _send_index(events, op, before=None, after=-1):
    idx = [i for i, e in enumerate(events) if e == ("send", op) and i > after and (before is None or i < before)]
    return idx


@pytest.mark.parametrize("overlap", [True, False])
def test_write_is_in_flight_during_the_next_representation_pass(model, ids, monkeypatch, overlap):
    """The order the host does things in: segment n's WRITE_MEMORY is sent before segment n+1's
    representation pass and, with overlap, its answer read only after it (then segment n's
    cache check, then the RECALL); without overlap, all of it before."""
    events = []
    real = model.representation

    def representation(h):
        events.append(("repr", None))
        return real(h)

    monkeypatch.setattr(model, "representation", representation)
    with device(Recorder(GoldenTransport(CFG), events)) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS, overlap=overlap)
    assert res.mismatch is None
    recalls = _send_index(events, P.Op.RECALL)
    assert len(recalls) == SEGMENTS - 2
    for r in recalls:
        rep = max(i for i in range(r) if events[i][0] == "repr")      # the device variant's, just before
        ws = max(_send_index(events, P.Op.WRITE_MEMORY, before=r))    # the previous segment's write
        wa = next(i for i in range(ws, len(events)) if events[i] == ("answer", P.Op.WRITE_MEMORY))
        st = _send_index(events, P.Op.STATUS, after=ws)[0]            # its cache check
        assert ws < rep and wa < r and st < r
        if overlap:
            assert rep < wa < st, events[ws:r + 1]                    # in flight while the pass ran
        else:
            assert wa < st < rep, events[ws:r + 1]


@pytest.mark.parametrize("cache_check", ["full", "written"])
@pytest.mark.parametrize("fixed_stream", [True, False])
def test_overlap_on_and_off_give_the_same_results_checks_and_traffic(model, ids, cache_check, fixed_stream):
    got = {}
    for overlap in (False, True):
        events = []
        rec = Recorder(GoldenTransport(CFG), events)
        with device(rec) as dev:
            res = run_document(model, ids, dev, CFG, SEGMENTS, overlap=overlap, cache_check=cache_check,
                               fixed_stream=fixed_stream)
            n = len(rec.sent)
            cache = [dev.read_slot(s) for s in range(dev.status().fill)]
        got[overlap] = (res, bytes(rec.sent[:n]), cache)
    (a, sent_a, cache_a), (b, sent_b, cache_b) = got[False], got[True]
    assert a.mismatch is None and b.mismatch is None
    assert a.nll == b.nll and a.counts == b.counts and a.recall_probs == b.recall_probs
    assert (a.segments, a.tokens, a.ops_checked, a.device_cycles) == (b.segments, b.tokens, b.ops_checked,
                                                                    b.device_cycles)
    assert sent_a == sent_b                        # the device got the same commands, in the same order
    assert len(cache_a) == CFG.n_slots
    for x, y in zip(cache_a, cache_b):
        assert all((u == v).all() if hasattr(u, "all") else u == v for u, v in zip(x, y))


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("nth", [4, SEGMENTS])     # segment 3's write; the last segment's (checked at the end)
def test_fault_in_a_write_answer_names_the_segment_that_wrote(model, ids, tmp_path, overlap, nth):
    seg = nth - 1
    # fill (payload bytes 2-3) is 2 from the second write on (N=2): bit 1 flipped gives 0
    inj = FaultOnNth(GoldenTransport(CFG), P.Op.WRITE_MEMORY, nth, 2, 1)
    with device(inj) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(tmp_path / "c.json"), overlap=overlap)
    m = res.mismatch
    assert inj.injected == 1
    assert (m.segment, m.op, m.slot, m.field, m.element, m.expected, m.got) == (seg, "WRITE_MEMORY", None,
                                                                                "fill", None, 2, 0)
    assert res.segments == seg and len(res.nll["backbone"]) == seg
    case = load_case(res.case_file)
    ops = case["ops"]
    assert (ops[-1]["op"], ops[-1]["segment"]) == ("write", seg)       # the case ends at the faulty write
    assert sum(o["op"] == "write" for o in ops) == nth
    with device() as dev:
        assert replay_case(case, dev).ops_checked > 0
    with device(FaultOnNth(GoldenTransport(CFG), P.Op.WRITE_MEMORY, nth, 2, 1)) as dev:
        with pytest.raises(MismatchError) as e:
            replay_case(case, dev)
    assert (e.value.mismatch.segment, e.value.mismatch.op, e.value.mismatch.field) == (seg, "WRITE_MEMORY", "fill")


class _BadWrite(GoldenTransport):
    """The n-th WRITE_MEMORY command arrives damaged (device answers BAD_CRC) or its answer is
    lost on the way back."""

    def __init__(self, n, mode):
        super().__init__(CFG)
        self.n, self.mode, self.writes = n, mode, 0

    def write(self, data):
        if any(f.body[:1] == bytes([P.Op.WRITE_MEMORY]) for f in P.FrameDecoder().feed(data)):
            self.writes += 1
            if self.writes == self.n:
                if self.mode == "drop":
                    self.device.feed(data)
                    return
                data = data[:3] + bytes([data[3] ^ 0x01]) + data[4:]      # a mantissa bit: CRC fails
        super().write(data)


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("mode", ["bad_crc", "drop"])
def test_device_error_of_a_posted_write_is_raised_and_the_device_keeps_working(model, ids, tmp_path, overlap, mode):
    from hmtx.host.device import DeviceError, ProtocolError
    with Device(_BadWrite(3, mode), CFG, timeout=0.3) as dev:
        want = DeviceError if mode == "bad_crc" else ProtocolError
        with pytest.raises(want, match="BAD_CRC to WRITE_MEMORY" if mode == "bad_crc" else
                           "WRITE_MEMORY: no response") as e:
            run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(tmp_path / "c.json"), overlap=overlap)
        res = e.value.run_result
        assert res.segments == 2 and res.mismatch is None        # segment 2's write failed
        assert json.loads((tmp_path / "c.json").read_text())["error"].startswith(want.__name__)
        assert dev.pending is None
        again = run_document(model, ids, dev, CFG, SEGMENTS, overlap=overlap)      # same link, same device
    assert again.mismatch is None and again.segments == SEGMENTS
    with device() as clean:
        assert again.nll == run_document(model, ids, clean, CFG, SEGMENTS).nll


def test_overlapped_run_over_a_serial_port_matches_the_blocking_run(model, ids):
    """The serial backend (a pseudo-terminal to the golden device): posted writes, same results."""
    from device_testlib import Shuttle
    from hmtx.host.backends import SerialTransport
    shuttle = Shuttle(GoldenTransport(CFG))
    try:
        with Device(SerialTransport(shuttle.port), CFG) as dev:
            got = run_document(model, ids, dev, CFG, SEGMENTS, overlap=True)
    finally:
        shuttle.close()
    with device() as dev:
        want = run_document(model, ids, dev, CFG, SEGMENTS, overlap=False)
    assert got.mismatch is None
    assert (got.nll, got.ops_checked, got.device_cycles) == (want.nll, want.ops_checked, want.device_cycles)


# --- probabilities on request, the written-slot check with a whole check every K (issue 21) -----------
class _RecallTraffic(GoldenTransport):
    """Counts RECALL frames by body length (d + 3: no flags byte; d + 4: flags) with their flags,
    and the bytes of their answers."""

    def __init__(self, cfg=CFG, device=None):
        super().__init__(cfg, device=device)
        self.sent, self.answer_bytes, self._rx_dec, self._owed = [], [], P.FrameDecoder(), 0

    def write(self, data):
        for f in P.FrameDecoder().feed(data):
            if f.body[:1] == bytes([P.Op.RECALL]):
                self.sent.append(None if len(f.body) == CFG.d + 3 else f.body[-2])
        super().write(data)

    def read(self, timeout):
        data = super().read(timeout)
        for f in self._rx_dec.feed(data):
            if f.body[1:2] == bytes([P.Op.RECALL]):
                self.answer_bytes.append(len(f.body))
        return data


def test_default_run_asks_for_no_probabilities_and_checks_the_written_slots(model, ids):
    traffic = _RecallTraffic()
    reads = []
    real = traffic.write

    def write(data):
        reads.extend(f.body[1] for f in P.FrameDecoder().feed(data) if f.body[:1] == bytes([P.Op.READ_SLOT]))
        real(data)
    traffic.write = write
    with device(traffic) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS)
    assert res.mismatch is None and res.ppl("hmt_device") == res.ppl("hmt_fixed")
    # every RECALL carries flags 0 and its answer only P_n and n: status, op, 2 + 2d, 2, crc
    assert traffic.sent == [0] * (SEGMENTS - 2)
    assert traffic.answer_bytes == [3 + 2 + 2 * CFG.d + 2] * (SEGMENTS - 2)
    assert res.recall_probs == [None] * SEGMENTS
    # the written slot after segments 0-4, the whole cache after the last (16 > 6 segments)
    assert reads == [0, 1, 0, 1, 0, 0, 1]
    assert res.ops_checked == 1 + 1 + 6 + 4 + 5 + 2
    # Asked for, they come, are checked, and fill the result (same NLL: P_n is the same)
    traffic = _RecallTraffic()
    with device(traffic) as dev:
        full = run_document(model, ids, dev, CFG, SEGMENTS, probabilities=True)
    assert traffic.sent == [P.RECALL_PROBS] * (SEGMENTS - 2)
    assert traffic.answer_bytes == [3 + 2 + 2 * CFG.d + 2 + 2 * 2] * (SEGMENTS - 2)
    assert full.nll == res.nll and full.ops_checked == res.ops_checked
    assert [w is None for w in full.recall_probs] == [True, True, False, False, False, False]


@pytest.mark.parametrize("every,whole_after", [(2, (1, 3, 5)), (4, (3, 5)), (0, (5,))])
def test_whole_cache_check_every_k_segments(model, ids, every, whole_after):
    reads = []

    class _Counting(GoldenTransport):
        def write(self, data):
            reads.extend(f.body[1] for f in P.FrameDecoder().feed(data) if f.body[:1] == bytes([P.Op.READ_SLOT]))
            super().write(data)

    with device(_Counting(CFG)) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS, full_check_every=every)
    assert res.mismatch is None
    # segment s wrote slot s mod 2 (N=2) and then holds min(s + 1, 2) memories
    want = []
    for seg in range(SEGMENTS):
        want += list(range(min(seg + 1, CFG.n_slots))) if seg in whole_after else [seg % CFG.n_slots]
    assert reads == want
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="full_check_every"):
            run_document(model, ids, device(), CFG, SEGMENTS, full_check_every=bad)


class _WrongSoftmax(GoldenDevice):
    """Answers RECALL with probability 0 off by ``dp`` and P_n mantissa 0 off by ``dm`` (in the
    answer only: a response path fault), whether or not the probabilities are sent."""

    def __init__(self, cfg, dp, dm):
        super().__init__(cfg)
        self.dp, self.dm = dp, dm

    def _op_recall(self, p):
        payload, cycles = super()._op_recall(p)
        buf = bytearray(payload)
        d = self.config.d
        m0 = int.from_bytes(buf[2:4], "little", signed=True) + self.dm
        buf[2:4] = m0.to_bytes(2, "little", signed=True)
        if len(buf) > 4 + 2 * d:
            p0 = int.from_bytes(buf[4 + 2 * d:6 + 2 * d], "little") + self.dp
            buf[4 + 2 * d:6 + 2 * d] = p0.to_bytes(2, "little")
        return bytes(buf), cycles


@pytest.mark.parametrize("probabilities", [True, False])
def test_a_wrong_recall_is_reported_the_same_with_or_without_probabilities(model, ids, tmp_path, probabilities):
    # P_n and a probability wrong: without the probabilities the checker asks again with them, so
    # the report names the probability first either way.
    traffic = _RecallTraffic(device=_WrongSoftmax(CFG, dp=1, dm=1))
    with device(traffic) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS, probabilities=probabilities,
                           case_path=str(tmp_path / "c.json"))
    m = res.mismatch
    assert (m.segment, m.op, m.field, m.element, m.got - m.expected) == (2, "RECALL", "probs", 0, 1)
    assert traffic.sent == ([P.RECALL_PROBS] if probabilities else [0, P.RECALL_PROBS])
    case = load_case(res.case_file)
    assert [o["probs"] for o in case["ops"] if o["op"] == "recall"] == [probabilities]
    # The replay sends what was sent and reports the same
    traffic = _RecallTraffic(device=_WrongSoftmax(CFG, dp=1, dm=1))
    with device(traffic) as dev:
        with pytest.raises(MismatchError) as e:
            replay_case(case, dev)
    assert e.value.mismatch == m and traffic.sent == ([P.RECALL_PROBS] if probabilities else [0, P.RECALL_PROBS])


def test_what_the_check_loses_without_probabilities(model, ids):
    # A probability wrong while P_n is right: caught only when the probabilities are asked for
    # (docs/runtime.md, "Probabilities on request").
    with device(GoldenTransport(CFG, device=_WrongSoftmax(CFG, dp=1, dm=0))) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS, probabilities=False)
    assert res.mismatch is None
    with device(GoldenTransport(CFG, device=_WrongSoftmax(CFG, dp=1, dm=0))) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS, probabilities=True)
    assert (res.mismatch.segment, res.mismatch.field) == (2, "probs")
    # P_n wrong alone: found without the probabilities, named as P_n (the asked-again ones are right)
    traffic = _RecallTraffic(device=_WrongSoftmax(CFG, dp=0, dm=-1))
    with device(traffic) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS)
    assert (res.mismatch.segment, res.mismatch.field, res.mismatch.element) == (2, "p_mant", 0)
    assert traffic.sent == [0, P.RECALL_PROBS]


def test_a_wrong_n_is_caught_without_probabilities(model, ids):
    class _WrongN(GoldenDevice):
        def _op_recall(self, p):
            payload, cycles = super()._op_recall(p)
            if len(payload) == 4 + 2 * self.config.d:           # P_n and n only
                payload = payload[:-2] + (self.fill + 1).to_bytes(2, "little")
            return payload, cycles

    with device(GoldenTransport(CFG, device=_WrongN(CFG))) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS)
    m = res.mismatch
    assert (m.segment, m.op, m.field, m.expected, m.got) == (2, "RECALL", "n", 2, 3)


def test_an_older_device_sends_the_probabilities_anyway_and_they_are_checked(model, ids, tmp_path):
    # A 1.1 device takes no flags byte: the host sends it the RECALL without one, as 1.1 hosts did.
    old = GoldenDevice(CFG, version=(1, 1))
    traffic = _RecallTraffic(device=old)
    with device(traffic) as dev:
        assert dev.device_info.version == (1, 1) and not dev.recall_flags
        res = run_document(model, ids, dev, CFG, SEGMENTS, probabilities=False)
    assert res.mismatch is None and traffic.sent == [None] * (SEGMENTS - 2)
    assert [w is None for w in res.recall_probs] == [True, True, False, False, False, False]
    with device() as dev:
        assert run_document(model, ids, dev, CFG, SEGMENTS).nll == res.nll


def test_cases_record_the_probabilities_flag(model, ids, tmp_path):
    inj = FaultInjector(GoldenTransport(CFG))
    with device(inj) as dev:
        res = run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(tmp_path / "c.json"),
                           before_segment=lambda s: s == 3 and inj.arm(P.Op.RECALL, 2, 0))
    assert (res.mismatch.segment, res.mismatch.field) == (3, "p_mant")
    raw = json.loads((tmp_path / "c.json").read_text())
    assert [o["probs"] for o in raw["ops"] if o["op"] == "recall"] == [False, False]
    # A case from before protocol 1.2 (no "probs") replays with the probabilities asked for
    for o in raw["ops"]:
        o.pop("probs", None)
    (tmp_path / "old.json").write_text(json.dumps(raw))
    traffic = _RecallTraffic()
    with device(traffic) as dev:
        replay_case(load_case(str(tmp_path / "old.json")), dev)
    assert traffic.sent == [P.RECALL_PROBS] * 2
    raw["ops"][-1]["probs"] = "no"
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"probs must be true or false"):
        load_case(str(tmp_path / "bad.json"))
