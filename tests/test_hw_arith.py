"""ShiftRoundSat and Reciprocal vs hmtx.model.fixed, random gaps and backpressure; round_shift_var."""

import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from hmtx.hw.arith import Reciprocal, ShiftRoundSat, round_shift_var, times_const
from hmtx.model import fixed
from hwsim import rng, run_stream


@pytest.mark.parametrize("in_width,bits", [(48, 16), (64, 32)])
def test_shift_round_sat_matches_contract(in_width, bits):
    r = rng(3)
    dut = ShiftRoundSat(in_width, bits, shift_width=12, tag_bits=8)
    items = []
    for n in range(80):
        mag = r.randint(0, in_width - 2)
        x = r.randint(-(1 << mag), (1 << mag))
        s = r.choice([r.randint(-40, 70), r.randint(-3, 3), 0, -(bits - 1), 62])
        items.append({"x": x, "s": s, "tag": n % 256})
    out = run_stream(dut, dut.i, dut.o, items, len(items), r, convert=lambda p: (p.tag, p.y))
    for n, (it, (tag, y)) in enumerate(zip(items, out)):
        want = int(fixed.shift_round_sat(it["x"], it["s"], bits))
        assert (tag, y) == (n % 256, want), f"x={it['x']} s={it['s']}"


@pytest.mark.parametrize("skip,radix", [(0, 2), (15, 2), (15, 4), (1, 4)])
def test_reciprocal_is_exact_floor(skip, radix):
    r = rng(4)
    dut = Reciprocal(32, min_divisor_log2=skip, radix=radix)
    # (the divisors around each digit's boundaries: 2^k - 1, 2^k, 2^k + 1, and 3 * 2^k)
    edges = [e for k in range(skip, 32) for e in ((1 << k) - 1, 1 << k, (1 << k) + 1, 3 << k) if e < 1 << 32]
    xs = [1, 2, 3, 1 << 15, (1 << 25) - 1, 32769, (1 << 32) - 1] + edges[::3] + \
        [r.randint(1 << 15, 1 << 25) for _ in range(6)]
    xs = [x for x in xs if x >= 1 << skip]
    out = run_stream(dut, dut.i, dut.o, xs, len(xs), r, convert=int)
    assert out == [(1 << fixed.RECIP_BITS) // x for x in xs]


def test_reciprocal_refuses_what_radix_4_cannot_do():
    with pytest.raises(ValueError, match="radix 4 needs min_divisor_log2 >= 1"):
        Reciprocal(32, min_divisor_log2=0, radix=4)
    with pytest.raises(ValueError, match="radix 4 needs"):
        Reciprocal(32, min_divisor_log2=2, radix=4)          # 39 quotient bits: odd
    with pytest.raises(ValueError, match="radix must be 2 or 4"):
        Reciprocal(32, radix=8)


@pytest.mark.parametrize("shape,shifts", [(unsigned(16), 17), (signed(32), 25)],
                         ids=["weight-u16", "fold-s32"])
def test_round_shift_var_is_round_shift(shape, shifts):
    """The softmax weight (unsigned p, shifts 0..16) and the fold (signed 32-bit lane sums, shifts
    0..24): every shift, values on and beside each rounding tie, the extremes, random values."""
    r = rng(5)
    lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed else (0, (1 << shape.width) - 1)
    values = {lo, hi, 0, 1, -1 if lo < 0 else 2}
    for s in range(shifts):
        tie = (1 << s) >> 1
        values |= {v for t in (tie, -tie, 3 * tie, -3 * tie) for v in (t - 1, t, t + 1) if lo <= v <= hi}
    values |= {r.randint(lo, hi) for _ in range(200)}
    x, s_sig = Signal(shape), Signal(range(shifts))
    y = Signal(signed(len(x) + 2))
    m = Module()
    m.d.comb += y.eq(round_shift_var(x, s_sig))

    async def tb(ctx):
        for v in sorted(values):
            for s in range(shifts):
                ctx.set(x, v)
                ctx.set(s_sig, s)
                assert ctx.get(y) == int(fixed.round_shift(v, s)), f"x={v} s={s}"

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize("k", [0, 1, 2, 3, 8, 9, 13, 255])
def test_times_const_is_the_product(k):
    """The slot bases' shift-and-add multiply: every 7-bit x (a slot number) times k, at the
    width of the product."""
    x = Signal(7)
    y = Signal(7 + max(1, k.bit_length()))
    m = Module()
    m.d.comb += y.eq(times_const(x, k))

    async def tb(ctx):
        for v in range(1 << 7):
            ctx.set(x, v)
            assert ctx.get(y) == v * k, f"x={v} k={k}"

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()


def test_times_const_refuses_a_negative_constant():
    with pytest.raises(ValueError, match="k must be >= 0"):
        times_const(Signal(4), -3)
