"""ATTN_PASS (protocol 1.3 / 2.2): attention rows longer than a tile in exact passes, on the golden
device and through the host's checked driver (host/attention_tiles.py) and ``hmtx run
--offload-attention``."""

import os

import numpy as np
import pytest

from hmtx.host.attention_tiles import CheckedAttention, tile_plan
from hmtx.host.backends import FaultInjector, GoldenTransport
from hmtx.host.device import Device, ProtocolError
from hmtx.host.runtime import CheckedDevice, MismatchError, load_case, replay_case, run_document
from hmtx.model import fixed as F
from hmtx.model import protocol as P
from hmtx.model.configs import get_config
from hmtx.model.golden_device import GoldenDevice

from hmt_testlib import random_ids, tiny_hmt

SEED = int(os.environ.get("HMTX_SEED", "2323"))
CFG = get_config("tiny")                  # head_dim 8, 4 queries x 8 keys per tile
RUN_CFG = CFG.with_(name="tiny-hmt", d=32, n_slots=2)          # tiny_hmt's sizes


@pytest.fixture(autouse=True)
def _print_seed():
    print(f"HMTX_SEED={SEED}")


def rows(rng, n, hd=CFG.head_dim):
    return rng.integers(-127, 128, (n, hd)), rng.integers(-10, 3, n)


def device(version=None, cfg=CFG, contract=1, transport=None):
    version = version or P.VERSIONS[contract]
    return Device(transport or GoldenTransport(cfg, GoldenDevice(cfg, contract=contract, version=version)), cfg)


def frame(g, payload, op=P.Op.ATTN_PASS):
    """(status, payload) of the golden device's answer to one command."""
    (f,) = P.FrameDecoder().feed(g.feed(P.encode_command(op, payload) + bytes([P.END])))
    r = P.decode_response(f)
    return r.status, r.payload


def test_versions_and_lengths():
    assert P.GATEWARE_VERSIONS == {"lanes": {1: (1, 3), 2: (2, 2)}, "serial": {1: (1, 2), 2: (2, 1)}}
    assert P.VERSION == (1, 3)
    assert P.VERSIONS == {1: (1, 3), 2: (2, 2)}
    assert [P.takes_attn_pass(v) for v in ((1, 2), (1, 3), (2, 1), (2, 2))] == [False, True, False, True]
    rng = np.random.default_rng(SEED)
    q, k, v = rows(rng, 3), rows(rng, 5), rows(rng, 5)
    hd = CFG.head_dim
    for pass_, kw, want in (
            (1, dict(q=q, v_exp=v[1]), 5 + 3 * (1 + hd) + 5 * (1 + hd) + 5),
            (2, dict(n_q=3, m=[1, 2, 3]), 5 + 3 * 4 + 5 * (1 + hd)),
            (3, dict(n_q=3, m=[1, 2, 3], big_e=[0, 0, 0], total=[1 << 15, 40000, (1 << 25) - 1], v_mant=v[0], v_exp=v[1]),
             5 + 3 * 9 + 10 * (1 + hd))):
        payload = P.pack_attn_pass(pass_, *k, **kw)
        assert len(payload) == want
        body = bytes([P.Op.ATTN_PASS]) + payload + b"\0"
        assert P.attn_pass_length(body, hd) == len(body)
        a = P.unpack_attn_pass(payload, hd)
        assert (a.pass_, a.n_q, a.n_k) == (pass_, 3, 5) and np.array_equal(a.k[0], k[0])
    with pytest.raises(ValueError, match="first and last"):
        P.pack_attn_pass(1, *k, q=q, v_exp=v[1], first=True)
    with pytest.raises(ValueError, match="total"):
        P.pack_attn_pass(3, *k, n_q=3, m=[0] * 3, big_e=[0] * 3, total=[1 << 15, (1 << 15) - 1, 1 << 15], v_mant=v[0], v_exp=v[1])


@pytest.mark.parametrize("n_q,n_k,causal", [(1, 1, True), (5, 19, True), (13, 13, True), (7, 30, False),
                                            (4, 8, True), (9, 17, False)])
@pytest.mark.parametrize("contract", [1, 2])
def test_tiled_head_on_golden_is_attend_bit_for_bit(n_q, n_k, causal, contract):
    rng = np.random.default_rng([SEED, n_q, n_k, causal, contract])
    (q, qe), (k, ke), (v, ve) = rows(rng, n_q), rows(rng, n_k), rows(rng, n_k)
    keep = F.causal_mask(n_q, n_k) if causal else np.ones((n_q, n_k), bool)
    dev = device(contract=contract)
    att = CheckedAttention(CheckedDevice(dev, CFG))
    out, oe = att.head(q, qe, k, ke, v, ve, keep)
    want, we, _ = F.attend(q, qe, k, ke, v, ve, keep)
    assert np.array_equal(out, want) and np.array_equal(oe, we)
    plan = tile_plan(n_q, n_k, CFG.max_queries, CFG.max_keys, causal)
    assert att.ops == 3 * sum(len(t) for _, _, t in plan) and att.heads == 1
    assert dev.cycles().last > 0


def test_tile_plan_reaches_exactly_the_kept_keys():
    for n_q, n_k in ((1, 1), (4, 8), (5, 19), (13, 13), (16, 300)):
        keep = F.causal_mask(n_q, n_k)
        for qa, nq, tiles in tile_plan(n_q, n_k, 4, 8, True):
            covered = np.zeros(n_k, bool)
            for kb, nk, diag in tiles:
                assert np.array_equal(F.diag_mask(nq, nk, diag), keep[qa:qa + nq, kb:kb + nk])
                covered[kb:kb + nk] = True
            reach = keep[qa:qa + nq].any(axis=0)
            assert np.array_equal(covered[:reach.nonzero()[0][-1] + 1], reach[:reach.nonzero()[0][-1] + 1])
            assert not covered[reach.nonzero()[0][-1] + 8:].any()


def test_clamps_define_the_passes_for_any_m_and_e():
    """A host's m below a kept score, or E below a kept value exponent, gives a defined answer:
    ``m - t`` and ``E - v_exp`` are clamped at 0 (docs/arithmetic.md section 11)."""
    t = np.array([[300, 100, -50]])
    keep = np.ones((1, 3), bool)
    e = F.exp_terms(t, keep, np.array([100]))
    assert e[0, 0] == e[0, 1] == F.exp2_lut()[0]
    p = np.array([[1000, 1000, 1000]])
    acc = F.weight_acc(p, keep, np.ones((3, 2), np.int64), np.array([5, 0, 0]), np.array([0]))
    assert acc[0, 0] == 3000
    import torch

    from hmtx.model import fixed_torch as T
    tt = torch.as_tensor
    assert torch.equal(T.exp_terms(tt(t), tt(keep), tt(np.array([100]))), tt(e))
    assert torch.equal(T.weight_acc(tt(p), tt(keep), tt(np.ones((3, 2), np.int64)), tt(np.array([5, 0, 0])),
                                    tt(np.array([0]))), tt(acc))


def test_errors_are_bad_arg_and_change_nothing_else():
    rng = np.random.default_rng(SEED)
    g = GoldenDevice(CFG, version=(1, 3))
    q, k, v = rows(rng, 3), rows(rng, 5), rows(rng, 5)
    qw = F.quantize_weight(rng.normal(size=(CFG.d, CFG.d_h)))
    for m in (0, 1):
        for chunk in P.weight_chunks(m, qw):
            assert frame(g, chunk, P.Op.LOAD_WEIGHTS)[0] == P.Status.OK
    assert frame(g, P.pack_vector_cmd(np.full(CFG.d, 3), 0, CFG.d), P.Op.WRITE_MEMORY)[0] == P.Status.OK
    st0 = frame(g, b"", P.Op.STATUS)
    p3 = dict(n_q=3, m=[0] * 3, big_e=[0] * 3, total=[1 << 15] * 3, v_mant=v[0], v_exp=v[1])
    good1 = P.pack_attn_pass(1, *k, q=q, v_exp=v[1])

    def bad(payload, why):
        assert frame(g, payload)[0] == P.Status.BAD_ARG, why
        assert frame(g, b"", P.Op.STATUS) == st0, why

    def flags(payload, f):
        return payload[:2] + bytes([f]) + payload[3:]

    bad(flags(good1, good1[2] | 0x40), "reserved flag bit")
    bad(flags(good1, good1[2] & ~P.ATTN_PASS_MASK)[:-5], "pass 0 (no V exponents: its length)")
    bad(flags(good1, good1[2] | P.ATTN_FIRST), "first in pass 1")
    bad(good1[:3] + (5).to_bytes(2, "little", signed=True) + good1[5:], "diag without causal")
    bad(P.pack_attn_pass(2, *k, n_q=3, m=[0] * 3), "no held Q rows after an error")
    big = P.pack_attn_pass(1, *rows(rng, CFG.max_keys + 1), q=q, v_exp=np.zeros(CFG.max_keys + 1, int))
    bad(big, "n_k above max_keys")
    bad(good1[:-1] + bytes([100]), "V exponent out of range")
    assert frame(g, good1)[0] == P.Status.OK
    bad(P.pack_attn_pass(2, *k, n_q=2, m=[0] * 2), "n_q differs from the held Q rows")
    assert frame(g, good1)[0] == P.Status.OK
    bad(P.pack_attn_pass(3, *k, **p3), "pass 3 continues no open accumulators")
    assert frame(g, good1)[0] == P.Status.OK
    raw = bytearray(P.pack_attn_pass(3, *k, first=True, **p3))
    raw[5 + 4:5 + 9] = b"\0" + (0).to_bytes(4, "little")          # row 0: total 0
    bad(bytes(raw), "total 0")
    raw[5 + 5:5 + 9] = ((1 << 15) - 1).to_bytes(4, "little")       # below the least true sum
    bad(bytes(raw), "total below 2^15")
    # The held Q rows end with any other compute op, e.g. a RECALL.
    assert frame(g, good1)[0] == P.Status.OK
    assert frame(g, b"", P.Op.CYCLES)[0] == P.Status.OK            # read-only ops keep them
    assert frame(g, P.pack_attn_pass(2, *k, n_q=3, m=[0] * 3))[0] == P.Status.OK
    assert frame(g, P.pack_recall_cmd(np.zeros(CFG.d, int), 0, CFG.d, 0), P.Op.RECALL)[0] == P.Status.OK
    bad(P.pack_attn_pass(2, *k, n_q=3, m=[0] * 3), "held Q rows dropped by RECALL")


def test_lane_gateware_has_attn_pass_serial_does_not_and_the_host_says_so():
    from hmtx.hw.top import OPCODES, opcodes
    # each top's opcode decoder knows what its protocol has: the lane engine's 1.3 has ATTN_PASS,
    # the serial engine's 1.2 answers 0x21 BAD_OPCODE
    assert OPCODES["ATTN_PASS"] == P.Op.ATTN_PASS and set(OPCODES.values()) == {int(o) for o in P.Op}
    for contract in (1, 2):
        assert set(opcodes("serial", contract).values()) == {int(o) for o in P.Op} - {P.Op.ATTN_PASS}
        assert P.takes_attn_pass(P.gateware_version("lanes", contract))
        assert not P.takes_attn_pass(P.gateware_version("serial", contract))
    rng = np.random.default_rng(SEED)
    assert GoldenDevice(CFG).version == (1, 3) and GoldenDevice(CFG, "serial").version == (1, 2)
    g = GoldenDevice(CFG, "serial")                         # the serial engine's gateware: 1.2
    q, k, v = rows(rng, 3), rows(rng, 5), rows(rng, 5)
    assert frame(g, P.pack_attn_pass(1, *k, q=q, v_exp=v[1]))[0] == P.Status.BAD_OPCODE
    dev = device(version=(1, 2))
    with pytest.raises(ProtocolError, match="no ATTN_PASS"):
        dev.attn_pass(1, *k, q=q, v_exp=v[1])
    assert dev.status().fill == 0                           # and the link is fine


@pytest.mark.parametrize("offset,what", [(0, "pass 1 m"), (4, "pass 1 E")])
def test_a_wrong_bit_in_a_pass_answer_is_named(offset, what):
    rng = np.random.default_rng(SEED)
    inj = FaultInjector(GoldenTransport(CFG, GoldenDevice(CFG, version=(1, 3))))
    dev = device(transport=inj)
    (q, qe), (k, ke), (v, ve) = rows(rng, 6), rows(rng, 20), rows(rng, 20)
    inj.arm(P.Op.ATTN_PASS, offset, 0)
    with pytest.raises(MismatchError, match=what) as e:
        CheckedAttention(CheckedDevice(dev, CFG)).head(q, qe, k, ke, v, ve, F.causal_mask(6, 20), where="L1 H2")
    assert e.value.mismatch.op == "ATTN_PASS" and "L1 H2 rows 0-3 keys 0-7" in e.value.mismatch.field


class _WrongOutputs(GoldenDevice):
    """Adds 1 to the first output mantissa of every finished pass 3."""

    def _op_attn_pass(self, p, held_q, acc):
        out, cycles = super()._op_attn_pass(p, held_q, acc)
        if len(out) > 5 * CFG.max_queries:
            out = out[:2] + bytes([(out[2] + 1) & 0xFF]) + out[3:]
        return out, cycles


@pytest.fixture(scope="module")
def model():
    return tiny_hmt()


@pytest.fixture(scope="module")
def ids():
    return random_ids(7 * 4 + 1)


def test_run_offloads_heads_on_the_device_and_stays_the_fixed_variant(model, ids):
    res = run_document(model, ids, device(cfg=RUN_CFG), RUN_CFG, 3, fixed_stream=True,
                       offload_attention="1:0,3")
    assert res.mismatch is None and res.error is None
    assert res.nll["hmt_device"] == res.nll["hmt_fixed"]
    assert res.attention_heads > 0 and res.attention_ops >= 3 * res.attention_heads
    plain = run_document(model, ids, device(cfg=RUN_CFG), RUN_CFG, 3)
    # the offloaded heads change the model (int8 Q/K/V): every variant ran them the same way
    assert res.nll["hmt_float"] != plain.nll["hmt_float"]


def test_run_mismatch_in_attention_stops_saves_and_replays(model, ids, tmp_path):
    bad = Device(GoldenTransport(RUN_CFG, _WrongOutputs(RUN_CFG, version=(1, 3))), RUN_CFG)
    case = tmp_path / "case.json"
    res = run_document(model, ids, bad, RUN_CFG, 3, case_path=str(case), offload_attention="0")
    assert res.mismatch is not None and res.mismatch.op == "ATTN_PASS"
    assert "pass 3 output" in res.mismatch.field and res.mismatch.segment == 0
    c = load_case(str(case))
    assert c["ops"][-1]["op"] == "attention"
    replay_case(c, device(cfg=RUN_CFG))                     # a good device passes the case
    with pytest.raises(MismatchError, match="pass 3 output"):
        replay_case(c, Device(GoldenTransport(RUN_CFG, _WrongOutputs(RUN_CFG, version=(1, 3))), RUN_CFG))


def test_run_refuses_offload_on_a_device_without_attn_pass(model, ids):
    with pytest.raises(ValueError, match="ATTN_PASS"):
        run_document(model, ids, device(version=(1, 2), cfg=RUN_CFG), RUN_CFG, 1, offload_attention="1")
    with pytest.raises(ValueError, match="head_dim"):
        cfg = RUN_CFG.with_(head_dim=16)
        run_document(model, ids, device(cfg=cfg), cfg, 1, offload_attention="1")
    with pytest.raises(ValueError, match="outside"):
        run_document(model, ids, device(cfg=RUN_CFG), RUN_CFG, 1, offload_attention="7")


@pytest.mark.slow
def test_hmtx_run_on_the_simulated_smollm_engine_offloads_layer_29(tmp_path):
    """`hmtx run --device sim --offload-attention 29 --segments 2` with its defaults (SmolLM2,
    the shipped checkpoint, the smollm engine's Verilog under Verilator): every head of layer 29
    in the device variant goes through the RTL's ATTN_PASS, each pass's m, E, sums and output rows
    checked against the golden passes; 0 mismatches. The first run builds the smollm bridge model
    (minutes on 2 cores)."""
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "hmtx.host.cli", "run", "--device", "sim", "--offload-attention", "29",
                        "--segments", "2", "--quiet", "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True)
    print(r.stdout, r.stderr[-3000:], sep="\n")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "r.json").read_text())
    assert (s["segments"], s["mismatches"], s["device"], s["offload_attention"]) == (2, 0, "sim", "29")
    assert s["protocol"] == "%d.%d" % P.gateware_version("lanes", 1) and s["trained"]     # the shipped checkpoint
    # the heads really ran on the device: SmolLM2's 9 query heads per backbone pass of the device
    # variant, each in 3 passes over at least one key tile
    assert s["attention_heads"] > 0 and s["attention_heads"] % 9 == 0, s["attention_heads"]
    assert s["attention_ops"] >= 3 * s["attention_heads"]
    assert s["ops_checked"] > s["attention_ops"]               # the recalls, writes and cache reads too


def test_carried_accumulator_is_exact_for_true_rows_and_wraps_mod_2_24():
    # pass 3 carries acc between tiles as three signed bytes (fixed.carry_digits), added back
    # with fixed.CARRY_WEIGHTS: every byte an int8, exact over the range of true accumulators
    x = np.concatenate([np.arange(-(1 << 24) - 300, -(1 << 24) + 300), np.arange(-70000, 70000),
                        np.random.default_rng(SEED).integers(-(1 << 30), 1 << 30, 100000),
                        np.arange((1 << 23) - 300, (1 << 23) + 300)])
    d = F.carry_digits(x)
    assert d.min() >= -128 and d.max() <= 127
    again = sum(w * d[:, i] for i, w in enumerate(F.CARRY_WEIGHTS[:2])) + 2 * F.CARRY_WEIGHTS[2] * d[:, 2]
    assert (again == F.carry_acc(x)).all()
    assert ((F.carry_acc(x) - x) % (1 << 24) == 0).all()
    near = np.abs(x) <= (1 << 23) - (1 << 15)
    assert (F.carry_acc(x)[near] == x[near]).all()
    assert not (F.carry_acc(x) == x).all()          # outside the range it does wrap
