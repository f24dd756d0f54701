"""ATTN_PASS (protocol 1.3 / 2.2) at the top, byte for byte against the golden device: the lane
engine's top has it, the serial engine's answers 0x21 BAD_OPCODE (1.2 / 2.1).

``test_top_attn_pass_errors_*`` and the version tests need only the frame parser, the command
processor and the response generator (no frame is accepted); ``test_top_attn_pass_session``
runs the engine's three passes (golden_device.attn_pass_session)."""

import numpy as np
import pytest

from hmtx.model import protocol as P
from hmtx.model.configs import CONFIGS, EngineConfig
from hmtx.model.golden_device import GoldenDevice, attn_pass_errors, attn_pass_session
from hwsim import rng
from hwtop import run_against_golden

ODD = EngineConfig("odd20", d=20, d_h=12, n_slots=3, lanes=8, head_dim=12, max_queries=3, max_keys=5)
# 32 lanes: the row writes' lanes span four groups of 8; one query row per tile is not enough for
# every rule (max_queries 2)
WIDE = EngineConfig("wide32", d=40, d_h=20, n_slots=2, lanes=32, head_dim=20, max_queries=2, max_keys=3)


def statuses(results):
    return {label: P.FrameDecoder().feed(want)[0].body[0] for label, want, _ in results if want}


def test_versions_per_engine():
    from hmtx.hw.top import OPCODES, HmtxTop, opcodes

    assert P.GATEWARE_VERSIONS == {"lanes": {1: (1, 3), 2: (2, 2)}, "serial": {1: (1, 2), 2: (2, 1)}}
    for contract in (1, 2):
        assert P.gateware_version("lanes", contract) == P.VERSIONS[contract]
        assert "ATTN_PASS" in opcodes("lanes", contract) and "ATTN_PASS" not in opcodes("serial", contract)
        for engine in ("lanes", "serial"):
            top = HmtxTop(CONFIGS["tiny"], engine=engine, contract=contract)
            assert top.version == P.gateware_version(engine, contract)
            assert GoldenDevice(CONFIGS["tiny"], engine, contract).version == top.version
    assert OPCODES == opcodes("lanes", 1) and set(OPCODES.values()) == {int(o) for o in P.Op}
    with pytest.raises(ValueError, match="unknown engine"):
        P.gateware_version("wide")


@pytest.mark.parametrize("config,engine", [(CONFIGS["tiny"], "lanes"), (ODD, "lanes"), (CONFIGS["tiny"], "serial")],
                         ids=lambda v: v if isinstance(v, str) else v.name)
def test_top_attn_pass_errors(config, engine):
    """Every BAD_ARG rule, BAD_LENGTH and BAD_CRC of ATTN_PASS with no state held (the serial
    engine: BAD_OPCODE), each followed by STATUS, and INFO's version."""
    r = rng(40)
    steps = [("info", P.encode_command(P.Op.INFO))] + attn_pass_errors(config, r.randrange(1 << 30))
    results = run_against_golden(config, steps, r, engine=engine)
    st = statuses(results)
    info = P.unpack_info(P.decode_response(P.FrameDecoder().feed(results[0][2])[0]).payload)
    assert info.version == P.gateware_version(engine, 1)
    if engine == "serial":
        assert st["n_q 0"] == st["pass 3 sum 0x0"] == st["body of 6 bytes"] == P.Status.BAD_OPCODE
    else:
        assert st["n_q 0"] == st["pass 3 sum 0x7fff"] == st["pass 0"] == P.Status.BAD_ARG
        assert st["one byte short"] == st["body of 6 bytes"] == P.Status.BAD_LENGTH
    assert st["bad crc"] == P.Status.BAD_CRC


@pytest.mark.parametrize("config,engine,contract", [(CONFIGS["tiny"], "lanes", 1), (ODD, "lanes", 1), (WIDE, "lanes", 1),
                                                    (CONFIGS["tiny"], "lanes", 2), (CONFIGS["tiny"], "serial", 1),
                                                    (CONFIGS["tiny"], "serial", 2)],
                         ids=lambda v: v if isinstance(v, str) else f"c{v}" if isinstance(v, int) else v.name)
def test_top_attn_pass_session(config, engine, contract):
    """golden_device.attn_pass_session: the three passes of a causal head over three key tiles,
    the state rules, every error (the serial engine answers each ATTN_PASS BAD_OPCODE)."""
    r = rng(41)
    results = run_against_golden(config, attn_pass_session(config, r.randrange(1 << 30)), r, engine=engine,
                                 contract=contract)
    st = statuses(results)
    want = P.Status.BAD_OPCODE if engine == "serial" else P.Status.OK
    assert st["pass 1, full tile"] == st["pass 3 last"] == st["pass 3 tile 0"] == want
    assert st["pass 3 first and last, sum 0x1ffffff"] == st["pass 3 first and last, sum 0x8000"] == want
    # CYCLES counts an ATTN_PASS as it counts the other compute ops (the serial engine's: the last
    # op it ran, none here)
    rtl = {label: got for label, _, got in results}
    cyc = P.unpack_cycles(P.decode_response(P.FrameDecoder().feed(rtl["cycles after pass 2 tile 1"])[0]).payload)
    assert (cyc.last_op, cyc.last > 0) == ((0, False) if engine == "serial" else (P.Op.ATTN_PASS, True))
    assert st["pass 3 continuing after pass 1"] == (P.Status.BAD_OPCODE if engine == "serial" else P.Status.BAD_ARG)


def test_pass3_last_is_attention_bytes():
    """Pass 3's last answer has ATTENTION's format: what the response generator sends for both."""
    g = np.random.default_rng(3)
    out, oe = g.integers(-(1 << 15), 1 << 15, (3, 5)), g.integers(-64, 64, 3)
    assert P.pack_attn_pass_rsp(3, out_mant=out, out_exp=oe) == P.pack_attention_rsp(out, oe)


def test_top_frame_fuzz_with_attn_pass():
    """tests/frame_fuzz.py's stream (with its stateless ATTN_PASS frames, good and out of range,
    and every malformed kind but overlong) through the lane engine's top: byte for byte."""
    from frame_fuzz import FrameFuzzer

    c = CONFIGS["tiny"]
    r = rng(42)
    fz = FrameFuzzer(c, np.random.default_rng(r.randrange(1 << 30)), GoldenDevice(c), overlong=False)
    steps, rest = [], b""
    for i in range(400):
        kind, raw = fz.next()
        if kind == "good":
            fz.shadow.feed(raw)
        # one frame per step (run_against_golden sends a step's bytes before it reads: a second
        # frame would wait for the first one's answer); bytes after the last END go with the next
        *frames, rest = (rest + raw).split(bytes([P.END]))
        steps += [(f"fuzz {i} {kind} frame {j}: {f[:16].hex(' ')}", f + bytes([P.END])) for j, f in enumerate(frames)]
    results = run_against_golden(c, steps, r)
    assert sum(raw[:1] == bytes([P.Op.ATTN_PASS]) for _, raw in steps) > 5
    assert any(want[:2] == bytes([P.Status.OK, P.Op.ATTN_PASS]) for _, want, _ in results)
