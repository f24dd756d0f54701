"""The wire protocol (docs/protocol.md) and the golden device that defines its behaviour."""

import os
import struct

import numpy as np
import pytest

from device_testlib import ok, responses, xact
from hmtx.model import fixed
from hmtx.model import protocol as P
from hmtx.model.configs import get_config
from hmtx.model.golden_device import GoldenDevice, example_session

from hmtx.model.protocol import Op, Status

SEED = int(os.environ.get("HMTX_SEED", "1234"))
CFG = get_config("tiny")


@pytest.fixture(autouse=True)
def _print_seed():
    # Shown with the output of a failing test: rerun with HMTX_SEED=<this> to reproduce.
    print(f"HMTX_SEED={SEED}")


# --- helpers (responses, xact, ok: tests/device_testlib.py) --------------------------------------
def status_of(dev, raw: bytes) -> int:
    (r,) = responses(dev.feed(raw))
    assert r.payload == b""
    return r.status


def weights(rng, cfg=CFG):
    return [fixed.quantize_weight(rng.normal(size=(cfg.d, cfg.d_h))) for _ in range(2)]


def loaded_device(rng, cfg=CFG, chunk=P.LOAD_CHUNK):
    dev = GoldenDevice(cfg)
    qws = weights(rng, cfg)
    for i, qw in enumerate(qws):
        for p in P.weight_chunks(i, qw, chunk):
            ok(dev, Op.LOAD_WEIGHTS, p)
    return dev, qws


def vec(rng, d=CFG.d):
    m, e = fixed.quantize_bfp(rng.normal(size=d) * 4)
    return m, int(e)


def snapshot(dev) -> tuple:
    """Everything observable through the protocol except the cycle counters."""
    st = ok(dev, Op.STATUS)
    slots = tuple(ok(dev, Op.READ_SLOT, P.pack_read_slot(s)) for s in range(P.unpack_status(st).fill))
    return st, slots


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


# --- CRC and framing ---------------------------------------------------------------------------
def test_crc8_check_value_and_residue():
    assert P.crc8(b"123456789") == 0xF4          # CRC-8/SMBUS catalogue check value
    for body in (b"\x01", b"\xc0\xdb\x00\xff" * 7, bytes(range(256))):
        assert P.crc8(body + bytes([P.crc8(body)])) == 0


def test_slip_round_trip_with_special_bytes():
    body = bytes([0xC0, 0xDB, 0xDC, 0xDD, 0x00, 0xC0, 0xC0, 0xDB])
    wire = P.slip_escape(body)
    assert wire.count(P.END) == 1 and wire[-1] == P.END
    assert P.FrameDecoder().feed(wire) == [P.Frame(body)]
    # Byte by byte gives the same frame; empty frames vanish.
    dec = P.FrameDecoder()
    frames = [f for b in b"\xc0\xc0" + wire for f in dec.feed(bytes([b]))]
    assert frames == [P.Frame(body)]


def test_decoder_escape_and_overlong_errors():
    dec = P.FrameDecoder(max_body=4)
    assert dec.feed(b"\x01\xdb\x00\x02\xdb\xc0") == [P.Frame(b"\x01", "escape")]
    assert dec.feed(b"\xdb\xc0") == [P.Frame(b"", "escape")]
    assert dec.feed(b"\x01\x02\x03\x04\x05\x06\xc0") == [P.Frame(b"\x01\x02\x03\x04", "overlong")]
    assert dec.feed(b"\x07\xc0") == [P.Frame(b"\x07")]


def test_response_decode_errors():
    good = P.encode_response(Status.OK, Op.INFO, b"abc")
    assert responses(good)[0] == P.Response(0, Op.INFO, b"abc")
    bad_crc = bytearray(good)
    bad_crc[2] ^= 1
    with pytest.raises(P.ProtocolError, match="CRC"):
        responses(bytes(bad_crc))
    with pytest.raises(P.ProtocolError, match="too short"):
        responses(P.slip_escape(b"\x00\x00"))
    with pytest.raises(P.ProtocolError, match="framing"):
        responses(b"\x00\xdb\x01\xc0")


def test_pack_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="mantissas"):
        P.pack_bfp8(np.array([1, -128]), 0)
    with pytest.raises(ValueError, match="exponent"):
        P.pack_bfp8(np.array([1, 2]), 64)
    with pytest.raises(ValueError, match="expected 3 mantissas"):
        P.pack_bfp8(np.array([1, 2]), 0, 3)
    with pytest.raises(ValueError, match="matrix"):
        P.pack_load_weights(2, 0, 0, 0, np.zeros((1, 8), np.int64))
    with pytest.raises(ValueError, match="opcode"):
        P.encode_command(256)
    with pytest.raises(ValueError, match="MAX_BODY"):
        P.encode_command(Op.LOAD_WEIGHTS, bytes(P.MAX_BODY))


# --- every opcode -------------------------------------------------------------------------------
def test_info_matches_config():
    dev = GoldenDevice(CFG)
    info = P.unpack_info(ok(dev, Op.INFO))
    assert info.version == P.VERSION and info.mismatches(CFG) == []
    assert (info.d, info.d_h, info.n_slots, info.lanes) == (24, 8, 4, 4)
    assert info.mismatches(get_config("up5k"))


def test_info_names_the_engine_kind():
    for engine in P.ENGINES:
        info = P.unpack_info(ok(GoldenDevice(CFG, engine), Op.INFO))
        assert info.engine == engine and info.capabilities & 3 == 3
    assert P.Info.for_config(CFG, "serial").capabilities == 0b0111
    # a 1.0 device does not say; a code this host does not know is an error that names it
    old = P.Info.for_config(CFG, "serial")
    assert P.unpack_info(P.pack_info(old.__class__(**{**old.__dict__, "version": (1, 0)}))).engine is None
    with pytest.raises(P.ProtocolError, match="engine code 3"):
        P.unpack_info(P.pack_info(old.__class__(**{**old.__dict__, "capabilities": 0b1111}))).engine
    with pytest.raises(ValueError, match="unknown engine 'wide'"):
        GoldenDevice(CFG, "wide")


def test_fresh_status_and_cycles():
    dev = GoldenDevice(CFG)
    assert P.unpack_status(ok(dev, Op.STATUS)) == P.CacheStatus(0, 0, 0, 0, 0)
    assert P.unpack_cycles(ok(dev, Op.CYCLES)) == P.Cycles(0, 0, 0)


def test_load_write_read_recall_match_fixed(rng):
    dev, (qw_q, qw_k) = loaded_device(rng, chunk=40)        # 5 rows per chunk: 5 chunks each
    st = P.unpack_status(ok(dev, Op.STATUS))
    assert (st.wq_loaded, st.wk_loaded, st.q_rows, st.k_rows) == (True, True, CFG.d, CFG.d)
    mems = [vec(rng) for _ in range(CFG.n_slots + 2)]
    for i, (m, e) in enumerate(mems):
        slot, fill = P.unpack_write(ok(dev, Op.WRITE_MEMORY, P.pack_vector_cmd(m, e, CFG.d)))
        assert (slot, fill) == (i % CFG.n_slots, min(i + 1, CFG.n_slots))
    # Ring: slot s holds the newest memory written there.
    held = {i % CFG.n_slots: mems[i] for i in range(len(mems))}
    km, ke = [], []
    for s in range(CFG.n_slots):
        m, me, k, kexp = P.unpack_slot(ok(dev, Op.READ_SLOT, P.pack_read_slot(s)), CFG.d, CFG.d_h)
        want_k, want_ke = fixed.project(qw_k, held[s][0][None, :], np.array([held[s][1]]))
        assert np.array_equal(m, held[s][0]) and me == held[s][1]
        assert np.array_equal(k, want_k[0]) and kexp == want_ke[0]
        km.append(k)
        ke.append(kexp)
    s_m, s_e = vec(rng)
    p, pe, probs = P.unpack_recall(ok(dev, Op.RECALL, P.pack_vector_cmd(s_m, s_e, CFG.d)), CFG.d)
    mm = np.stack([held[s][0] for s in range(CFG.n_slots)])
    me = np.array([held[s][1] for s in range(CFG.n_slots)])
    wp, wpe, wprobs = fixed.recall(qw_q, s_m, s_e, np.stack(km), np.array(ke), mm, me)
    assert np.array_equal(p, wp) and pe == wpe and np.array_equal(probs, wprobs)
    cyc = P.unpack_cycles(ok(dev, Op.CYCLES))
    n = CFG.n_slots
    assert cyc.last_op == Op.RECALL and cyc.last == -(-(CFG.d * CFG.d_h + n * CFG.d_h + n * CFG.d) // CFG.lanes)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_fixed(rng, causal):
    dev = GoldenDevice(CFG)
    n_q, n_k, hd = 3, 5, CFG.head_dim
    q, qe = fixed.quantize_bfp(rng.normal(size=(n_q, hd)))
    k, ke = fixed.quantize_bfp(rng.normal(size=(n_k, hd)))
    v, ve = fixed.quantize_bfp(rng.normal(size=(n_k, hd)))
    payload = P.pack_attention(q, qe, k, ke, v, ve, causal)
    out, oe = P.unpack_attention(ok(dev, Op.ATTENTION, payload), n_q, hd)
    want, want_e, _ = fixed.attend(q, qe, k, ke, v, ve, fixed.causal_mask(n_q, n_k) if causal else None)
    assert np.array_equal(out, want) and np.array_equal(oe, want_e)


def test_reset_cache_keeps_weights(rng):
    dev, _ = loaded_device(rng)
    ok(dev, Op.WRITE_MEMORY, P.pack_vector_cmd(*vec(rng), CFG.d))
    ok(dev, Op.RESET_CACHE)
    assert P.unpack_status(ok(dev, Op.STATUS)) == P.CacheStatus(0, 0, 3, CFG.d, CFG.d)


# --- every error code -------------------------------------------------------------------------
def cmd_body(op, payload=b"") -> bytes:
    body = bytes([op]) + payload
    return body + bytes([P.crc8(body)])


def test_bad_frame_cases():
    dev = GoldenDevice(CFG)
    assert responses(dev.feed(b"\x02\xdb\x41\x03\xc0")) == [P.Response(Status.BAD_FRAME, 0x02, b"")]
    assert responses(dev.feed(b"\xdb\xc0")) == [P.Response(Status.BAD_FRAME, 0x00, b"")]
    assert responses(dev.feed(b"\x02\xc0")) == [P.Response(Status.BAD_FRAME, 0x02, b"")]  # 1-byte body
    overlong = P.slip_escape(bytes(P.MAX_BODY + 1))
    assert status_of(dev, overlong) == Status.BAD_FRAME
    assert dev.feed(b"\xc0\xc0\xc0") == b""                                               # empty frames


def test_bad_crc_opcode_length():
    dev = GoldenDevice(CFG)
    body = bytearray(cmd_body(Op.STATUS))
    body[-1] ^= 0x10
    assert status_of(dev, P.slip_escape(bytes(body))) == Status.BAD_CRC
    assert status_of(dev, P.slip_escape(cmd_body(0x7E))) == Status.BAD_OPCODE
    assert status_of(dev, P.encode_command(Op.STATUS, b"\x00")) == Status.BAD_LENGTH
    assert status_of(dev, P.encode_command(Op.WRITE_MEMORY, bytes(CFG.d))) == Status.BAD_LENGTH
    # RECALL takes S_n with or without the flags byte (1.2): d + 3 or d + 4 bytes of body, no other
    assert status_of(dev, P.encode_command(Op.RECALL, bytes(CFG.d))) == Status.BAD_LENGTH
    assert status_of(dev, P.encode_command(Op.RECALL, bytes(CFG.d + 3))) == Status.BAD_LENGTH
    assert status_of(dev, P.encode_command(Op.WRITE_MEMORY, bytes(CFG.d + 2))) == Status.BAD_LENGTH
    assert status_of(dev, P.encode_command(Op.READ_SLOT, b"\x00")) == Status.BAD_LENGTH
    assert status_of(dev, P.encode_command(Op.LOAD_WEIGHTS, bytes(6))) == Status.BAD_LENGTH
    lw = P.pack_load_weights(0, 0, 0, 0, np.ones((2, CFG.d_h), np.int64))
    assert status_of(dev, P.encode_command(Op.LOAD_WEIGHTS, lw[:-1])) == Status.BAD_LENGTH
    assert status_of(dev, P.encode_command(Op.ATTENTION, b"\x01\x01")) == Status.BAD_LENGTH
    assert status_of(dev, P.encode_command(Op.ATTENTION, b"\x01\x01\x00" + bytes(3 * (CFG.head_dim + 1) - 1))) \
        == Status.BAD_LENGTH
    # CRC is checked before the opcode, the opcode before the length.
    bad = bytearray(cmd_body(0x7E, b"\x00\x00"))
    bad[-1] ^= 1
    assert status_of(dev, P.slip_escape(bytes(bad))) == Status.BAD_CRC


def test_bad_arg_cases(rng):
    dev, _ = loaded_device(rng)
    d, dh, hd = CFG.d, CFG.d_h, CFG.head_dim
    bad_mant = bytes([0]) + bytes([0x80]) + bytes(d - 1)
    bad_exp = struct.pack("<b", 64) + bytes(d)
    for op in (Op.WRITE_MEMORY, Op.RECALL):
        assert status_of(dev, P.encode_command(op, bad_mant)) == Status.BAD_ARG
        assert status_of(dev, P.encode_command(op, bad_exp)) == Status.BAD_ARG
    one_row = bytes(dh)

    def lw(matrix, exp, shift, off, rows, data=None):
        return P.encode_command(Op.LOAD_WEIGHTS, struct.pack("<BbBHH", matrix, exp, shift, off, rows)
                                + (data if data is not None else one_row * rows))
    for raw in (lw(2, 0, 0, 0, 1), lw(0, -65, 0, 0, 1), lw(0, 0, 32, 0, 1), lw(0, 0, 0, 0, 0),
                lw(0, 0, 0, d - 1, 2), lw(0, 0, 0, 3, 1), lw(0, 0, 0, 0, 1, b"\x80" + bytes(dh - 1))):
        assert status_of(dev, raw) == Status.BAD_ARG
    # A later chunk must repeat the exponent and shift of row 0.
    ok(dev, Op.LOAD_WEIGHTS, struct.pack("<BbBHH", 1, 3, 2, 0, 1) + one_row)
    assert status_of(dev, lw(1, 4, 2, 1, 1)) == Status.BAD_ARG

    def att(n_q, n_k, flags, rows=None, first=b"\x00"):
        n = n_q + 2 * n_k if rows is None else rows
        return P.encode_command(Op.ATTENTION, bytes([n_q, n_k, flags]) + first + bytes((hd + 1) * n - 1))
    for raw in (att(0, 1, 0), att(CFG.max_queries + 1, 1, 0), att(1, 0, 0), att(1, CFG.max_keys + 1, 0),
                att(1, 1, 2), att(3, 2, 1), att(1, 1, 0, first=b"\x40")):
        assert status_of(dev, raw) == Status.BAD_ARG


def test_state_errors(rng):
    dev = GoldenDevice(CFG)
    v = P.pack_vector_cmd(*vec(rng), CFG.d)
    assert status_of(dev, P.encode_command(Op.WRITE_MEMORY, v)) == Status.NO_WEIGHTS
    assert status_of(dev, P.encode_command(Op.RECALL, v)) == Status.NO_WEIGHTS
    assert status_of(dev, P.encode_command(Op.READ_SLOT, P.pack_read_slot(0))) == Status.SLOT_RANGE
    qw_q, qw_k = weights(rng)
    for p in P.weight_chunks(1, qw_k):
        ok(dev, Op.LOAD_WEIGHTS, p)
    ok(dev, Op.WRITE_MEMORY, v)
    assert status_of(dev, P.encode_command(Op.RECALL, v)) == Status.NO_WEIGHTS     # W_q still missing
    for p in P.weight_chunks(0, qw_q):
        ok(dev, Op.LOAD_WEIGHTS, p)
    ok(dev, Op.RESET_CACHE)
    assert status_of(dev, P.encode_command(Op.RECALL, v)) == Status.EMPTY_CACHE
    ok(dev, Op.WRITE_MEMORY, v)
    ok(dev, Op.READ_SLOT, P.pack_read_slot(0))
    assert status_of(dev, P.encode_command(Op.READ_SLOT, P.pack_read_slot(1))) == Status.SLOT_RANGE


def test_partial_weights_are_not_loaded(rng):
    dev = GoldenDevice(CFG)
    qw_q, _ = weights(rng)
    chunks = P.weight_chunks(0, qw_q, chunk=CFG.d_h * 4)
    for p in chunks[:-1]:
        ok(dev, Op.LOAD_WEIGHTS, p)
    assert not P.unpack_status(ok(dev, Op.STATUS)).wq_loaded
    ok(dev, Op.LOAD_WEIGHTS, chunks[-1])
    assert P.unpack_status(ok(dev, Op.STATUS)).wq_loaded


@pytest.mark.parametrize("damage", ["crc", "length", "escape", "arg"])
def test_failed_weight_chunk_invalidates_only_its_matrix(rng, damage):
    dev, _ = loaded_device(rng)
    good = P.pack_load_weights(1, 0, 0, 0, np.ones((1, CFG.d_h), np.int64))
    if damage == "crc":
        body = bytearray(cmd_body(Op.LOAD_WEIGHTS, good))
        body[9] ^= 4
        raw = P.slip_escape(bytes(body))
    elif damage == "length":
        raw = P.encode_command(Op.LOAD_WEIGHTS, good + b"\x00")
    elif damage == "escape":
        raw = P.encode_command(Op.LOAD_WEIGHTS, good)[:-4] + b"\xdb\x00\xc0"
    else:
        raw = P.encode_command(Op.LOAD_WEIGHTS, good[:7] + b"\x80" + good[8:])
    assert status_of(dev, raw) != Status.OK
    st = P.unpack_status(ok(dev, Op.STATUS))
    assert (st.wq_loaded, st.wk_loaded, st.k_rows) == (True, False, 0)


def test_failed_commands_change_nothing(rng):
    dev, _ = loaded_device(rng)
    for _ in range(3):
        ok(dev, Op.WRITE_MEMORY, P.pack_vector_cmd(*vec(rng), CFG.d))
    before = snapshot(dev)
    cyc = ok(dev, Op.CYCLES)
    v = P.pack_vector_cmd(*vec(rng), CFG.d)
    wire = P.encode_command(Op.WRITE_MEMORY, v)
    for raw in (wire[:-3] + b"\xc0",                                  # truncated
                wire[:5] + b"\x00" + wire[6:],                        # corrupted
                P.encode_command(Op.WRITE_MEMORY, v + b"\x00"),      # overlong for the opcode
                P.encode_command(Op.RESET_CACHE, b"\x00"),
                P.encode_command(Op.RECALL, v[:-1] + b"\x80")):
        assert status_of(dev, raw) != Status.OK
    assert snapshot(dev) == before
    assert ok(dev, Op.CYCLES) == cyc


# --- RECALL's flags byte: the probabilities on request (protocol 1.2 / 2.1) -----------------------
def _filled(rng, contract=1, version=None, n=3):
    dev = GoldenDevice(CFG, contract=contract, version=version)
    qws = weights(rng)
    for i, qw in enumerate(qws):
        for p in P.weight_chunks(i, qw):
            ok(dev, Op.LOAD_WEIGHTS, p)
    for _ in range(n):
        ok(dev, Op.WRITE_MEMORY, P.pack_vector_cmd(*vec(rng), CFG.d))
    return dev


def test_versions_with_recall_flags():
    assert [P.takes_recall_flags(v) for v in ((1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (3, 0))] == \
        [False, False, True, True, False, True, False]
    assert P.recall_lengths(CFG.d) == (CFG.d + 3, CFG.d + 4) and P.recall_lengths(CFG.d, (2, 0)) == (CFG.d + 3,)
    for version in ((1, 4), (1, -1), (2, 3), (3, 0)):
        with pytest.raises(ValueError):
            GoldenDevice(CFG, contract=version[0] if version[0] in (1, 2) else 1, version=version)
    with pytest.raises(ValueError, match="not a version of contract 1"):
        P.Info.for_config(CFG, contract=1, version=(2, 1))
    assert P.unpack_info(ok(GoldenDevice(CFG, version=(1, 1)), Op.INFO)).version == (1, 1)


@pytest.mark.parametrize("contract", [1, 2])
def test_recall_flags_select_the_probabilities(rng, contract):
    dev = _filled(rng, contract)
    s_m, s_e = vec(rng)
    plain = ok(dev, Op.RECALL, P.pack_vector_cmd(s_m, s_e, CFG.d))            # 1.1's frame: all of it
    cyc = P.unpack_cycles(ok(dev, Op.CYCLES))
    with_p = ok(dev, Op.RECALL, P.pack_recall_cmd(s_m, s_e, CFG.d, P.RECALL_PROBS))
    without = ok(dev, Op.RECALL, P.pack_recall_cmd(s_m, s_e, CFG.d, 0))
    after = P.unpack_cycles(ok(dev, Op.CYCLES))                  # the same computation either way
    assert (after.last, after.last_op, after.total) == (cyc.last, Op.RECALL, cyc.total + 2 * cyc.last)
    assert with_p == plain and len(plain) == P.recall_response_length(CFG.d, 3) == 4 + 2 * CFG.d + 6
    assert without == plain[:4 + 2 * CFG.d] and len(without) == P.recall_response_length(CFG.d, 3, False)
    p, pe, probs = a = P.unpack_recall(plain, CFG.d)
    q, qe, none = b = P.unpack_recall(without, CFG.d, probabilities=False)
    assert np.array_equal(p, q) and pe == qe and none is None and probs.shape == (3,) and a.n == b.n == 3
    assert P.pack_recall(p, pe, None, 3) == without and P.pack_recall(p, pe, probs) == plain
    # what was asked for must be what came
    with pytest.raises(P.ProtocolError, match="probabilities not asked for"):
        P.unpack_recall(plain, CFG.d, probabilities=False)
    with pytest.raises(P.ProtocolError, match="probabilities asked for"):
        P.unpack_recall(without, CFG.d)
    with pytest.raises(ValueError, match="n must be given"):
        P.pack_recall(p, pe, None)
    with pytest.raises(ValueError, match="RECALL flags"):
        P.pack_recall_cmd(s_m, s_e, CFG.d, 2)


@pytest.mark.parametrize("contract", [1, 2])
def test_recall_flags_errors_in_the_documented_order(rng, contract):
    s = P.pack_vector_cmd(*vec(rng), CFG.d)
    bad_vec = s[:2] + b"\x80" + s[3:]
    fresh = GoldenDevice(CFG, contract=contract)
    empty = _filled(rng, contract, n=0)
    dev = _filled(rng, contract)
    for bit in range(1, 8):                                # every reserved bit: BAD_ARG
        assert status_of(dev, P.encode_command(Op.RECALL, s + bytes([1 << bit]))) == Status.BAD_ARG
        assert status_of(dev, P.encode_command(Op.RECALL, s + bytes([1 << bit | 1]))) == Status.BAD_ARG
    # BAD_LENGTH before BAD_ARG; BAD_ARG (vector or flags) before NO_WEIGHTS and EMPTY_CACHE
    assert status_of(dev, P.encode_command(Op.RECALL, s + b"\xff\x00")) == Status.BAD_LENGTH
    assert status_of(dev, P.encode_command(Op.RECALL, bad_vec + b"\xff\x00")) == Status.BAD_LENGTH
    assert status_of(dev, P.encode_command(Op.RECALL, bad_vec + b"\x00")) == Status.BAD_ARG
    assert status_of(dev, P.encode_command(Op.WRITE_MEMORY, s + b"\x00")) == Status.BAD_LENGTH
    for target in (fresh, empty):
        assert status_of(target, P.encode_command(Op.RECALL, s + b"\x02")) == Status.BAD_ARG
    no_weights = Status.NO_WEIGHTS if contract == 1 else Status.EMPTY_CACHE   # (2.x: never NO_WEIGHTS)
    assert status_of(fresh, P.encode_command(Op.RECALL, s + b"\x00")) == no_weights
    assert status_of(empty, P.encode_command(Op.RECALL, s + b"\x01")) == Status.EMPTY_CACHE
    # A bad CRC over a flagged frame is BAD_CRC; failed RECALLs change nothing
    body = bytearray(cmd_body(Op.RECALL, s + b"\x00"))
    body[-2] ^= 0x02                                       # a reserved flag bit, and the CRC broken by it
    before, cyc = snapshot(dev), ok(dev, Op.CYCLES)
    assert status_of(dev, P.slip_escape(bytes(body))) == Status.BAD_CRC
    assert snapshot(dev) == before and ok(dev, Op.CYCLES) == cyc


@pytest.mark.parametrize("contract,old", [(1, (1, 1)), (2, (2, 0))])
def test_older_minor_and_older_hosts_meet_what_they_know(contract, old):
    """A 1.2 (2.1) device answers every frame an older host sends exactly as a 1.1 (2.0) device
    does, INFO's minor aside; a 1.1 (2.0) device refuses the flagged RECALL with BAD_LENGTH."""
    new, prev = GoldenDevice(CFG, contract=contract), GoldenDevice(CFG, contract=contract, version=old)
    flagged = 0
    for label, raw in example_session(CFG, seed=SEED):
        a, b = responses(new.feed(raw)), responses(prev.feed(raw))
        frames = P.FrameDecoder().feed(raw)
        for f, x, y in zip(frames, a, b, strict=True):
            is_flagged = (not f.error and f.body[:1] == bytes([Op.RECALL]) and len(f.body) == CFG.d + 4
                          and P.crc8(f.body) == 0)
            if is_flagged:
                flagged += 1
                assert (y.status, y.payload) == (Status.BAD_LENGTH, b""), label
            elif x.op == Op.INFO and x.status == Status.OK:
                assert P.unpack_info(x.payload).version == P.gateware_version("lanes", contract), label
                assert P.unpack_info(y.payload).version == old, label
                assert x.payload[:2] + x.payload[4:] == y.payload[:2] + y.payload[4:], label
            else:
                assert x == y, label
    assert flagged > 5


# --- resynchronization and fuzz -----------------------------------------------------------
def test_resync_after_garbage_and_truncation(rng):
    dev = GoldenDevice(CFG)
    info = P.encode_command(Op.INFO)
    # Garbage without END produces nothing yet; its END ends it with exactly one error.
    assert dev.feed(bytes(rng.integers(0, 0xC0, 50, dtype=np.uint8))) == b""
    rs = responses(dev.feed(b"\xc0" + info))
    assert len(rs) == 2 and rs[0].status != Status.OK
    assert (rs[1].status, rs[1].op) == (Status.OK, Op.INFO)
    # A frame cut short: the next frame's bytes join it, one error, then back in sync.
    write = P.encode_command(Op.WRITE_MEMORY, P.pack_vector_cmd(*vec(rng), CFG.d))
    rs = responses(dev.feed(write[:10] + info + info))
    assert len(rs) == 2 and rs[0].status in (Status.BAD_CRC, Status.BAD_LENGTH)
    assert (rs[1].status, rs[1].op) == (Status.OK, Op.INFO)


def test_fuzz_random_bytes_and_mutations():
    """Random mutations of valid traffic: the device answers one frame per non-empty frame,
    never raises, and its state changes only through OK responses (and failed LOAD_WEIGHTS
    frames, which a twin device is shown too)."""
    seed = SEED
    dev, _ = loaded_device(np.random.default_rng(seed))
    twin, _ = loaded_device(np.random.default_rng(seed))
    r = np.random.default_rng(seed + 1)
    cmds = [P.encode_command(Op.WRITE_MEMORY, P.pack_vector_cmd(*vec(r), CFG.d)) for _ in range(4)]
    cmds += [P.encode_command(Op.RECALL, P.pack_vector_cmd(*vec(r), CFG.d)),
             P.encode_command(Op.READ_SLOT, P.pack_read_slot(1)), P.encode_command(Op.STATUS),
             P.encode_command(Op.RESET_CACHE), P.encode_command(Op.INFO)]
    for it in range(300):
        where = f"seed {seed} (HMTX_SEED) iteration {it}"
        raw = bytearray(cmds[r.integers(len(cmds))])
        kind = r.integers(4)
        if kind == 0:
            raw[r.integers(len(raw) - 1)] = r.integers(256)
        elif kind == 1:
            del raw[r.integers(len(raw) - 1)]
        elif kind == 2:
            raw = bytearray(r.integers(0, 256, r.integers(1, 40), dtype=np.uint8).tobytes()) + b"\xc0"
        frames = P.FrameDecoder().feed(bytes(raw))
        got = responses(dev.feed(bytes(raw)))
        assert len(got) == len(frames), f"{where}: {len(got)} responses for {len(frames)} frames"
        for f, resp in zip(frames, got):
            if resp.status == Status.OK or f.body[:1] == bytes([Op.LOAD_WEIGHTS]):
                want = twin.feed(bytes(raw) if f.error else P.slip_escape(f.body))
                assert want == P.encode_response(resp.status, resp.op, resp.payload), where
        assert dev.feed(P.encode_command(Op.STATUS)) == twin.feed(P.encode_command(Op.STATUS)), \
            f"{where}: state diverged after {bytes(raw).hex()}"


def test_doc_table_lengths():
    """The numbers printed in docs/protocol.md section 6."""
    for name, write, read, recall, bare in (("tiny", 27, 46, 63, 55), ("smollm", 579, 1094, 1287, 1159),
                                            ("up5k", 67, 134, 167, 135)):
        c = get_config(name)
        assert (c.d + 3, 3 + 3 + c.d + 2 * c.d_h, 3 + 4 + 2 * c.d + 2 * c.n_slots) == (write, read, recall)
        # RECALL with flags 0 (1.2): P_n and n only; the command one byte longer
        assert 3 + P.recall_response_length(c.d, c.n_slots, False) == bare
        assert P.recall_lengths(c.d) == (write, write + 1)
