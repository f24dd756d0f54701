"""cocotb tests of the stand-in device (hmtx.sim.standin) against its golden model.

They exercise the verification environment itself: drivers under every stall pattern, pipelined
frames, reset in the middle of an operation, protocol fuzzing with resynchronisation, a soak with
functional coverage, and a cycle-stamped response record for RTL-vs-gate-level comparison.

Environment: HMTX_SOAK_OPS (default 500), HMTX_FUZZ_CASES (default 40) size the random tests;
the seed is cocotb's (COCOTB_RANDOM_SEED, set by the pytest entry from HMTX_SEED).
"""

import os
import random

import cocotb

from hmtx.sim.coverage import Coverage
from hmtx.sim.scoreboard import Scoreboard
from hmtx.sim.standin import OPCODES, STATUS, StandInModel, frame
from hmtx.sim.tb import STALL_PATTERNS, TB, test_seed

# Must match the StandIn instance the pytest entry generates (its defaults).
MAX_LEN, N_SLOTS, IDLE_TIMEOUT = 16, 4, 32
OPS = list(OPCODES)
FUZZ_KINDS = ["bad_opcode", "truncated", "oversized_length", "odd_dot_length", "bad_slot",
              "wrong_length", "garbage"]


def _out(name: str) -> str | None:
    out = os.environ.get("HMTX_SIM_OUT")
    return os.path.join(out, name) if out else None


class StandInModelState(StandInModel):
    def cache_state(self) -> str:
        nonzero = sum(1 for v in self.slots if v)
        return "empty" if nonzero == 0 else "full" if nonzero == self.n_slots else "partial"


def random_frame(rng: random.Random, op: str | None = None) -> tuple[str, bytes]:
    op = op or rng.choice(OPS)
    code = OPCODES[op]
    if op == "ECHO":
        return op, frame(code, rng.randbytes(rng.randint(0, MAX_LEN)))
    if op == "DOT":
        return op, frame(code, rng.randbytes(2 * rng.randint(0, MAX_LEN // 2)))
    if op == "STORE":
        value = 0 if rng.random() < 0.2 else rng.randint(1, 255)
        return op, frame(code, bytes([rng.randrange(N_SLOTS), value]))
    return op, frame(code, bytes([rng.randrange(N_SLOTS)]))


async def start(dut, stalls: str, salt: int = 0):
    """A fresh TB and model; the slot RAM (not cleared by reset) is zeroed through the device."""
    tb = TB(dut, stalls=stalls, seed=test_seed() + salt)
    model = StandInModelState(max_len=MAX_LEN, n_slots=N_SLOTS)
    if os.environ.get("HMTX_STANDIN_BREAK"):
        # A deliberately wrong model, so the pytest side can check that failures are reported.
        feed = model.feed
        model.feed = lambda data: bytes(b ^ 1 if i == 0 else b for i, b in enumerate(feed(data)))
    sb = Scoreboard(tb.log)
    await tb.reset()
    init = b"".join(frame(OPCODES["STORE"], bytes([s, 0])) for s in range(N_SLOTS))
    sb.compare("zero slots", model.feed(init), await tb.transact(init, 2 * N_SLOTS))
    return tb, model, sb


async def run_ops(tb, model, sb, rng, n_ops, cov=None, max_batch=4):
    """Random valid operations, sent in pipelined batches of up to ``max_batch`` frames."""
    done = 0
    while done < n_ops:
        batch = [random_frame(rng) for _ in range(min(n_ops - done, rng.randint(1, max_batch)))]
        expected = bytearray()
        for op, data in batch:
            if cov is not None:
                cov.sample(op=op, cache=model.cache_state(), stall=tb.stalls)
            expected += model.feed(data)
        tb.send(b"".join(d for _, d in batch))
        sb.compare(f"ops {done}..{done + len(batch) - 1} ({', '.join(o for o, _ in batch)})",
                   expected, await tb.recv(len(expected)))
        done += len(batch)


def new_coverage() -> Coverage:
    return Coverage("standin", op=OPS, cache=["empty", "partial", "full"], stall=list(STALL_PATTERNS))


@cocotb.test()
@cocotb.parametrize(stalls=[cocotb.Param(s, s) for s in STALL_PATTERNS])
async def sequences(dut, stalls):
    """Directed corner cases, then random pipelined operations, under one stall pattern."""
    tb, model, sb = await start(dut, stalls)
    rng = random.Random(test_seed() ^ 0x5EC)
    directed = [
        frame(OPCODES["ECHO"]),
        frame(OPCODES["ECHO"], b"\xa5"),
        frame(OPCODES["ECHO"], bytes(range(MAX_LEN))),
        frame(OPCODES["DOT"]),
        frame(OPCODES["DOT"], bytes([0x80, 0x80] * (MAX_LEN // 2))),   # (-128)^2 * 8 = 131072
        frame(OPCODES["DOT"], bytes([0x80, 0x7F] * (MAX_LEN // 2))),   # most negative sum
        frame(OPCODES["DOT"], bytes([3, 0xFE])),                        # one lane only
        *[frame(OPCODES["STORE"], bytes([s, 0x10 + s])) for s in range(N_SLOTS)],
        *[frame(OPCODES["LOAD"], bytes([s])) for s in range(N_SLOTS)],
    ]
    for data in directed:
        expected = model.feed(data)
        sb.compare(f"directed {data.hex(' ')}", expected, await tb.transact(data, len(expected)))
    await run_ops(tb, model, sb, rng, 40)
    await tb.expect_silence(2 * IDLE_TIMEOUT)
    tb.log.info(sb.summary())


@cocotb.test()
async def reset_mid_operation(dut):
    """Reset lands at a random point of a frame (receiving, computing or answering); afterwards
    nothing stale comes out, the slots keep their contents and commands work."""
    tb, model, sb = await start(dut, "both", salt=1)
    rng = random.Random(test_seed() ^ 0x4E5)
    for s in range(N_SLOTS):
        data = frame(OPCODES["STORE"], bytes([s, rng.randint(1, 255)]))
        sb.compare("store", model.feed(data), await tb.transact(data, 2))
    for trial in range(16):
        op = rng.choice(["ECHO", "DOT", "LOAD"])  # a STORE cut by reset may or may not land
        _, data = random_frame(rng, op)
        tb.send(data + data)
        await tb.cycles(rng.randint(0, 3 * len(data) + 20))
        await tb.reset()
        model.reset()
        await tb.expect_silence(8)
        check = frame(OPCODES["ECHO"], bytes([trial])) + b"".join(
            frame(OPCODES["LOAD"], bytes([s])) for s in range(N_SLOTS))
        expected = model.feed(check)
        sb.compare(f"after reset {trial} ({op})", expected, await tb.transact(check, len(expected)))
    tb.log.info(sb.summary())


def mutate(rng: random.Random, kind: str) -> bytes:
    if kind == "bad_opcode":
        op = rng.choice([0x00, 0x05, 0x7F, 0xFF, rng.randint(5, 255)])
        return bytes([op]) + rng.randbytes(rng.randint(0, 6))
    if kind == "truncated":
        _, data = random_frame(rng, rng.choice(["ECHO", "DOT", "STORE"]))
        data = data if len(data) > 2 else frame(OPCODES["ECHO"], b"xyz")
        return data[:rng.randint(1, len(data) - 1)]
    if kind == "oversized_length":
        n = rng.randint(MAX_LEN + 1, 255)
        return bytes([rng.choice([OPCODES["ECHO"], OPCODES["DOT"]]), n]) + rng.randbytes(rng.randint(0, 20))
    if kind == "odd_dot_length":
        n = 2 * rng.randint(0, MAX_LEN // 2 - 1) + 1
        return frame(OPCODES["DOT"], rng.randbytes(n))
    if kind == "bad_slot":
        slot = rng.randint(N_SLOTS, 255)
        return rng.choice([frame(OPCODES["STORE"], bytes([slot, 7])), frame(OPCODES["LOAD"], bytes([slot]))])
    if kind == "wrong_length":
        return rng.choice([frame(OPCODES["STORE"], rng.randbytes(rng.choice([0, 1, 3]))),
                           frame(OPCODES["LOAD"], rng.randbytes(rng.choice([0, 2])))])
    if kind == "garbage":
        return rng.randbytes(rng.randint(1, 40))
    raise ValueError(f"unknown fuzz kind {kind!r}")


@cocotb.test()
@cocotb.parametrize(stalls=[cocotb.Param("none", "none"), cocotb.Param("both", "both")])
async def fuzz(dut, stalls):
    """Malformed and random command streams: the documented error (or answer), never a hang, and
    a valid command right after sees the slots intact."""
    tb, model, sb = await start(dut, stalls, salt=2)
    rng = random.Random(test_seed() ^ 0xF22)
    cov = Coverage("fuzz", kind=FUZZ_KINDS, stall=list(STALL_PATTERNS))
    statuses = Coverage("fuzz-status", status=list(STATUS))
    n_cases = int(os.environ.get("HMTX_FUZZ_CASES", "40"))
    await run_ops(tb, model, sb, rng, 8)  # put something in the slots
    for case in range(n_cases):
        kind = FUZZ_KINDS[case % len(FUZZ_KINDS)] if case < len(FUZZ_KINDS) else rng.choice(FUZZ_KINDS)
        data = mutate(rng, kind)
        expected = model.feed(data)
        tb.send(data)
        await tb.quiet(IDLE_TIMEOUT + 4)
        expected += model.idle()
        actual = await tb.recv(len(expected), timeout_cycles=IDLE_TIMEOUT * 8 + 2000)
        sb.compare(f"fuzz {case} {kind}: {data.hex(' ')}", expected, actual)
        cov.sample(kind=kind, stall=stalls)
        for code, name in ((c, n) for n, c in STATUS.items()):
            if expected[:1] == bytes([code]):
                statuses.sample(status=name)
        check = frame(OPCODES["LOAD"], bytes([rng.randrange(N_SLOTS)]))
        expected = model.feed(check)
        sb.compare(f"valid command after fuzz {case} {kind}", expected, await tb.transact(check, len(expected)))
    await tb.expect_silence(2 * IDLE_TIMEOUT)
    tb.log.info(sb.summary() + "\n" + cov.summary() + "\n" + statuses.summary())
    errors = [n for n in STATUS if n != "OK"]
    missing = [h[0] for h in statuses.holes() if h[0] in errors]
    assert not missing, f"fuzzing never provoked {missing}"


@cocotb.test()
async def soak(dut):
    """HMTX_SOAK_OPS random operations, pipelined, the stall pattern changing every block."""
    tb, model, sb = await start(dut, "none", salt=3)
    rng = random.Random(test_seed() ^ 0x50A)
    n_ops = int(os.environ.get("HMTX_SOAK_OPS", "500"))
    cov = new_coverage()
    patterns = list(STALL_PATTERNS)
    done, block = 0, 0
    while done < n_ops:
        tb.set_stalls(patterns[block % len(patterns)])
        n = min(50, n_ops - done)
        await run_ops(tb, model, sb, rng, n, cov=cov)
        done += n
        block += 1
    await tb.expect_silence(2 * IDLE_TIMEOUT)
    tb.log.info(f"soak: {n_ops} operations\n{sb.summary()}\n{cov.summary()}")
    if path := _out("coverage-soak.json"):
        with open(path, "w") as f:
            f.write(cov.to_json())
    holes = cov.holes("op", "stall")
    assert n_ops < 100 or not holes, f"soak left op × stall bins unexercised: {holes}"


@cocotb.test()
async def record(dut):
    """A fixed stimulus under full stalls whose cycle-stamped responses are saved, so the RTL and
    a synthesized netlist can be compared bit for bit and cycle for cycle."""
    tb, model, sb = await start(dut, "both", salt=4)
    rng = random.Random(test_seed() ^ 0x12EC)
    await run_ops(tb, model, sb, rng, int(os.environ.get("HMTX_RECORD_OPS", "120")))
    dot = [frame(OPCODES["DOT"], rng.randbytes(MAX_LEN)) for _ in range(20)]
    expected = model.feed(b"".join(dot))
    sb.compare("dot burst", expected, await tb.transact(b"".join(dot), len(expected)))
    await tb.expect_silence(2 * IDLE_TIMEOUT)
    path = tb.save_record("record")
    tb.log.info(f"{sb.summary()}; record: {path}")
