"""cocotb tests of the generated hmtx engine (hmtx.hw.top.HmtxTop) against the golden device.

Every command goes through the SLIP/CRC wire protocol (docs/protocol.md) and every response is
compared byte for byte with :class:`hmtx.model.golden_device.GoldenDevice` — except CYCLES, whose
counts are implementation-defined (status, opcode and length are still compared).

Environment: HMTX_CONFIG names the configuration (model/configs.py; set by the pytest entry,
which also builds the matching Verilog); HMTX_ENGINE says which engine that Verilog has (lanes,
default, or serial: it only scales the cycle counts the tests wait); HMTX_CONTRACT the arithmetic
contract it was built for (1, default, or 2: the golden device computes the same); HMTX_SOAK_OPS (default
500), HMTX_FUZZ_CASES (default 40), HMTX_WRAPS (ring wraps in ``ring``, default 3) and
HMTX_RESET_TRIALS (default 6) size the random tests.
"""

import os
import random

import cocotb
import numpy as np

from hmtx.model import fixed
from hmtx.model import protocol as P
from hmtx.model.configs import get_config
from hmtx.model.golden_device import GoldenDevice, attn_pass_session, example_session
from hmtx.sim.coverage import Coverage
from hmtx.sim.scoreboard import Scoreboard
from hmtx.sim.tb import STALL_PATTERNS, TB, test_seed

CONFIG = get_config(os.environ.get("HMTX_CONFIG", "tiny"))
ENGINE = os.environ.get("HMTX_ENGINE", "lanes")
CONTRACT = int(os.environ.get("HMTX_CONTRACT", "1"))
# Products per cycle the engine computes: P lanes, or the serial engine's one multiplier (a
# RECALL at up5k takes ~12,000 cycles there); the waits below scale with 1 / this.
MACS_PER_CYCLE = 1 if ENGINE == "serial" else max(1, CONFIG.lanes)
# the opcodes of this gateware's protocol (the serial engine's 1.2 / 2.1 has no ATTN_PASS: BAD_OPCODE
# there; the golden device of ENGINE speaks the same version)
GATEWARE_OPS = P.ops_of(P.gateware_version(ENGINE, CONTRACT))
OPS = [op.name for op in GATEWARE_OPS] + ["MALFORMED"]
CACHE_STATES = ["empty", "partial", "full"]


def _out(name: str) -> str | None:
    out = os.environ.get("HMTX_SIM_OUT")
    return os.path.join(out, name) if out else None


class Harness:
    """TB + golden device + scoreboard + coverage: one method per wire transaction."""

    def __init__(self, tb: TB, golden: GoldenDevice, cov: Coverage):
        self.tb, self.golden, self.cov = tb, golden, cov
        self.sb = Scoreboard(tb.log)
        c = golden.config
        # Watchdog: the slowest legal command (a full-size frame plus the longest compute and
        # response) takes well under this many cycles.
        # (contract 2's WRITE projects and folds: 2 d d_h products)
        self.timeout = 20 * (P.MAX_BODY // 8 + 2 * c.d * c.d_h + c.n_slots * (c.d + c.d_h)) // MACS_PER_CYCLE + 200_000

    def cache_state(self) -> str:
        g = self.golden
        return "empty" if g.fill == 0 else "full" if g.ring.full else "partial"

    async def wire(self, label: str, data: bytes) -> bytes:
        """Send raw wire bytes; read and check every response frame they are owed."""
        op_name = _op_of(data)
        self.cov.sample(op=op_name, cache=self.cache_state(), stall=self.tb.stalls)
        expected = self.golden.feed(data)
        self.tb.send(data)
        actual = b""
        for _ in range(expected.count(P.END)):
            actual += await self.tb.recv_until(P.END, self.timeout)
        if op_name == "CYCLES" and expected[:2] == bytes([P.Status.OK, P.Op.CYCLES]):
            # Implementation-defined counts: compare the frame's shape, not its numbers.
            exp_rsp = P.decode_response(P.FrameDecoder().feed(expected)[0])
            act_rsp = P.decode_response(P.FrameDecoder().feed(actual)[0])
            assert (act_rsp.status, act_rsp.op, len(act_rsp.payload)) == (exp_rsp.status, exp_rsp.op, len(exp_rsp.payload)), \
                f"{label}: CYCLES response {act_rsp} does not have the shape of {exp_rsp}"
            self.sb.checked += 1
        else:
            self.sb.compare(label, expected, actual)
        return actual

    async def cmd(self, label: str, op: P.Op, payload: bytes = b"") -> bytes:
        return await self.wire(label, P.encode_command(op, payload))

    async def load_weights(self, rng: np.random.Generator, scales=(0.05, 0.3), chunk: int = P.LOAD_CHUNK):
        c = self.golden.config
        for i, s in enumerate(scales):
            qw = fixed.quantize_weight(rng.normal(size=(c.d, c.d_h)) * s)
            for j, p in enumerate(P.weight_chunks(i, qw, chunk)):
                await self.cmd(f"load matrix {i} chunk {j}", P.Op.LOAD_WEIGHTS, p)


def _op_of(data: bytes) -> str:
    """Opcode name of the first frame in ``data`` (MALFORMED when it is not a clean command)."""
    frames = P.FrameDecoder().feed(data)
    if not frames or frames[0].error or len(frames[0].body) < 2 or P.crc8(frames[0].body) != 0:
        return "MALFORMED"
    try:
        return P.Op(frames[0].body[0]).name
    except ValueError:
        return "MALFORMED"


def vector(rng: np.random.Generator, n: int, kind: str = "rand"):
    if kind == "max":
        return np.full(n, 127), fixed.EXP_MAX
    if kind == "min":
        return np.full(n, -127), fixed.EXP_MIN
    if kind == "zero":
        return np.zeros(n, np.int64), 0
    m, e = fixed.quantize_bfp(rng.standard_t(3, size=n) * 2.0 ** int(rng.integers(-6, 6)))
    return m, int(e)


def attention_payload(rng: np.random.Generator, n_q: int, n_k: int, causal: bool) -> bytes:
    c = CONFIG
    q, qe = fixed.quantize_bfp(rng.normal(size=(n_q, c.head_dim)))
    k, ke = fixed.quantize_bfp(rng.normal(size=(n_k, c.head_dim)) * 3)
    v, ve = fixed.quantize_bfp(rng.normal(size=(n_k, c.head_dim)) * rng.uniform(0.01, 100, size=(n_k, 1)))
    return P.pack_attention(q, qe, k, ke, v, ve, causal)


def new_coverage() -> Coverage:
    return Coverage(f"hmtx-{CONFIG.name}", op=OPS, cache=CACHE_STATES, stall=list(STALL_PATTERNS))


def save_coverage(cov: Coverage, name: str) -> None:
    if path := _out(f"coverage-{name}.json"):
        with open(path, "w") as f:
            f.write(cov.to_json())


async def start(dut, stalls: str, salt: int) -> Harness:
    tb = TB(dut, stalls=stalls, seed=test_seed() + salt)
    await tb.reset()
    # A reset leaves the device as at power-up (golden: a fresh model); a leading END flushes
    # nothing and must not be answered.
    h = Harness(tb, GoldenDevice(CONFIG, ENGINE, CONTRACT), new_coverage())
    await h.wire("leading END", bytes([P.END]))
    return h


@cocotb.test()
@cocotb.parametrize(stalls=[cocotb.Param("none", "none"), cocotb.Param("both", "both")])
async def session(dut, stalls):
    """golden_device.example_session: every opcode and every status, chunked weight loads with a
    damaged chunk, a ring that wraps, a recall after every write, every slot read back, extreme
    vectors, attention tiles at their largest, malformed frames each followed by a valid one."""
    h = await start(dut, stalls, salt=0)
    for label, data in example_session(CONFIG, seed=test_seed() % 2**32):
        await h.wire(label, data)
    await h.tb.expect_silence(64)
    h.tb.log.info(f"{h.sb.summary()}\n{h.cov.summary()}")
    save_coverage(h.cov, f"session-{stalls}")


@cocotb.test()
@cocotb.parametrize(stalls=[cocotb.Param("none", "none"), cocotb.Param("both", "both")])
async def attn_pass(dut, stalls):
    """golden_device.attn_pass_session: ATTN_PASS's three passes over a causal head's key tiles
    (true m, E and sums; rows that keep no key of a tile), the read-only frames that keep the held
    Q rows and open accumulators, every frame kind that drops them, and every error."""
    h = await start(dut, stalls, salt=8)
    for label, data in attn_pass_session(CONFIG, seed=test_seed() % 2**32):
        await h.wire(label, data)
    await h.tb.expect_silence(64)
    h.tb.log.info(f"{h.sb.summary()}\n{h.cov.summary()}")
    save_coverage(h.cov, f"attn_pass-{stalls}")


@cocotb.test()
async def smoke(dut):
    """What needs no weights (a weight load of a large config is long): INFO, STATUS, NO_WEIGHTS,
    SLOT_RANGE, attention tiles at full size, CYCLES and a few malformed frames."""
    h = await start(dut, "both", salt=6)
    nrng = np.random.default_rng(test_seed() ^ 0x5E0)
    rng = random.Random(test_seed() ^ 0x5E0)
    c = CONFIG
    await h.cmd("info", P.Op.INFO)
    await h.cmd("status", P.Op.STATUS)
    await h.cmd("write without weights", P.Op.WRITE_MEMORY, P.pack_vector_cmd(*vector(nrng, c.d), c.d))
    await h.cmd("read slot 0 of an empty cache", P.Op.READ_SLOT, P.pack_read_slot(0))
    for causal in (False, True):
        await h.cmd(f"attention {c.max_queries}x{c.max_keys} causal={causal}", P.Op.ATTENTION,
                    attention_payload(nrng, c.max_queries, c.max_keys, causal))
    await h.cmd("cycles", P.Op.CYCLES)
    for kind in ("bad_crc", "bad_opcode", "escape_error", "undersized_length"):
        await h.wire(kind, fuzz_frame(rng, kind, nrng))
    await h.cmd("status at the end", P.Op.STATUS)
    await h.tb.expect_silence(64)
    h.tb.log.info(h.sb.summary())


@cocotb.test()
async def ring(dut):
    """Weights, then memory writes wrapping the N-slot ring HMTX_WRAPS times with a recall after
    each, slot read-back (all valid slots and one past fill), and random attention tiles."""
    h = await start(dut, "both", salt=1)
    rng = np.random.default_rng(test_seed() ^ 0x121)
    c = CONFIG
    await h.cmd("recall before weights", P.Op.RECALL, P.pack_vector_cmd(*vector(rng, c.d), c.d))
    await h.load_weights(rng)
    wraps = float(os.environ.get("HMTX_WRAPS", "3"))
    writes = int(wraps * c.n_slots) + 1
    for i in range(writes):
        kind = ["rand", "max", "min", "zero"][i % 4] if i < 4 else "rand"
        await h.cmd(f"write {i} ({kind})", P.Op.WRITE_MEMORY, P.pack_vector_cmd(*vector(rng, c.d, kind), c.d))
        if i % max(1, c.n_slots // 8) == 0 or i == writes - 1:
            await h.cmd(f"recall after write {i}", P.Op.RECALL, P.pack_vector_cmd(*vector(rng, c.d), c.d))
        if i == c.n_slots // 2:
            for s in (0, i, i + 1):
                await h.cmd(f"read slot {s} at fill {h.golden.fill}", P.Op.READ_SLOT, P.pack_read_slot(s))
    for s in range(c.n_slots):
        await h.cmd(f"read slot {s}", P.Op.READ_SLOT, P.pack_read_slot(s))
    await h.cmd("status", P.Op.STATUS)
    for t in range(4):
        n_q, n_k = int(rng.integers(1, c.max_queries + 1)), int(rng.integers(1, c.max_keys + 1))
        causal = bool(rng.integers(2)) and n_q <= n_k
        await h.cmd(f"attention {n_q}x{n_k} causal={causal}", P.Op.ATTENTION, attention_payload(rng, n_q, n_k, causal))
    await h.tb.expect_silence(64)
    h.tb.log.info(f"{h.sb.summary()}\n{h.cov.summary()}")
    save_coverage(h.cov, "ring")


@cocotb.test()
async def weights_order(dut):
    """Which weights each op needs -- where the contracts differ: W_k alone lets contract 1 write
    but not contract 2 (which folds W_q into the key); a W_q invalidated by a failed load stops
    contract 1's recall but not contract 2's (which never reads it)."""
    h = await start(dut, "both", salt=7)
    rng = np.random.default_rng(test_seed() ^ 0x3E7)
    c = CONFIG
    qws = [fixed.quantize_weight(rng.normal(size=(c.d, c.d_h)) * s) for s in (0.05, 0.3)]
    some = lambda: P.pack_vector_cmd(*vector(rng, c.d), c.d)    # noqa: E731
    for j, p in enumerate(P.weight_chunks(1, qws[1])):
        await h.cmd(f"load W_k chunk {j}", P.Op.LOAD_WEIGHTS, p)
    await h.cmd("write with W_k only", P.Op.WRITE_MEMORY, some())
    await h.cmd("recall with W_k only", P.Op.RECALL, some())
    for j, p in enumerate(P.weight_chunks(0, qws[0])):
        await h.cmd(f"load W_q chunk {j}", P.Op.LOAD_WEIGHTS, p)
    for i in range(3):
        await h.cmd(f"write {i} with both", P.Op.WRITE_MEMORY, some())
    await h.cmd("read slot 1", P.Op.READ_SLOT, P.pack_read_slot(1))
    # a LOAD_WEIGHTS of W_q that fails (exponent out of range) invalidates W_q
    bad = bytearray(P.weight_chunks(0, qws[0])[0])
    bad[1] = (fixed.EXP_MAX + 1) & 0xFF
    await h.cmd("failed W_q load", P.Op.LOAD_WEIGHTS, bytes(bad))
    await h.cmd("status after the failed load", P.Op.STATUS)
    await h.cmd("recall with W_q invalid", P.Op.RECALL, some())
    await h.cmd("write with W_q invalid", P.Op.WRITE_MEMORY, some())
    await h.cmd("read slot 2", P.Op.READ_SLOT, P.pack_read_slot(2))
    await h.tb.expect_silence(64)
    h.tb.log.info(h.sb.summary())
    assert h.sb.checked >= 12, h.sb.summary()


@cocotb.test()
async def reset_mid_operation(dut):
    """Reset asserted at a random point of a command (receiving, computing, answering): no stale
    byte comes out, the device reports power-up state, and a reload and commands work."""
    h = await start(dut, "both", salt=2)
    rng = np.random.default_rng(test_seed() ^ 0x2E5)
    prng = random.Random(test_seed() ^ 0x2E5)
    c = CONFIG
    for trial in range(int(os.environ.get("HMTX_RESET_TRIALS", "6"))):
        await h.load_weights(rng)
        for i in range(2):
            await h.cmd(f"write {i}", P.Op.WRITE_MEMORY, P.pack_vector_cmd(*vector(rng, c.d), c.d))
        victim = prng.choice([
            P.encode_command(P.Op.RECALL, P.pack_vector_cmd(*vector(rng, c.d), c.d)),
            P.encode_command(P.Op.WRITE_MEMORY, P.pack_vector_cmd(*vector(rng, c.d), c.d)),
            P.encode_command(P.Op.READ_SLOT, P.pack_read_slot(0)),
            P.encode_command(P.Op.ATTENTION, attention_payload(rng, c.max_queries, c.max_keys, False)),
        ])
        h.tb.send(victim)
        await h.tb.cycles(prng.randint(0, len(victim) + 4 * c.d * c.d_h // MACS_PER_CYCLE))
        await h.tb.reset()
        h.golden = GoldenDevice(CONFIG, ENGINE, CONTRACT)
        await h.tb.expect_silence(16)
        await h.cmd(f"status after reset {trial}", P.Op.STATUS)
        await h.cmd(f"info after reset {trial}", P.Op.INFO)
        await h.cmd(f"write without weights after reset {trial}", P.Op.WRITE_MEMORY,
                    P.pack_vector_cmd(*vector(rng, c.d), c.d))
    await h.load_weights(rng)
    await h.cmd("write after resets", P.Op.WRITE_MEMORY, P.pack_vector_cmd(*vector(rng, c.d), c.d))
    await h.cmd("recall after resets", P.Op.RECALL, P.pack_vector_cmd(*vector(rng, c.d), c.d))
    h.tb.log.info(h.sb.summary())


FUZZ_KINDS = ["bad_opcode", "bad_crc", "truncated", "oversized_length", "undersized_length", "slot_range",
              "bad_arg", "escape_error", "overlong_garbage", "random_bytes", "empty_frames"]


def fuzz_frame(rng: random.Random, kind: str, nrng: np.random.Generator) -> bytes:
    c = CONFIG

    def body_with_crc(body: bytes) -> bytes:
        return P.slip_escape(body + bytes([P.crc8(body)]))
    vec = P.pack_vector_cmd(*vector(nrng, c.d), c.d)
    if kind == "bad_opcode":
        valid = {int(o) for o in GATEWARE_OPS}
        op = rng.choice([x for x in range(256) if x not in valid and x not in (P.END, P.ESC)])
        return body_with_crc(bytes([op]) + rng.randbytes(rng.randint(0, 8)))
    if kind == "bad_crc":
        body = bytearray([rng.choice(list(GATEWARE_OPS))]) + vec
        return P.slip_escape(bytes(body) + bytes([P.crc8(body) ^ rng.randint(1, 255)]))
    if kind == "truncated":
        # A frame cut short on the wire, then the host's recovery END.
        full = P.encode_command(P.Op.WRITE_MEMORY, vec)
        return full[:rng.randint(1, len(full) - 2)] + bytes([P.END])
    if kind == "oversized_length":
        op = rng.choice([P.Op.STATUS, P.Op.READ_SLOT, P.Op.WRITE_MEMORY, P.Op.RECALL])
        return body_with_crc(bytes([op]) + vec + rng.randbytes(rng.randint(1, 9)))
    if kind == "undersized_length":
        op = rng.choice([P.Op.WRITE_MEMORY, P.Op.RECALL, P.Op.LOAD_WEIGHTS, P.Op.ATTENTION, P.Op.READ_SLOT])
        return body_with_crc(bytes([op]) + vec[:rng.randint(0, 3)])
    if kind == "slot_range":
        return P.encode_command(P.Op.READ_SLOT, P.pack_read_slot(rng.choice([c.n_slots, c.n_slots + 1, 0xFFFF,
                                                                           rng.randint(0, c.n_slots)])))
    if kind == "bad_arg":
        bad = bytearray(vec)
        if rng.random() < 0.5:
            bad[1 + rng.randrange(c.d)] = 0x80      # mantissa -128
        else:
            bad[0] = rng.choice([0x40, 0xBF])       # exponent 64 / -65
        return P.encode_command(rng.choice([P.Op.WRITE_MEMORY, P.Op.RECALL]), bytes(bad))
    if kind == "escape_error":
        return bytes([P.Op.INFO, P.ESC, rng.choice([0x00, 0x01, P.ESC, 0x7F]), 0x33, P.END])
    if kind == "overlong_garbage":
        n = rng.randint(1, 4 * c.d)
        return bytes(rng.randrange(0, P.END) for _ in range(n)) + bytes([P.END])
    if kind == "random_bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + bytes([P.END])
    if kind == "empty_frames":
        return bytes([P.END] * rng.randint(1, 4))
    raise ValueError(f"unknown fuzz kind {kind!r}")


@cocotb.test()
@cocotb.parametrize(stalls=[cocotb.Param("none", "none"), cocotb.Param("both", "both")])
async def fuzz(dut, stalls):
    """Malformed frames: each gets the documented error (golden), never a hang, and the next valid
    command succeeds with the cache intact (slot read-back and STATUS after every case)."""
    h = await start(dut, stalls, salt=3)
    rng = random.Random(test_seed() ^ 0xF22)
    nrng = np.random.default_rng(test_seed() ^ 0xF22)
    c = CONFIG
    await h.load_weights(nrng)
    for i in range(min(c.n_slots, 3)):
        await h.cmd(f"write {i}", P.Op.WRITE_MEMORY, P.pack_vector_cmd(*vector(nrng, c.d), c.d))
    kinds = Coverage("fuzz", kind=FUZZ_KINDS)
    n_cases = int(os.environ.get("HMTX_FUZZ_CASES", "40"))
    for case in range(n_cases):
        kind = FUZZ_KINDS[case % len(FUZZ_KINDS)] if case < len(FUZZ_KINDS) else rng.choice(FUZZ_KINDS)
        data = fuzz_frame(rng, kind, nrng)
        await h.wire(f"fuzz {case} {kind}: {data[:24].hex(' ')}…", data)
        kinds.sample(kind=kind)
        await h.cmd(f"read slot 0 after fuzz {case}", P.Op.READ_SLOT, P.pack_read_slot(0))
        await h.cmd(f"status after fuzz {case}", P.Op.STATUS)
    await h.tb.expect_silence(64)
    h.tb.log.info(f"{h.sb.summary()}\n{kinds.summary()}\n{h.cov.summary()}")
    save_coverage(h.cov, f"fuzz-{stalls}")


@cocotb.test()
async def soak(dut):
    """HMTX_SOAK_OPS random operations (valid and malformed), the stall pattern changing every
    block; functional coverage op × cache state × stall pattern is printed and saved."""
    h = await start(dut, "none", salt=4)
    rng = random.Random(test_seed() ^ 0x50A)
    nrng = np.random.default_rng(test_seed() ^ 0x50A)
    c = CONFIG
    n_ops = int(os.environ.get("HMTX_SOAK_OPS", "500"))
    patterns = list(STALL_PATTERNS)
    # RESET_CACHE often enough that every opcode also meets an empty and a partly filled cache.
    weights = [("WRITE_MEMORY", 6), ("RECALL", 5), ("READ_SLOT", 4), ("STATUS", 1.5), ("INFO", 1), ("CYCLES", 1),
               ("RESET_CACHE", 1.5), ("ATTENTION", 2), ("LOAD_WEIGHTS", 0.3), ("MALFORMED", 2)]
    names, w = zip(*weights)
    for i in range(n_ops):
        if i % 50 == 0:
            h.tb.set_stalls(patterns[(i // 50) % len(patterns)])
        if i == 0 or (i == 5):
            await h.load_weights(nrng)
        op = rng.choices(names, w)[0]
        if op == "WRITE_MEMORY":
            kind = rng.choice(["rand"] * 6 + ["max", "min", "zero"])
            await h.cmd(f"op {i} {op}", P.Op[op], P.pack_vector_cmd(*vector(nrng, c.d, kind), c.d))
        elif op == "RECALL":
            # RECALL's three forms (protocol 1.2): the answer ends after n or after the probabilities
            kind = rng.choice(["rand"] * 6 + ["max", "min", "zero"])
            flags = rng.choice([None, 0, P.RECALL_PROBS])
            await h.cmd(f"op {i} {op} flags {flags}", P.Op[op],
                        P.pack_recall_cmd(*vector(nrng, c.d, kind), c.d, flags))
        elif op == "READ_SLOT":
            await h.cmd(f"op {i} READ_SLOT", P.Op.READ_SLOT, P.pack_read_slot(rng.randrange(c.n_slots + 1)))
        elif op == "ATTENTION":
            n_q, n_k = rng.randint(1, c.max_queries), rng.randint(1, c.max_keys)
            causal = rng.random() < 0.5 and n_q <= n_k
            await h.cmd(f"op {i} ATTENTION {n_q}x{n_k}", P.Op.ATTENTION, attention_payload(nrng, n_q, n_k, causal))
        elif op == "LOAD_WEIGHTS":
            await h.load_weights(nrng, scales=(rng.choice([0.01, 0.1, 1.0]),) * 2)
        elif op == "MALFORMED":
            kind = rng.choice(FUZZ_KINDS)
            await h.wire(f"op {i} malformed {kind}", fuzz_frame(rng, kind, nrng))
        else:
            await h.cmd(f"op {i} {op}", P.Op[op])
    await h.tb.expect_silence(64)
    h.tb.log.info(f"soak: {n_ops} operations on {c.name}\n{h.sb.summary()}\n{h.cov.summary()}")
    save_coverage(h.cov, "soak")
    holes = [x for x in h.cov.holes("op", "stall") if x[0] in ("WRITE_MEMORY", "RECALL", "READ_SLOT", "MALFORMED")]
    assert n_ops < 400 or not holes, f"soak left op × stall bins unexercised: {holes}"


@cocotb.test()
async def record(dut):
    """A fixed short session under full stalls whose cycle-stamped responses are saved, so the RTL
    and a synthesized netlist can be compared bit for bit and cycle for cycle. Where the gateware
    has ATTN_PASS (the lane engine), golden_device.attn_pass_session follows: its passes, held
    state and errors are gateware too (the serial engine's record stays as it was)."""
    h = await start(dut, "both", salt=5)
    nrng = np.random.default_rng(test_seed() ^ 0x12EC)
    c = CONFIG
    await h.cmd("info", P.Op.INFO)
    await h.load_weights(nrng)
    for i in range(c.n_slots + 1):
        await h.cmd(f"write {i}", P.Op.WRITE_MEMORY, P.pack_vector_cmd(*vector(nrng, c.d), c.d))
        await h.cmd(f"recall {i}", P.Op.RECALL, P.pack_vector_cmd(*vector(nrng, c.d), c.d))
    await h.cmd("read slot 1", P.Op.READ_SLOT, P.pack_read_slot(1))
    await h.cmd("attention", P.Op.ATTENTION, attention_payload(nrng, c.max_queries, c.max_keys, True))
    await h.cmd("cycles", P.Op.CYCLES)
    if P.Op.ATTN_PASS in GATEWARE_OPS:
        for label, data in attn_pass_session(c, seed=test_seed() % 2**32):
            await h.wire(f"attn_pass: {label}", data)
        await h.cmd("cycles after the passes", P.Op.CYCLES)
    await h.tb.expect_silence(64)
    path = h.tb.save_record("record")
    h.tb.log.info(f"{h.sb.summary()}; record: {path}")
