"""Contract 2 on the device side (issue 24): protocol 2.0, the golden device that implements it,
and the host runtime that checks it (docs/protocol.md "Versions and contracts",
docs/arithmetic.md section 10)."""

import json
import os

import numpy as np
import pytest

from device_testlib import FaultOnNth, ok, xact
from hmt_testlib import random_ids, tiny_hmt
from hmtx.host.backends import GoldenTransport, check_contract
from hmtx.host.cli import main
from hmtx.host.device import Device
from hmtx.host.runtime import CheckedDevice, MismatchError, load_case, replay_case, run_document
from hmtx.model import fixed
from hmtx.model import protocol as P
from hmtx.model.configs import get_config
from hmtx.model.golden_device import GoldenDevice, example_session
from hmtx.model.protocol import Op, Status

SEED = int(os.environ.get("HMTX_SEED", "2024"))
CFG = get_config("tiny")                                      # d=24, d_h=8, N=4, P=4
RUN_CFG = get_config("tiny").with_(name="tiny-hmt", d=32, n_slots=2)   # tiny_hmt's sizes
SEGMENTS = 6


@pytest.fixture(autouse=True)
def _print_seed():
    # Shown with the output of a failing test: rerun with HMTX_SEED=<this> to reproduce.
    print(f"HMTX_SEED={SEED}")


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


def vec(rng, d=CFG.d, scale=4.0):
    m, e = fixed.quantize_bfp(rng.normal(size=d) * scale)
    return m, int(e)


def load(dev, matrix, qw, chunk=P.LOAD_CHUNK):
    for p in P.weight_chunks(matrix, qw, chunk):
        ok(dev, Op.LOAD_WEIGHTS, p)


def weights(rng, cfg=CFG):
    return [fixed.quantize_weight(rng.normal(size=(cfg.d, cfg.d_h)) * s) for s in (0.3, 0.2)]


# --- protocol 2.0: versions, INFO, READ_SLOT bytes ------------------------------------------------
def test_versions_name_the_contracts():
    # what hw/ reports: the lane engine 1.3 / 2.2 (ATTN_PASS), the serial one 1.2 / 2.1 (RECALL's flags)
    assert P.VERSION == P.gateware_version("lanes", 1) == (1, 3) and P.gateware_version("lanes", 2) == (2, 2)
    assert P.gateware_version("serial", 1) == (1, 2) and P.gateware_version("serial", 2) == (2, 1)
    assert P.CONTRACTS == (1, 2)
    assert P.VERSIONS == {1: (1, 3), 2: (2, 2)}            # the host's newest: ATTN_PASS
    for contract in P.CONTRACTS:
        info = P.Info.for_config(CFG, "serial", contract)
        back = P.unpack_info(P.pack_info(info))
        assert back == info and back.version == P.gateware_version("serial", contract) and back.contract == contract
        assert back.engine == "serial" and back.mismatches(CFG) == []
    # INFO bytes differ only in the version bytes (offsets 2, 3)
    a, b = (P.pack_info(P.Info.for_config(CFG, contract=c)) for c in (1, 2))
    assert len(a) == len(b) == 29 and [i for i in range(29) if a[i] != b[i]] == [2, 3] and b[2:4] == b"\x02\x02"
    with pytest.raises(ValueError, match="unknown contract 3"):
        P.Info.for_config(CFG, contract=3)
    three = P.Info.for_config(CFG).__class__(**{**P.Info.for_config(CFG).__dict__, "version": (3, 0)})
    with pytest.raises(P.ProtocolError, match=r"device speaks protocol 3\.0, this host 1\.3 and 2\.2"):
        P.unpack_info(P.pack_info(three)).contract


def test_read_slot_2_0_bytes_and_lengths(rng):
    d, d_h = CFG.d, CFG.d_h
    assert P.slot_length(d, d_h, 1) == 3 + d + 2 * d_h
    assert P.slot_length(d, d_h, 2) == 3 + 2 * d
    m, me = vec(rng)
    kf = rng.integers(-127, 128, d)
    raw = P.pack_slot(m, me, kf, -150, contract=2)
    # M: exp i8, d x i8; K': exp i16 (little-endian), d x i8
    assert len(raw) == 3 + 2 * d
    assert raw[0] == me & 0xFF and raw[1 + d:3 + d] == (-150).to_bytes(2, "little", signed=True)
    assert np.array_equal(np.frombuffer(raw[3 + d:], np.int8), kf)
    got_m, got_me, got_k, got_ke = P.unpack_slot(raw, d, d_h, 2)
    assert np.array_equal(got_m, m) and got_me == me and np.array_equal(got_k, kf) and got_ke == -150
    assert P.unpack_folded(P.pack_folded(kf, 247), d)[1] == 247
    # bad input is named
    with pytest.raises(P.ProtocolError, match=f"READ_SLOT response payload has {3 + d + 2 * d_h} bytes, "
                                              f"expected {3 + 2 * d}"):
        P.unpack_slot(P.pack_slot(m, me, rng.integers(-99, 99, d_h), 0), d, d_h, 2)
    with pytest.raises(ValueError, match="folded key mantissas.*-127, 127"):
        P.pack_folded(np.full(d, -128), 0)
    with pytest.raises(ValueError, match="folded key: expected 24 mantissas, got 23"):
        P.pack_folded(kf[:-1], 0, n=d)
    with pytest.raises(ValueError, match="folded key exponent"):
        P.pack_folded(kf, 1 << 15)
    with pytest.raises(ValueError, match="folded vector of length 24 needs 26 bytes, got 25"):
        P.unpack_folded(bytes(25), d)
    with pytest.raises(ValueError, match="unknown contract 0"):
        P.slot_length(d, d_h, 0)


def test_doc_table_lengths_2_0():
    """The READ_SLOT response bodies of protocol 2.0 printed in docs/protocol.md section 6."""
    for name, read in (("tiny", 54), ("smollm", 1158), ("up5k", 134)):
        c = get_config(name)
        assert 3 + P.slot_length(c.d, c.d_h, 2) == read


# --- the golden device, contract 2 ------------------------------------------------------------------
def test_golden_contract_2_matches_fold_key_and_recall_folded(rng):
    dev = GoldenDevice(CFG, contract=2)
    assert P.unpack_info(ok(dev, Op.INFO)).version == (2, 2)          # the lane engine's gateware (ATTN_PASS)
    qw_q, qw_k = weights(rng)
    load(dev, 0, qw_q, chunk=5 * CFG.d_h)
    load(dev, 1, qw_k)
    n_writes = 2 * CFG.n_slots + 3                          # the ring wraps twice
    held = {}
    for i in range(n_writes):
        m, e = vec(rng, scale=float(2.0 ** rng.integers(-4, 5)))
        slot, fill = P.unpack_write(ok(dev, Op.WRITE_MEMORY, P.pack_vector_cmd(m, e, CFG.d)))
        assert (slot, fill) == (i % CFG.n_slots, min(i + 1, CFG.n_slots)), f"HMTX_SEED={SEED} write {i}"
        cyc = P.unpack_cycles(ok(dev, Op.CYCLES))
        assert (cyc.last_op, cyc.last) == (Op.WRITE_MEMORY, -(-2 * CFG.d * CFG.d_h // CFG.lanes))
        k, ke = fixed.project(qw_k, m[None, :], np.array([e]))
        kf, kfe = fixed.fold_key(qw_q, k, ke)
        held[slot] = (m, e, kf[0], int(kfe[0]))
        # every valid slot reads back exactly
        for s in range(fill):
            got = P.unpack_slot(ok(dev, Op.READ_SLOT, P.pack_read_slot(s)), CFG.d, CFG.d_h, 2)
            want = held[s]
            assert np.array_equal(got[0], want[0]) and got[1] == want[1], f"HMTX_SEED={SEED} write {i} slot {s}"
            assert np.array_equal(got[2], want[2]) and got[3] == want[3], f"HMTX_SEED={SEED} write {i} slot {s}"
        # a recall over the valid slots, slot order
        s_m, s_e = vec(rng)
        p, pe, probs = P.unpack_recall(ok(dev, Op.RECALL, P.pack_vector_cmd(s_m, s_e, CFG.d)), CFG.d)
        slots = [held[s] for s in range(fill)]
        wp, wpe, wprobs = fixed.recall_folded(s_m, s_e, np.stack([x[2] for x in slots]), np.array([x[3] for x in slots]),
                                              np.stack([x[0] for x in slots]), np.array([x[1] for x in slots]), CFG.d_h)
        assert np.array_equal(p, wp) and pe == wpe and np.array_equal(probs, wprobs), f"HMTX_SEED={SEED} write {i}"
        cyc = P.unpack_cycles(ok(dev, Op.CYCLES))
        assert (cyc.last_op, cyc.last) == (Op.RECALL, -(-2 * fill * CFG.d // CFG.lanes))


def test_golden_contract_2_no_weights_and_empty_cache(rng):
    dev = GoldenDevice(CFG, contract=2)
    qw_q, qw_k = weights(rng)
    v = P.pack_vector_cmd(*vec(rng), CFG.d)
    assert xact(dev, Op.WRITE_MEMORY, v).status == Status.NO_WEIGHTS
    # A recall never reads W_q in contract 2: only the empty cache stops it.
    assert xact(dev, Op.RECALL, v).status == Status.EMPTY_CACHE
    load(dev, 1, qw_k)
    # W_k alone is enough for contract 1, not for 2: the write folds W_q into the key.
    assert xact(dev, Op.WRITE_MEMORY, v).status == Status.NO_WEIGHTS
    assert P.unpack_status(ok(dev, Op.STATUS)).fill == 0
    one = GoldenDevice(CFG)
    load(one, 1, qw_k)
    assert xact(one, Op.WRITE_MEMORY, v).status == Status.OK
    load(dev, 0, qw_q)
    assert P.unpack_write(ok(dev, Op.WRITE_MEMORY, v)) == (0, 1)
    # W_q invalidated by a damaged chunk: writes stop, recalls of what is stored go on.
    body = bytearray(bytes([Op.LOAD_WEIGHTS]) + P.weight_chunks(0, qw_q)[0])
    body.append(P.crc8(body) ^ 0x33)
    (r,) = [P.decode_response(f) for f in P.FrameDecoder().feed(dev.feed(P.slip_escape(bytes(body))))]
    assert r.status == Status.BAD_CRC and not P.unpack_status(ok(dev, Op.STATUS)).wq_loaded
    assert xact(dev, Op.WRITE_MEMORY, v).status == Status.NO_WEIGHTS
    ok(dev, Op.RECALL, v)
    ok(dev, Op.RESET_CACHE)
    assert xact(dev, Op.RECALL, v).status == Status.EMPTY_CACHE
    assert xact(dev, Op.READ_SLOT, P.pack_read_slot(0)).status == Status.SLOT_RANGE


def test_example_session_on_a_2_0_device_covers_every_status():
    dev = GoldenDevice(CFG, contract=2)
    seen = set()
    for _, raw in example_session(CFG, seed=SEED):
        seen |= {P.decode_response(f).status for f in P.FrameDecoder().feed(dev.feed(raw))}
    assert seen == set(P.Status)


def test_golden_device_refuses_an_unknown_contract():
    with pytest.raises(ValueError, match="unknown contract 3"):
        GoldenDevice(CFG, contract=3)


# --- the host: the contract from INFO -------------------------------------------------------------
class _Major3(GoldenDevice):
    """A device of a protocol this host does not know (3.0), until ``fixed`` is set."""

    fixed = False

    def _op_info(self, p):
        payload, cycles = super()._op_info(p)
        return (payload if self.fixed else payload[:2] + b"\x03\x00" + payload[4:]), cycles


def test_host_refuses_an_unknown_major_and_the_device_stays_usable():
    gd = _Major3(CFG, contract=2)
    t = GoldenTransport(CFG, device=gd)
    with pytest.raises(P.ProtocolError, match=r"device speaks protocol 3\.0, this host 1\.3 and 2\.2"):
        Device(t, CFG)
    # Nothing was sent but the opening handshake and INFO; the link is in step and the device works.
    assert (gd.fill, gd.loaded, gd.cycles.total) == (0, [False, False], 0)
    gd.fixed = True
    with Device(t, CFG) as dev:
        assert dev.contract == 2 and dev.status().fill == 0


def test_device_contract_comes_from_info_and_can_be_required(rng):
    for contract in (1, 2):
        dev = Device(GoldenTransport(CFG, contract=contract), CFG)
        assert dev.contract == contract and dev.device_info.version == P.gateware_version("lanes", contract)
        qw_q, qw_k = weights(rng)
        dev.load_weights(qw_q, qw_k)
        m, e = vec(rng)
        dev.write_memory(m, e)
        got_m, got_me, k, ke = dev.read_slot(0)
        assert np.array_equal(got_m, m) and k.shape == ((CFG.d_h,) if contract == 1 else (CFG.d,))
        kk, kke = fixed.project(qw_k, m[None, :], np.array([e]))
        if contract == 2:
            kk, kke = fixed.fold_key(qw_q, kk, kke)
        assert np.array_equal(k, kk[0]) and ke == kke[0]
    with pytest.raises(ValueError, match=r"contract 2 asked for, but golden speaks protocol 1\.3 \(contract 1\)"):
        Device(GoldenTransport(CFG), CFG, contract=2)
    with pytest.raises(ValueError, match=r"contract 1 asked for, but golden speaks protocol 2\.2"):
        Device(GoldenTransport(CFG, contract=2), CFG, contract=1)
    assert Device.open("golden", CFG, contract=2).contract == 2
    assert Device.open("golden", CFG).contract == 1


def test_check_contract_names_an_unknown_contract_before_anything_starts():
    for spec in ("golden", "sim", "sim:serial", "board-sim", "board-sim:up5k@115200", "serial:/dev/ttyUSB0"):
        for contract in (None, 1, 2):
            check_contract(spec, contract)      # every backend builds or reports either contract
        with pytest.raises(ValueError, match=r"unknown contract 5; choose one of \(1, 2\)"):
            check_contract(spec, 5)


# --- the runtime: mirror, checks, faults, cases ---------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return tiny_hmt()


@pytest.fixture(scope="module")
def ids():
    return random_ids(7 * SEGMENTS, seed=SEED)


def dev2(transport=None) -> Device:
    return Device(transport or GoldenTransport(RUN_CFG, contract=2), RUN_CFG)


@pytest.mark.parametrize("fixed_stream", [True, False])
def test_contract_2_run_matches_the_fixed_variant_exactly(model, ids, fixed_stream):
    with dev2() as dev:
        res = run_document(model, ids, dev, RUN_CFG, SEGMENTS, fixed_stream=fixed_stream, cache_check="full")
    assert res.mismatch is None and res.segments == SEGMENTS
    assert res.ops_checked == 1 + 1 + 6 + 4 + (1 + 2 * 5)
    assert model.recall.contract == 1                         # the model is left as it was
    if fixed_stream:
        assert res.ppl("hmt_device") == res.ppl("hmt_fixed")
    # the same document under contract 1 computes something else (K' is rounded to 8 bits)
    with Device(GoldenTransport(RUN_CFG), RUN_CFG) as dev:
        one = run_document(model, ids, dev, RUN_CFG, SEGMENTS, fixed_stream=fixed_stream)
    assert one.mismatch is None and one.nll["hmt_device"] != res.nll["hmt_device"]
    assert one.nll["hmt_float"] == res.nll["hmt_float"]


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("where,field,bit", [("mant", "kf_mant", 4), ("exp", "kf_exp", 0)])
def test_corrupted_folded_key_byte_is_named(model, ids, tmp_path, overlap, where, field, bit):
    j = 5
    # Segment 3's first READ_SLOT is the 6th (segment 0 reads 1 slot, 1 and 2 two each).
    offset = 1 + RUN_CFG.d + (2 + j if where == "mant" else 0)
    inj = FaultOnNth(GoldenTransport(RUN_CFG, contract=2), Op.READ_SLOT, 6, offset, bit)
    case = tmp_path / "c.json"
    with dev2(inj) as dev:
        res = run_document(model, ids, dev, RUN_CFG, SEGMENTS, case_path=str(case), overlap=overlap,
                           cache_check="full")
    m = res.mismatch
    assert inj.injected == 1
    assert (m.segment, m.op, m.slot, m.field) == (3, "READ_SLOT", 0, field)
    assert m.element == (j if where == "mant" else None) and m.got ^ m.expected == 1 << bit
    assert f"op READ_SLOT slot 0: {field}" in m.describe() and "segment 3" in m.describe()
    # The case records contract 2 and replays: clean on a healthy 2.0 device, refused by a 1.1 one.
    saved = load_case(str(case))
    assert saved["contract"] == 2 and json.loads(case.read_text())["contract"] == 2
    with dev2() as dev:
        assert replay_case(saved, dev).ops_checked > 0
    with Device(GoldenTransport(RUN_CFG), RUN_CFG) as dev:
        with pytest.raises(ValueError, match="checking contract 2 needs a device that computes it"):
            replay_case(saved, dev)


def test_a_device_that_stores_the_unfolded_key_is_caught(model, ids):
    """A 2.0 device whose write forgets one LSB of K' fails at the first read-back."""
    class OffByOne(GoldenDevice):
        def _op_write_memory(self, p):
            out = super()._op_write_memory(p)
            self.k_mant[(self.write_ptr - 1) % self.config.n_slots, 7] += 1
            return out

    with dev2(GoldenTransport(RUN_CFG, device=OffByOne(RUN_CFG, contract=2))) as dev:
        res = run_document(model, ids, dev, RUN_CFG, SEGMENTS)
    m = res.mismatch
    assert (m.segment, m.op, m.slot, m.field, m.element) == (0, "READ_SLOT", 0, "kf_mant", 7)
    assert m.got == m.expected + 1


def test_checked_device_refuses_a_contract_the_device_does_not_compute():
    with Device(GoldenTransport(RUN_CFG), RUN_CFG) as dev:
        with pytest.raises(ValueError, match="checking contract 2 needs a device that computes it; golden "
                                             "computes contract 1"):
            CheckedDevice(dev, RUN_CFG, contract=2)
        assert CheckedDevice(dev, RUN_CFG).contract == 1


def test_old_cases_without_a_contract_replay_as_contract_1(model, ids, tmp_path):
    inj = FaultOnNth(GoldenTransport(RUN_CFG), Op.RECALL, 2, 2, 0)
    with Device(inj, RUN_CFG) as dev:
        res = run_document(model, ids, dev, RUN_CFG, SEGMENTS, case_path=str(tmp_path / "c.json"))
    assert res.mismatch is not None
    raw = json.loads((tmp_path / "c.json").read_text())
    assert raw["contract"] == 1
    del raw["contract"]
    (tmp_path / "old.json").write_text(json.dumps(raw))
    assert load_case(str(tmp_path / "old.json"))["contract"] == 1
    raw["contract"] = 3
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="'contract' must be one of 1, 2, got 3"):
        load_case(str(tmp_path / "bad.json"))


# --- hmtx run / replay -------------------------------------------------------------------------------
TINY = ["--backbone", "tiny", "--quiet"]


def test_run_cli_golden_contract_2(capsys, tmp_path):
    rc = main(["run", *TINY, "--device", "golden", "--contract", "2", "--segments", "2",
               "--json", str(tmp_path / "r.json"), "--reference", "stream"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    s = json.loads((tmp_path / "r.json").read_text())
    assert (s["segments"], s["mismatches"], s["contract"], s["protocol"]) == (2, 0, 2, "2.2")
    assert s["ppl"]["hmt_device"] == s["ppl"]["hmt_fixed"]
    assert "protocol 2.2 (contract 2)" in err and "contract 2" in out
    # A failing run's case replays under contract 2 (the golden device is built from the case).
    case = tmp_path / "case.json"
    rc = main(["run", *TINY, "--device", "golden", "--contract", "2", "--segments", "3",
               "--inject-fault", "2:5:1", "--case", str(case)])
    out, err = capsys.readouterr()
    assert rc == 1 and "MISMATCH at segment 2, op RECALL: p_mant[5]" in err
    assert main(["replay", str(case)]) == 0
    out, err = capsys.readouterr()
    assert "contract 2" in out and "no mismatch" in out
    # ... and on the gateware, which the sim backend builds for the case's contract.
    assert main(["replay", str(case), "--device", "sim"]) == 0
    out, err = capsys.readouterr()
    assert "contract 2" in out and "no mismatch" in out


def test_run_cli_unknown_contract_is_refused_before_any_work(capsys, monkeypatch):
    import hmtx.model.backbone as backbone

    def no_load(*a, **k):
        raise AssertionError("the backbone was loaded before the contract was checked")
    monkeypatch.setattr(backbone, "load_backbone", no_load)
    with pytest.raises(SystemExit):         # argparse: --contract takes 1 or 2
        main(["run", *TINY, "--device", "sim", "--contract", "3", "--segments", "2"])
    assert "invalid choice: 3" in capsys.readouterr().err
