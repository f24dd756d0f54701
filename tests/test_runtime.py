"""The HMT runtime on the tiny backbone and the golden device: checks, fault reports, cases."""

import json

import pytest

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
        res = run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(tmp_path / "case.json"))
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


def test_fault_in_cache_readback_names_slot_and_element(model, ids, tmp_path):
    inj = FaultInjector(GoldenTransport(CFG))
    j, bit = 3, 4
    with device(inj) as dev:
        def arm(s):
            if s == 3:
                inj.arm(P.Op.READ_SLOT, 1 + CFG.d + 2 + 2 * j, bit)
        res = run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(tmp_path / "c.json"), before_segment=arm)
    m = res.mismatch
    assert (m.segment, m.op, m.slot, m.field, m.element) == (3, "READ_SLOT", 0, "k_mant", j)
    assert m.got ^ m.expected == 1 << bit


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
    inj = FaultInjector(GoldenTransport(CFG))
    with device(inj) as dev:
        def arm(s):
            if s == 3:
                inj.arm(P.Op.READ_SLOT, 1 + CFG.d + 2 + 2 * 3, 4)
        res = run_document(model, ids, dev, CFG, SEGMENTS, case_path=str(tmp_path / "c2.json"),
                           before_segment=arm, cache_check="written")
    assert (res.mismatch.segment, res.mismatch.op, res.mismatch.slot) == (3, "READ_SLOT", 1)
    case = load_case(res.case_file)
    # segments 0-3, the last being the check that failed
    assert [o.get("slots") for o in case["ops"] if o["op"] == "check_cache"] == [[0], [1], [0], [1]]
    with device() as dev:
        assert replay_case(case, dev).ops_checked > 0
    with pytest.raises(ValueError, match="cache_check"):
        run_document(model, ids, device(), CFG, SEGMENTS, cache_check="some")
