"""HmtxTop byte for byte against the golden device: command sequences that wrap the ring, and
every malformed-command case followed by a command that still works."""

import struct

import numpy as np
import pytest

from hmtx.model import fixed
from hmtx.model import protocol as P
from hmtx.model.configs import CONFIGS, EngineConfig
from hwsim import rng
from hwtop import run_against_golden

ODD = EngineConfig("odd20", d=20, d_h=12, n_slots=3, lanes=8, head_dim=12, max_queries=3, max_keys=5)
# 32 lanes: the response generator's lane select spans four groups of 8 (two for 16-lane key words)
WIDE = EngineConfig("wide32", d=40, d_h=20, n_slots=2, lanes=32, head_dim=20, max_queries=2, max_keys=3)
Op = P.Op


def cmd(op, payload=b""):
    return P.encode_command(op, payload)


def weights(g, c):
    return [fixed.quantize_weight(g.normal(0, 1.5 / np.sqrt(c.d), (c.d, c.d_h))) for _ in range(2)]


def vec(g, n):
    m, e = fixed.quantize_bfp(g.normal(0, 1, n) * 2.0 ** g.integers(-2, 3))
    return m, int(e)


def load_steps(c, qws, rows_per_chunk):
    steps = []
    for n, qw in enumerate(qws):
        for k, payload in enumerate(P.weight_chunks(n, qw, chunk=rows_per_chunk * c.d_h)):
            steps.append((f"load W{'qk'[n]} chunk {k}", cmd(Op.LOAD_WEIGHTS, payload)))
    return steps


@pytest.mark.parametrize("config,engine", [(CONFIGS["tiny"], "lanes"), (ODD, "lanes"), (WIDE, "lanes"),
                                           (CONFIGS["tiny"], "serial"), (ODD, "serial"), (WIDE, "serial")],
                         ids=lambda v: v if isinstance(v, str) else v.name)
def test_top_sequence_matches_golden(config, engine):
    r = rng(30)
    g = np.random.default_rng(r.randrange(1 << 30))
    c = config
    steps = [("leading END", bytes([P.END])), ("info", cmd(Op.INFO)), ("status", cmd(Op.STATUS)),
             ("recall before weights", cmd(Op.RECALL, P.pack_vector_cmd(*vec(g, c.d), c.d)))]
    steps += load_steps(c, weights(g, c), rows_per_chunk=7)
    steps.append(("status loaded", cmd(Op.STATUS)))
    for n in range(c.n_slots + 2):                  # wraps the ring
        steps.append((f"write {n}", cmd(Op.WRITE_MEMORY, P.pack_vector_cmd(*vec(g, c.d), c.d))))
        # RECALL in turn without the flags byte, without the probabilities, with them (1.2)
        flags = (None, 0, P.RECALL_PROBS)[n % 3]
        steps.append((f"recall {n}", cmd(Op.RECALL, P.pack_recall_cmd(*vec(g, c.d), c.d, flags))))
    steps += [(f"read slot {s}", cmd(Op.READ_SLOT, P.pack_read_slot(s))) for s in range(c.n_slots)]
    for causal, nq, nk in ((False, c.max_queries, c.max_keys), (True, 2, 3), (True, 1, 1)):
        rows = [vec(g, c.head_dim) for _ in range(nq + 2 * nk)]
        m = np.stack([x[0] for x in rows])
        e = np.array([x[1] for x in rows])
        payload = P.pack_attention(m[:nq], e[:nq], m[nq:nq + nk], e[nq:nq + nk], m[nq + nk:], e[nq + nk:], causal)
        steps.append((f"attention causal={causal} {nq}x{nk}", cmd(Op.ATTENTION, payload)))
    steps += [("cycles", cmd(Op.CYCLES)), ("reset", cmd(Op.RESET_CACHE)), ("status after reset", cmd(Op.STATUS)),
              ("recall on empty cache", cmd(Op.RECALL, P.pack_vector_cmd(*vec(g, c.d), c.d)))]
    results = run_against_golden(c, steps, r, engine=engine)
    status = {label: P.FrameDecoder().feed(want)[0].body[0] for label, want, _ in results if want}
    assert all(status[f"recall {n}"] == P.Status.OK for n in range(c.n_slots + 2))
    # without the probabilities the answer is P_n and n: status, op, 2 + 2d, 2, crc
    bodies = {label: P.FrameDecoder().feed(want)[0].body for label, want, _ in results if want}
    assert [len(bodies[f"recall {n}"]) == 7 + 2 * c.d for n in range(c.n_slots + 2)] == \
        [n % 3 == 1 for n in range(c.n_slots + 2)]
    assert status["recall before weights"] == P.Status.NO_WEIGHTS
    assert status["recall on empty cache"] == P.Status.EMPTY_CACHE
    # CYCLES: counts are implementation-defined, but they must describe the last compute op
    rtl = {label: got for label, _, got in results}
    total, last, last_op = struct.unpack("<QIB", P.FrameDecoder().feed(rtl["cycles"])[0].body[2:-1])
    assert last_op == P.Op.ATTENTION and 0 < last < total


def test_top_malformed_commands_then_recovery():
    r = rng(31)
    g = np.random.default_rng(r.randrange(1 << 30))
    c = CONFIGS["tiny"]
    good_vec = P.pack_vector_cmd(*vec(g, c.d), c.d)
    steps = load_steps(c, weights(g, c), rows_per_chunk=c.d)
    steps += [("write 0", cmd(Op.WRITE_MEMORY, good_vec))]
    bad_body = bytes([Op.RECALL]) + good_vec
    bad_mant = bytearray(good_vec)
    bad_mant[3] = 0x80
    bad_exp = bytearray(good_vec)
    bad_exp[0] = 64
    follow = ("recall works", cmd(Op.RECALL, P.pack_vector_cmd(*vec(g, c.d), c.d)))
    cases = [
        ("unknown opcode", cmd(0x7E, b"")),
        ("bad length", cmd(Op.WRITE_MEMORY, good_vec[:-1])),
        ("bad length info", cmd(Op.INFO, b"\x00")),
        ("slot out of range", cmd(Op.READ_SLOT, P.pack_read_slot(1))),
        ("slot far out of range", cmd(Op.READ_SLOT, P.pack_read_slot(300))),
        ("bad crc", P.slip_escape(bad_body + bytes([P.crc8(bad_body) ^ 1]))),
        ("truncated frame", P.encode_command(Op.WRITE_MEMORY, good_vec)[:10] + bytes([P.END])),
        ("escape error", bytes([Op.INFO, P.ESC, 0x11, 0x22, P.END])),
        ("one-byte body", bytes([Op.INFO, P.END])),
        ("mantissa -128", cmd(Op.WRITE_MEMORY, bytes(bad_mant))),
        ("exponent 64", cmd(Op.RECALL, bytes(bad_exp))),
        ("recall flag bit 1", cmd(Op.RECALL, good_vec + b"\x02")),
        ("recall flag bit 7 with PROBS", cmd(Op.RECALL, good_vec + b"\x81")),
        ("recall flags and a bad mantissa", cmd(Op.RECALL, bytes(bad_mant) + b"\x01")),
        ("recall two bytes too long", cmd(Op.RECALL, good_vec + b"\x00\x00")),
        ("write with a flags byte", cmd(Op.WRITE_MEMORY, good_vec + b"\x00")),
        ("recall without probabilities", cmd(Op.RECALL, good_vec + b"\x00")),
        # a flags byte that is END or ESC travels escaped
        ("recall flags 0xC0", cmd(Op.RECALL, good_vec + b"\xc0")),
        ("attention too many queries", cmd(Op.ATTENTION, bytes([c.max_queries + 1, 1, 0]) +
                                           bytes((c.max_queries + 3) * (1 + c.head_dim)))),
        ("attention causal nq > nk", cmd(Op.ATTENTION, bytes([2, 1, 1]) + bytes(4 * (1 + c.head_dim)))),
        ("load bad matrix", cmd(Op.LOAD_WEIGHTS, bytes([2, 0, 0, 0, 0, 1, 0]) + bytes(c.d_h))),
    ]
    steps += [x for case in cases for x in (case, follow)]
    steps += [("read slot 0 intact", cmd(Op.READ_SLOT, P.pack_read_slot(0))), ("status", cmd(Op.STATUS))]
    # a failed chunk invalidates W_q: recall then answers NO_WEIGHTS, write still works
    steps += [("load W_q bad row_offset", cmd(Op.LOAD_WEIGHTS, bytes([0, 0, 0, 5, 0, 1, 0]) + bytes(c.d_h))),
              ("recall without W_q", follow[1]), ("write with W_k", cmd(Op.WRITE_MEMORY, good_vec)),
              ("status", cmd(Op.STATUS))]
    results = run_against_golden(c, steps, r)
    statuses = {label: P.FrameDecoder().feed(want)[0].body[0] for label, want, _ in results}
    assert statuses["unknown opcode"] == P.Status.BAD_OPCODE
    assert statuses["bad crc"] == P.Status.BAD_CRC
    assert statuses["slot out of range"] == P.Status.SLOT_RANGE
    assert statuses["recall without W_q"] == P.Status.NO_WEIGHTS
    assert statuses["recall works"] == P.Status.OK
    assert [statuses[k] for k in ("recall flag bit 1", "recall flag bit 7 with PROBS", "recall flags and a bad mantissa",
                                  "recall two bytes too long", "write with a flags byte", "recall without probabilities",
                                  "recall flags 0xC0")] == \
        [P.Status.BAD_ARG, P.Status.BAD_ARG, P.Status.BAD_ARG, P.Status.BAD_LENGTH, P.Status.BAD_LENGTH, P.Status.OK,
         P.Status.BAD_ARG]


@pytest.mark.parametrize("engine", ["lanes", "serial"])
def test_top_answers_frames_sent_back_to_back(engine):
    # a host may send its next frames before reading an answer: the device answers each in turn
    # while the later ones queue behind the UART's backpressure
    r = rng(33)
    g = np.random.default_rng(r.randrange(1 << 30))
    c = CONFIGS["tiny"]
    steps = load_steps(c, weights(g, c), rows_per_chunk=c.d)
    batch = b"".join([cmd(Op.WRITE_MEMORY, P.pack_vector_cmd(*vec(g, c.d), c.d)),
                      cmd(Op.RECALL, P.pack_recall_cmd(*vec(g, c.d), c.d, P.RECALL_PROBS)),
                      cmd(Op.READ_SLOT, P.pack_read_slot(0)), cmd(Op.READ_SLOT, P.pack_read_slot(9)),
                      cmd(Op.STATUS), cmd(Op.INFO)])
    steps.append(("six frames in one step", batch))
    label, want, got = run_against_golden(c, steps, r, engine=engine)[-1]
    answers = P.FrameDecoder().feed(got)
    assert len(answers) == 6 and got == want
    assert [a.body[0] for a in answers[:4]] == [P.Status.OK, P.Status.OK, P.Status.OK, P.Status.SLOT_RANGE]


@pytest.mark.slow
def test_top_overlong_frame_then_recovery():
    # MAX_BODY + 1 body bytes: BAD_FRAME at END, then the device answers normally again
    r = rng(32)
    c = CONFIGS["tiny"]
    overlong = bytes([Op.INFO]) + bytes(P.MAX_BODY) + bytes([P.END])
    run_against_golden(c, [("overlong", overlong), ("info", cmd(Op.INFO)), ("status", cmd(Op.STATUS))],
                       r, gap=0.0, stall=0.0)


def test_top_engine_choice():
    from hmtx.hw.engine import Engine
    from hmtx.hw.top import HmtxTop

    top = HmtxTop(CONFIGS["tiny"])
    assert top.engine_kind == "lanes" and isinstance(top.engine, Engine)
    with pytest.raises(ValueError, match=r"unknown engine 'wide'; choose one of lanes, serial"):
        HmtxTop(CONFIGS["tiny"], engine="wide")


# The top's own latency, with the host always ready (tiny config): a command byte is taken
# every two cycles; the first response byte comes this many cycles after the END is taken (plus
# the engine's cycles, as CYCLES reports them, for the ops that run it); the response takes this
# many cycles from its first byte to its END. Bounds: the parts may get faster, not slower.
LATENCY = {"info": (7, 64), "status": (7, 23), "load": (8, 5), "write": (7, 13), "recall": (7, 451),
           "read_slot": (7, 315), "cycles": (7, 31), "reset": (8, 5), "bad crc": (6, 5), "attention": (7, 302)}
LATENCY_SERIAL = {"recall": (7, 355), "read_slot": (7, 251), "attention": (7, 238)}


@pytest.mark.parametrize("engine", ["lanes", "serial"])
def test_top_latency(engine):
    from amaranth.sim import Simulator

    from hmtx.hw.top import HmtxTop

    c = CONFIGS["tiny"]
    g = np.random.default_rng(rng(33).randrange(1 << 30))
    rows = [vec(g, c.head_dim) for _ in range(4)]
    m, e = np.stack([x[0] for x in rows]), np.array([x[1] for x in rows])
    steps = [("info", cmd(Op.INFO)), ("status", cmd(Op.STATUS))]
    steps += [("load", raw) for _, raw in load_steps(c, weights(g, c), rows_per_chunk=c.d)]
    steps += [("write", cmd(Op.WRITE_MEMORY, P.pack_vector_cmd(*vec(g, c.d), c.d))), ("cycles", cmd(Op.CYCLES)),
              ("recall", cmd(Op.RECALL, P.pack_vector_cmd(*vec(g, c.d), c.d))), ("cycles", cmd(Op.CYCLES)),
              ("read_slot", cmd(Op.READ_SLOT, P.pack_read_slot(0))), ("reset", cmd(Op.RESET_CACHE)),
              ("bad crc", cmd(Op.INFO)[:-2] + bytes([0x55, P.END])),
              ("attention", cmd(Op.ATTENTION, P.pack_attention(m[:2], e[:2], m[2:3], e[2:3], m[3:], e[3:]))),
              ("cycles", cmd(Op.CYCLES))]
    dut = HmtxTop(c, engine=engine)
    got = []

    async def tb(ctx):
        ctx.set(dut.rsp.ready, 1)
        cyc = 0
        for label, raw in steps:
            taken = []
            for b in raw:
                ctx.set(dut.cmd.valid, 1)
                ctx.set(dut.cmd.payload, b)
                while True:
                    _, _, ready = await ctx.tick().sample(dut.cmd.ready)
                    cyc += 1
                    if ready:
                        break
                taken.append(cyc)
            ctx.set(dut.cmd.valid, 0)
            rsp, first = bytearray(), None
            while not rsp.endswith(bytes([P.END])):
                _, _, valid, data = await ctx.tick().sample(dut.rsp.valid, dut.rsp.payload)
                cyc += 1
                if valid:
                    first = first or cyc
                    rsp.append(data)
            got.append((label, max(np.diff(taken)), first - taken[-1], cyc - first, bytes(rsp)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    bounds = LATENCY | (LATENCY_SERIAL if engine == "serial" else {})
    for k, (label, gap, first, length, rsp) in enumerate(got):
        assert gap <= 2, (label, gap)
        if label in ("write", "recall", "attention"):
            cycles = P.unpack_cycles(P.decode_response(P.FrameDecoder().feed(got[k + 1][4])[0]).payload)
            first -= cycles.last
        assert first <= bounds[label][0] and length <= bounds[label][1], (label, first, length)


def test_wire_enums_are_the_protocols():
    from hmtx.hw.top import OPCODES, STATUS
    from hmtx.hw.wire import Header, Opcode, Status

    # every opcode of the protocol; the lane engine's top decodes them all (1.3), the serial
    # engine's all but ATTN_PASS (1.2: tests/test_hw_top_attn_pass.py)
    assert {op.name: op.value for op in Opcode} == OPCODES == {op.name: int(op) for op in P.Op}
    assert OPCODES == {op.name: int(op) for op in P.ops_of(P.gateware_version("lanes", 1))}
    assert {st.name: st.value for st in Status} == STATUS == {st.name: int(st) for st in P.Status}
    assert Opcode.as_shape().width == Status.as_shape().width == 8
    # the LOAD_WEIGHTS header as model/protocol packs it, read through the layout
    from amaranth.lib import data

    raw = P.pack_load_weights(1, -5, 7, 300, np.zeros((2, 3), dtype=np.int64))[:7]
    hdr = data.Const(Header, int.from_bytes(raw, "little"))
    w = hdr.weights
    assert (w.matrix, w.exp, w.shift, w.row_offset, w.rows) == (1, -5, 7, 300, 2)
    att = data.Const(Header, int.from_bytes(bytes([3, 4, 1]), "little")).attention
    assert (att.n_q, att.n_k, att.flags.causal, att.flags.reserved) == (3, 4, 1, 0)
    assert data.Const(Header, int.from_bytes(P.pack_read_slot(513), "little")).read_slot.slot == 513
