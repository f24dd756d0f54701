"""ShiftRoundSat and Reciprocal vs hmtx.model.fixed, random gaps and backpressure."""

import pytest

from hmtx.hw.arith import Reciprocal, ShiftRoundSat
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


@pytest.mark.parametrize("skip", [0, 15])
def test_reciprocal_is_exact_floor(skip):
    r = rng(4)
    dut = Reciprocal(32, min_divisor_log2=skip)
    xs = [1, 2, 3, 1 << 15, (1 << 25) - 1, 32769] + [r.randint(1 << 15, 1 << 25) for _ in range(6)]
    xs = [x for x in xs if x >= 1 << skip]
    out = run_stream(dut, dut.i, dut.o, xs, len(xs), r, convert=int)
    assert out == [(1 << fixed.RECIP_BITS) // x for x in xs]
