"""Scalar arithmetic units of the contract: shift-round-saturate and the exact reciprocal."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model.fixed import RECIP_BITS

__all__ = ["ShiftRoundSat", "Reciprocal"]


class ShiftRoundSat(wiring.Component):
    """``fixed.shift_round_sat(x, s, bits)``: round-half-up right shift for s > 0, saturating
    left shift for s < 0, then saturation to ``bits`` signed bits; ``s`` is clamped to
    ``[-(bits-1), 62]`` first, exactly as the contract does.

    Four pipeline stages (clamp, shift, round, compare-and-saturate) that advance together
    while the output register is free; a ``tag`` rides along unchanged.

    Members
    -------
    i : In(stream.Signature({x: signed(in_width), s: signed(shift_width), tag}))
    o : Out(stream.Signature({y: signed(bits), tag}))
    """

    def __init__(self, in_width, bits, shift_width=12, tag_bits=16):
        if in_width > 64 or bits > in_width:
            raise ValueError(f"need bits <= in_width <= 64, got bits={bits}, in_width={in_width}")
        self.in_width, self.bits, self.shift_width, self.tag_bits = in_width, bits, shift_width, tag_bits
        self.latency = 4
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "x": signed(in_width), "s": signed(shift_width), "tag": unsigned(tag_bits)}))),
            "o": Out(stream.Signature(data.StructLayout({"y": signed(bits), "tag": unsigned(tag_bits)}))),
        })

    def elaborate(self, platform):
        m = Module()
        bits = self.bits
        hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]

        # stage 1: clamp s and split it into a right and a left shift amount
        v1 = Signal()
        x1 = Signal(signed(self.in_width), reset_less=True)
        # (the shifter's amount, right - 1, and whether right is 0 are registered here too, so
        # that stage 2 is the barrel shifter alone, straight from flip-flops)
        right_m1 = Signal(range(62), reset_less=True)
        r_zero1 = Signal(reset_less=True)
        left = Signal(range(bits), reset_less=True)
        t1 = Signal(self.tag_bits, reset_less=True)
        s = self.i.payload.s
        with m.If(en):
            m.d.sync += [v1.eq(self.i.valid), x1.eq(self.i.payload.x), t1.eq(self.i.payload.tag),
                         right_m1.eq(Mux(s > 62, 61, Mux(s > 0, s - 1, 0))), r_zero1.eq(s <= 0),
                         left.eq(Mux(s < -(bits - 1), bits - 1, Mux(s < 0, -s, 0)))]

        # stages 2 and 3: round half up and shift right, split so that the barrel shifter and
        # the adder sit in different cycles: (x + 2^(r-1)) >> r == (z >> 1) + (z & 1) with
        # z = x >> (r-1), for r >= 1
        vz = Signal()
        z = Signal(signed(self.in_width), reset_less=True)
        r_zero = Signal(reset_less=True)
        left_z = Signal.like(left, reset_less=True)
        tz = Signal(self.tag_bits, reset_less=True)
        with m.If(en):
            m.d.sync += [vz.eq(v1), z.eq(x1 >> right_m1), r_zero.eq(r_zero1), left_z.eq(left), tz.eq(t1)]
        v2 = Signal()
        y2 = Signal(signed(self.in_width + 1), reset_less=True)
        left2 = Signal.like(left, reset_less=True)
        t2 = Signal(self.tag_bits, reset_less=True)
        # the left shift saturates exactly when y leaves [lo >> left, hi >> left]: the bounds are
        # shifted here, a stage ahead of the compares that use them
        hi2 = Signal(signed(bits), reset_less=True)
        lo2 = Signal(signed(bits), reset_less=True)
        with m.If(en):
            m.d.sync += [v2.eq(vz), y2.eq(Mux(r_zero, z, (z >> 1) + z[0])), left2.eq(left_z), t2.eq(tz),
                         hi2.eq(Const(hi, signed(bits)) >> left_z), lo2.eq(Const(lo, signed(bits)) >> left_z)]

        # stage 3: compare and saturate
        over = y2 > hi2
        under = y2 < lo2
        with m.If(en):
            m.d.sync += [self.o.valid.eq(v2), self.o.payload.tag.eq(t2),
                         self.o.payload.y.eq(Mux(over, hi, Mux(under, lo, (y2 << left2)[:bits])))]
        return m


class Reciprocal(wiring.Component):
    """``floor(2^RECIP_BITS / x)`` by restoring division, one quotient bit per cycle
    (RECIP_BITS + 1 cycles). Used once per softmax row, so a sequential divider costs only
    ~41 cycles of a recall and no multipliers.

    Members
    -------
    i : In(stream.Signature(unsigned(width)))     divisor, >= 1
    o : Out(stream.Signature(unsigned(RECIP_BITS + 1)))
    """

    def __init__(self, width=32):
        self.width = width
        super().__init__({
            "i": In(stream.Signature(unsigned(width))),
            "o": Out(stream.Signature(unsigned(RECIP_BITS + 1))),
        })

    def elaborate(self, platform):
        m = Module()
        div = Signal(self.width, reset_less=True)
        rem = Signal(self.width + 1, reset_less=True)
        quo = Signal(RECIP_BITS + 1, reset_less=True)
        k = Signal(range(RECIP_BITS + 2))
        busy = Signal()
        m.d.comb += [self.i.ready.eq(~busy & ~self.o.valid), self.o.payload.eq(quo)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [div.eq(self.i.payload), rem.eq(0), k.eq(RECIP_BITS + 1), busy.eq(1)]
        with m.If(busy):
            # dividend 2^RECIP_BITS: its only one bit enters at the first step
            shifted = Signal(self.width + 1)
            m.d.comb += shifted.eq(Cat_bit(rem, k == RECIP_BITS + 1))
            # one subtraction: its borrow is the quotient bit (a compare beside a subtract was
            # two carry chains and a multiplexer)
            diff = Signal(self.width + 2)
            m.d.comb += diff.eq(shifted - div)
            ge = ~diff[-1]
            m.d.sync += [rem.eq(Mux(ge, diff[:self.width + 1], shifted)), quo.eq(Cat_bit(quo, ge)),
                         k.eq(k - 1)]
            with m.If(k == 1):
                m.d.sync += [busy.eq(0), self.o.valid.eq(1)]
        return m


def Cat_bit(value, bit):
    """``(value << 1) | bit`` at the width of ``value``."""
    return Cat(bit, value)[:len(value)]
