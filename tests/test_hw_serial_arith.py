"""SerialMulShiftRoundSat against fixed.shift_round_sat, in the Amaranth simulator."""

import os
import random

import numpy as np
from amaranth.sim import Simulator

from hmtx.hw.arith import SerialMulShiftRoundSat
from hmtx.model import fixed


def _cases(r, n):
    edges = [0, 1, -1, 2, -2, (1 << 15) - 1, -(1 << 15), 1 << 15, (1 << 31) - 1, -(1 << 31),
             (1 << 47) - 1, -(1 << 47)]
    for _ in range(n):
        use_m = r.random() < 0.4
        x = r.choice(edges) if r.random() < 0.3 else r.randrange(-(1 << r.randrange(1, 48)), 1 << r.randrange(1, 48))
        # the contract's domain: x * m and its rounding stay inside int64 (|score acc| < 2^43,
        # fixed.D_MAX), so a product gets at most 46 bits of x
        xb = 46 if use_m else 47
        x = max(-(1 << xb), min((1 << xb) - 1, x))
        mm = r.choice([0, 1, 0xFFFF, 0x8000, r.randrange(1 << 16)])
        s = r.choice([0, 1, -1, 62, 63, 80, -15, -16, -31, -32, -40, r.randrange(-40, 70)])
        wide = r.random() < 0.5
        yield x, mm, use_m, s, wide


def test_serial_mul_shift_round_sat_matches_contract():
    seed = int(os.environ.get("HMTX_SEED", random.randrange(1 << 30)))
    r = random.Random(seed)
    cases = list(_cases(r, 400))
    dut = SerialMulShiftRoundSat()
    got = []

    async def tb(ctx):
        for x, mm, use_m, s, wide in cases:
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, {"x": x, "m": mm, "use_m": use_m, "s": s, "wide": wide})
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)
            cycles = 0
            while not ctx.get(dut.o.valid):
                await ctx.tick()
                cycles += 1
                assert cycles < 100
            got.append(ctx.get(dut.o.payload))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    for (x, mm, use_m, s, wide), y in zip(cases, got):
        v = x * mm if use_m else x
        want = int(fixed.shift_round_sat(np.int64(v), s, 32 if wide else 16))
        assert y == want, f"seed {seed}: x={x} m={mm} use_m={use_m} s={s} wide={wide}: got {y}, want {want}"
