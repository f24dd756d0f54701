"""Scalar arithmetic units of the contract: shift-round-saturate and the exact reciprocal."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model.fixed import ACC_BITS, RECIP_BITS

__all__ = ["ShiftRoundSat", "Reciprocal", "SerialMulShiftRoundSat", "round_shift_var", "times_const"]


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
    (RECIP_BITS + 1 cycles), or two (``radix=4``). Used once per softmax row, so a sequential
    divider costs only ~41 cycles of a recall and no multipliers.

    ``min_divisor_log2`` (k): the caller promises ``x >= 2^k`` (a softmax sum is at least
    ``LUT[0] = 2^15``), so the quotient's top k bits are 0 and the remainder after them is the
    dividend's prefix ``2^(k-1)``: the division starts from there, RECIP_BITS + 1 - k cycles.

    ``radix=4`` (needs k >= 1 and RECIP_BITS + 1 - k even): every later dividend bit is 0, so a
    step is ``4 rem`` against ``div``, ``2 div`` and ``3 div`` (three subtractions side by side,
    ``3 div`` registered at the start) and yields two quotient bits: half the cycles, for two
    more carry chains and a 4:1 multiplexer in front of the remainder. The quotient is the same
    exact floor either way.

    Members
    -------
    i : In(stream.Signature(unsigned(width)))     divisor, >= 1
    o : Out(stream.Signature(unsigned(RECIP_BITS + 1)))
    """

    def __init__(self, width=32, min_divisor_log2=0, radix=2):
        if not 0 <= min_divisor_log2 <= min(width - 1, RECIP_BITS):
            raise ValueError(f"min_divisor_log2 must be in [0, {min(width - 1, RECIP_BITS)}], got {min_divisor_log2}")
        if radix not in (2, 4):
            raise ValueError(f"radix must be 2 or 4, got {radix}")
        if radix == 4 and (min_divisor_log2 < 1 or (RECIP_BITS + 1 - min_divisor_log2) % 2):
            raise ValueError(f"radix 4 needs min_divisor_log2 >= 1 with RECIP_BITS + 1 - min_divisor_log2 even, "
                             f"got {min_divisor_log2}")
        self.width, self.skip, self.radix = width, min_divisor_log2, radix
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
        bits = RECIP_BITS + 1 - self.skip           # the quotient bits left to find
        # (the top ``skip`` bits of quo are the last division's: 0 by the caller's promise)
        m.d.comb += [self.i.ready.eq(~busy & ~self.o.valid), self.o.payload.eq(quo[:bits])]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        div3 = Signal(self.width + 2, reset_less=True)     # radix 4: 3 div, from the start on
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [div.eq(self.i.payload), rem.eq((1 << self.skip) >> 1),
                         k.eq(bits if self.radix == 2 else bits // 2), busy.eq(1)]
            if self.radix == 4:
                m.d.sync += div3.eq(self.i.payload + (self.i.payload << 1))
        with m.If(busy):
            if self.radix == 2:
                self._step2(m, div, rem, quo, k)
            else:
                self._step4(m, div, div3, rem, quo)
            m.d.sync += k.eq(k - 1)
            with m.If(k == 1):
                m.d.sync += [busy.eq(0), self.o.valid.eq(1)]
        return m

    def _step2(self, m, div, rem, quo, k):
        # dividend 2^RECIP_BITS: its only one bit enters at the first step
        shifted = Signal(self.width + 1)
        m.d.comb += shifted.eq(Cat_bit(rem, k == RECIP_BITS + 1))
        # one subtraction: its borrow is the quotient bit (a compare beside a subtract was
        # two carry chains and a multiplexer)
        diff = Signal(self.width + 2)
        m.d.comb += diff.eq(shifted - div)
        ge = ~diff[-1]
        m.d.sync += [rem.eq(Mux(ge, diff[:self.width + 1], shifted)), quo.eq(Cat_bit(quo, ge))]

    def _step4(self, m, div, div3, rem, quo):
        # rem < div, so 4 rem < 4 div and the digit is 0..3: the largest multiple that fits
        shifted = Signal(self.width + 2)
        m.d.comb += shifted.eq(rem << 2)
        diffs = [Signal(self.width + 3, name=f"diff{j}") for j in (1, 2, 3)]
        m.d.comb += [diffs[0].eq(shifted - div), diffs[1].eq(shifted - (div << 1)), diffs[2].eq(shifted - div3)]
        fits = [~d[-1] for d in diffs]
        with m.If(fits[2]):
            m.d.sync += [rem.eq(diffs[2]), quo.eq(Cat(Const(3, 2), quo))]
        with m.Elif(fits[1]):
            m.d.sync += [rem.eq(diffs[1]), quo.eq(Cat(Const(2, 2), quo))]
        with m.Elif(fits[0]):
            m.d.sync += [rem.eq(diffs[0]), quo.eq(Cat(Const(1, 2), quo))]
        with m.Else():
            m.d.sync += [rem.eq(shifted), quo.eq(Cat(Const(0, 2), quo))]


def round_shift_var(x, s):
    """``fixed.round_shift(x, s)``, ``(x + 2^(s-1)) >> s`` rounding half up, for a shift amount ``s``
    that is a signal, as ``((2x >> s) + 1) >> 1``: the same for every s >= 0 and either sign of x
    (floor((floor(2x / 2^s) + 1) / 2) == floor((x + 2^(s-1)) / 2^s)), and a plain shifter then an
    increment, with no decoder of s in front of an adder on the path."""
    return (((x << 1) >> s) + 1) >> 1


def times_const(x, k: int):
    """``x * k`` for a constant ``k >= 0`` as a sum of shifted copies of ``x``, one per set bit of
    ``k``: Yosys maps a multiply by a constant of up to 18 bits to a whole MULT18X18D (ECP5),
    whose 3.9 ns and the routes to and from the DSP column made a slot base the routed build's
    worst path; for the few set bits of a block count the adders are shorter."""
    if k < 0:
        raise ValueError(f"times_const: k must be >= 0, got {k}")
    terms = [x << i for i in range(k.bit_length()) if k >> i & 1]
    return sum(terms[1:], terms[0]) if terms else Const(0)


def Cat_bit(value, bit):
    """``(value << 1) | bit`` at the width of ``value``."""
    return Cat(bit, value)[:len(value)]


class SerialMulShiftRoundSat(wiring.Component):
    """``fixed.shift_round_sat(x * m, s, bits)`` one bit per cycle, for the sequential engine
    (hw/serial_engine.py), where one unit serves every requantization of a recall or attention.

    One 64-bit register ``r``:

    * multiply (``use_m``; ``m`` unsigned, 16 bits): ``r`` starts as ``m`` in its low bits and 0
      above; each of 16 steps adds ``x`` to the upper 48 bits if ``r``'s lowest bit is set and
      shifts ``r`` right (arithmetic), so the product fills ``r`` as ``m`` leaves it;
    * right shift by ``q = min(s, 62)``: ``q`` steps ``r >> 1``, keeping the last bit shifted
      out, ``rb``; the contract's round half up ``(x + 2^(q-1)) >> q`` is ``(x >> q) + rb``;
    * saturating left shift by ``min(-s, bits - 1)``: steps ``r << 1``, stopping at saturation
      (a shift saturates exactly when ``r`` no longer fits ``bits - 1`` bits before it);

    then saturation to ``bits`` (``wide``: 32, else 16) with ``rb`` added on the way: when
    ``x >> q`` fits, ``+ rb`` can only reach ``hi + 1`` (saturated to ``hi``); when it does not,
    the sum saturates to the same bound. ``y`` is sign-extended to 32 bits.

    A register, one 49-bit adder and a counter instead of a barrel shifter and a multiplier: on
    the iCE40 logic cells are what width costs, and cycles are cheap at 24 MHz. (Rounding by a
    full-width ``r + 1`` was the 65-level carry chain that held a UP5K build at 23.5 MHz.)

    Latency: ``3 + 16 * use_m + |shift|`` cycles from ``i`` to ``o``; ``i.ready`` while idle.

    Members
    -------
    i : In(stream.Signature({x: signed(x_width), m: unsigned(16), use_m: 1, s: signed(s_width), wide: 1}))
    o : Out(stream.Signature(signed(32)))      ``valid`` for one cycle (``ready`` is ignored)
    """

    M_BITS = 16

    def __init__(self, x_width=ACC_BITS, s_width=14):
        if not 1 <= x_width <= 64 - self.M_BITS:
            raise ValueError(f"x_width must be in 1..{64 - self.M_BITS} (x * m must fit 64 bits), got {x_width}")
        self.x_width, self.s_width = x_width, s_width
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "x": signed(x_width), "m": unsigned(self.M_BITS), "use_m": 1,
                "s": signed(s_width), "wide": 1}))),
            "o": Out(stream.Signature(signed(32))),
        })

    def elaborate(self, platform):
        m = Module()
        W, MB = 64, self.M_BITS
        x_reg = Signal(signed(self.x_width), reset_less=True)
        r = Signal(signed(W), reset_less=True)
        rb = Signal(reset_less=True)
        count = Signal(range(63), reset_less=True)
        wide = Signal(reset_less=True)
        sat = Signal(reset_less=True)
        s = Signal(signed(self.s_width), reset_less=True)

        def fits(v, bits):
            """v fits ``bits`` signed bits: its bits from ``bits - 1`` up agree."""
            top = v[bits - 1:]
            return (top == 0) | (top == (1 << len(top)) - 1)

        m.d.comb += self.i.ready.eq(0)
        m.d.sync += self.o.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    p = self.i.payload
                    m.d.sync += [x_reg.eq(p.x), r.eq(Mux(p.use_m, p.m, p.x)), s.eq(p.s), rb.eq(0),
                                 wide.eq(p.wide), sat.eq(0), count.eq(MB - 1)]
                    with m.If(p.use_m):
                        m.next = "MUL"
                    with m.Else():
                        m.next = "CLAMP"
            with m.State("MUL"):
                upper = (r[MB:].as_signed() + Mux(r[0], x_reg, 0))[:W - MB + 1]
                m.d.sync += [r.eq(Cat(r[1:MB], upper)), count.eq(count - 1)]
                with m.If(count == 0):
                    m.next = "CLAMP"
            with m.State("CLAMP"):
                # the contract clamps s to [-(bits - 1), 62]
                lim = Mux(wide, 31, 15)
                m.d.sync += count.eq(Mux(s > 62, 62, Mux(s > 0, s, Mux(-s > lim, lim, -s))))
                m.next = "SHIFT"
            with m.State("SHIFT"):
                with m.If(count == 0):
                    m.next = "OUT"
                with m.Elif(s < 0):
                    with m.If(~Mux(wide, fits(r, 31), fits(r, 15))):
                        m.d.sync += [sat.eq(1), count.eq(0)]
                    with m.Else():
                        m.d.sync += [r.eq(r << 1), count.eq(count - 1)]
                with m.Else():
                    m.d.sync += [r.eq(r >> 1), rb.eq(r[0]), count.eq(count - 1)]
            with m.State("OUT"):
                # (r's sign is x's: a left shift stops before it would change it)
                over = sat | ~Mux(wide, fits(r, 32), fits(r, 16))
                hi = Mux(wide, (1 << 31) - 1, (1 << 15) - 1)
                lo = Mux(wide, -(1 << 31), -(1 << 15))
                rounded = Signal(signed(33))
                m.d.comb += rounded.eq(Mux(wide, r[:32].as_signed(), r[:16].as_signed()) + rb)
                m.d.sync += [self.o.valid.eq(1),
                             self.o.payload.eq(Mux(over, Mux(r[-1], lo, hi), Mux(rounded > hi, hi, rounded)))]
                m.next = "IDLE"
        return m
