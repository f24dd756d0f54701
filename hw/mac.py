"""MAC lane array: P signed multipliers, an adder tree and accumulators, fully pipelined."""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model.fixed import ACC_BITS

from .fanout import replicate

__all__ = ["OPERAND_BITS", "LANE_ACC_BITS", "mac_in_layout", "mac_out_layout", "MacArray"]

# Every operand the contract multiplies fits 16 signed bits: int8 mantissas, int16 q/K
# mantissas and Q0.15 probabilities (<= 32767). One ECP5 MULT18X18D / iCE40 SB_MAC16 per lane.
OPERAND_BITS = 16
# Per-lane accumulators only ever sum weight x int8 products: |acc| < 2^23 (fixed.weighted_sum).
LANE_ACC_BITS = 32


def mac_in_layout(lanes, tag_bits):
    return data.StructLayout({
        "a": data.ArrayLayout(signed(OPERAND_BITS), lanes),
        "b": data.ArrayLayout(signed(OPERAND_BITS), lanes),
        "first": 1,       # clear the accumulator(s) before adding this beat
        "last": 1,        # emit the accumulator(s) after adding this beat
        "lane_mode": 1,   # 0: dot product (adder tree), 1: one accumulator per lane
        "tag": unsigned(tag_bits),
    })


def mac_out_layout(lanes, tag_bits):
    return data.StructLayout({
        "dot": signed(ACC_BITS),
        "lanes": data.ArrayLayout(signed(LANE_ACC_BITS), lanes),
        "tag": unsigned(tag_bits),
    })


class MacArray(wiring.Component):
    """P multipliers ``a[l] * b[l]`` per beat, summed two ways.

    In dot mode the products go through a pipelined adder tree into one ``ACC_BITS`` accumulator
    (``sum_l a[l] b[l]`` summed over the beats from ``first`` to ``last``); in lane mode lane l
    accumulates its own products (``acc[l] += a[l] b[l]``), which is how a weighted sum of
    vectors runs at P MACs per cycle without transposing the vectors. One result leaves per
    ``last`` beat, carrying that beat's ``tag``.

    Timing: a register before and after every multiplier (ECP5 DSPs have none inside), one
    register per adder-tree level, one for the accumulator: dot latency ``3 + ceil(log2 P)``,
    lane latency 3 (the lane accumulators sit right after the product registers). All
    stages advance together when the output register is empty or being read, so ``i.ready``
    falls only under output backpressure. Datapath registers have no reset; only the valid
    bits do. The lane accumulators' controls are registered once per group of ``group_lanes``
    lanes (:func:`hmtx.hw.fanout.replicate`; the last group may be smaller): one register
    driving all P lanes' accumulators is thousands of loads spread over the DSP columns.

    Members
    -------
    i : In(stream.Signature(mac_in_layout(lanes, tag_bits)))
    o : Out(stream.Signature(mac_out_layout(lanes, tag_bits)))
    """

    def __init__(self, lanes, tag_bits=16, group_lanes=None):
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        group_lanes = lanes if group_lanes is None else group_lanes
        if group_lanes < 1:
            raise ValueError(f"group_lanes must be >= 1, got {group_lanes}")
        self.lanes = lanes
        self.group_lanes = group_lanes
        self.tag_bits = tag_bits
        self.levels = max(0, (lanes - 1).bit_length())
        self.latency = 3 + self.levels   # dot mode; lane mode: 3
        super().__init__({
            "i": In(stream.Signature(mac_in_layout(lanes, tag_bits))),
            "o": Out(stream.Signature(mac_out_layout(lanes, tag_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.lanes
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]

        ctrl = data.StructLayout({"first": 1, "last": 1, "lane_mode": 1,
                                  "tag": unsigned(self.tag_bits)})

        def stage(name, valid_in, ctrl_in):
            v = Signal(name=f"{name}_valid")
            c = Signal(ctrl, name=f"{name}_ctrl", reset_less=True)
            with m.If(en):
                m.d.sync += v.eq(valid_in)
                m.d.sync += [c[f].eq(ctrl_in[f]) for f in ("first", "last", "lane_mode", "tag")]
            return v, c

        # stage 1: operand registers
        v1, c1 = stage("s1", self.i.valid, self.i.payload)
        a_r = [Signal(signed(OPERAND_BITS), name=f"a_r{l}", reset_less=True) for l in range(P)]
        b_r = [Signal(signed(OPERAND_BITS), name=f"b_r{l}", reset_less=True) for l in range(P)]
        # stage 2: product registers
        v2, c2 = stage("s2", v1, c1)
        prod = [Signal(signed(2 * OPERAND_BITS), name=f"prod{l}", reset_less=True) for l in range(P)]
        with m.If(en):
            for l in range(P):
                m.d.sync += [a_r[l].eq(self.i.payload.a[l]), b_r[l].eq(self.i.payload.b[l]),
                             prod[l].eq(a_r[l] * b_r[l])]

        # Lane mode accumulates right after the product registers (stage 3), so the P lane sums
        # never ride through the adder tree's registers; its results leave after 3 cycles, dot
        # results after 3 + levels. The engine never mixes modes in flight (it drains between
        # phases), so both paths can share the output register.
        # the output payload register (P x 32 bits) has no reset: only o.valid needs one, and a
        # reset net to thousands of flip-flops is a timing path of its own
        out = Signal(mac_out_layout(P, self.tag_bits), reset_less=True)
        m.d.comb += self.o.payload.eq(out)
        lacc = [Signal(signed(LANE_ACC_BITS), name=f"lacc{l}", reset_less=True) for l in range(P)]
        lacc_next = [Signal(signed(LANE_ACC_BITS), name=f"lacc_next{l}") for l in range(P)]
        # per lane group, at stage 2: (accumulate, clear first, emit), copies of v2 & c2.lane_mode,
        # c2.first and the lane-mode emit below
        LG = self.group_lanes
        lane_ctl = replicate(m, Cat(v1 & c1.lane_mode, c1.first, v1 & c1.lane_mode & c1.last),
                             -(-P // LG), "lane_ctl", reset=True, en=en)
        for l in range(P):
            acc_g, first_g, emit_g = (lane_ctl[l // LG][k] for k in range(3))
            m.d.comb += lacc_next[l].eq(Mux(first_g, prod[l], lacc[l] + prod[l]))
            with m.If(en & acc_g):
                m.d.sync += lacc[l].eq(lacc_next[l])
            with m.If(en & emit_g):
                m.d.sync += out.lanes[l].eq(lacc_next[l])
        lane_emit = v2 & c2.lane_mode & c2.last

        level = prod
        v, c = v2, c2
        for k in range(self.levels):
            nxt = []
            for n in range((len(level) + 1) // 2):
                s = Signal(signed(2 * OPERAND_BITS + k + 1), name=f"t{k}_{n}", reset_less=True)
                pair = level[2 * n] + level[2 * n + 1] if 2 * n + 1 < len(level) else level[2 * n]
                with m.If(en):
                    m.d.sync += s.eq(pair)
                nxt.append(s)
            level = nxt
            v, c = stage(f"t{k}", v, c)

        acc = Signal(signed(ACC_BITS), reset_less=True)
        acc_next = Signal(signed(ACC_BITS))
        m.d.comb += acc_next.eq(Mux(c.first, level[0], acc + level[0]))
        dot_emit = v & ~c.lane_mode & c.last
        with m.If(en):
            m.d.sync += self.o.valid.eq(lane_emit | dot_emit)
            with m.If(v & ~c.lane_mode):
                m.d.sync += acc.eq(acc_next)
            with m.If(dot_emit):
                m.d.sync += [out.dot.eq(acc_next), out.tag.eq(c.tag)]
            with m.If(lane_emit):
                m.d.sync += out.tag.eq(c2.tag)
        return m
