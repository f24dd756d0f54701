"""Fold unit of the lane engine (contract 2's WRITE): the folded key ``K'_i = W_q K_i`` from the
MAC's lane results, its shift ``fold_shift`` and its int8 mantissas into ``dat``."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed

from .arith import round_shift_var
from .engine_layout import TAG_BITS, lane_group_chain
from .fanout import replicate
from .mac import LANE_ACC_BITS, mac_out_layout

__all__ = ["FOLD_SHIFT_W", "FoldControlSignature", "FoldWriteSignature", "FoldUnitSignature", "FoldUnit"]

FOLD_SHIFT_W = 5    # fold_shift of a LANE_ACC_BITS accumulator is at most 25


class FoldControlSignature(wiring.Signature):
    """The sequencer's side of the fold unit.

    Members
    -------
    clear : Out(1)
        Before the first pass: the running maximum and minimum to 0 (``fold_shift``'s initial
        value: 0 is inside every int8 range, so it never raises the shift).
    second : Out(1)
        The beats in flight are the second pass's (write K' into ``dat``), not the first's.
    slot_base : Out(range(dat_depth))
        The slot's first K' word in ``dat`` (``kf_base + slot*CB``).
    retire : In(1)
        A block of K' is done (first pass: in the maximum and minimum; second: written).
    """

    def __init__(self, layout):
        super().__init__({"clear": Out(1), "second": Out(1), "slot_base": Out(range(layout.dat_depth)),
                          "retire": In(1)})


class FoldWriteSignature(wiring.Signature):
    """One lane group of K' mantissas into ``dat`` (the write-back's input).

    Members
    -------
    pre : Out(1)
        A write comes next cycle (the write-back copies its data select per lane group now).
    valid : Out(1)
        Write lanes ``group*LG ..`` of word ``addr`` with ``data``'s same lanes.
    addr : Out(range(dat_depth))
    group : Out(range(max(G, 2)))
    data : Out(data.ArrayLayout(signed(8), P))
        The group's LG bytes in every lane group's lanes (a copy of them per lane group, so that
        each group of ``dat``'s columns takes its bytes from a register of its own).
    """

    def __init__(self, layout):
        super().__init__({"pre": Out(1), "valid": Out(1), "addr": Out(range(layout.dat_depth)),
                          "group": Out(range(max(layout.G, 2))),
                          "data": Out(data.ArrayLayout(signed(8), layout.P))})


class FoldUnitSignature(wiring.Signature):
    """Members of :class:`FoldUnit`.

    Members
    -------
    ctl : In(FoldControlSignature(layout))
    lanes : In(stream.Signature(mac_out_layout(P, TAG_BITS), always_ready=True))
        The MAC's lane results of the fold beats (tag: the block cb), valid-only.
    write : Out(FoldWriteSignature(layout))
    shift : Out(FOLD_SHIFT_W)
        ``fold_shift`` of the first pass's maximum and minimum (settled two cycles after the
        last block retires).
    """

    def __init__(self, layout):
        super().__init__({
            "ctl": In(FoldControlSignature(layout)),
            "lanes": In(stream.Signature(mac_out_layout(layout.P, TAG_BITS), always_ready=True)),
            "write": Out(FoldWriteSignature(layout)),
            "shift": Out(FOLD_SHIFT_W),
        })


class FoldUnit(wiring.Component):
    """``fold_shift`` and ``K' = round_shift(acc, s)`` over the blocks of ``acc = W_q K_i``.

    The sequencer runs the fold beats twice (hw/engine_sequencer.py): ``fold_shift`` needs the
    maximum and minimum over all d channels before any is rounded, and keeping a whole
    ``acc`` (d x 32 bits) would cost more than recomputing it. Each pass gives one P-lane block
    of ``acc`` every d_h beats. Rather than P comparators and P shifters, the unit walks the
    block one lane group (LG lanes) per cycle, G cycles: each group's lanes are captured next to
    the group and passed along a chain of registers through the groups in their order on the
    die, so no wire gathers the lanes from all over it; the next block comes d_h >= G cycles
    later (the engine checks this). The rounded bytes go back as a copy per lane group.

    * first pass: the group's maximum and minimum (a tree, a register per level), then the
      running maximum and minimum. Padding lanes of a partial block are 0 (the fetch zeroes
      their W_q operand), which ``fold_shift`` counts anyway (its max and min start at 0).
    * the shift from those two, every cycle: ``round_shift(x, s) > 127`` iff
      ``x >= 255 * 2^(s-1)`` (s >= 1; ``x > 127`` for s = 0), ``< -127`` iff
      ``x < -255 * 2^(s-1)`` (``x < -127``), so each candidate s is two compares with constants
      (registered) and s is the number of candidates that fail (they fail up to a point and
      then never again).
    * second pass: each lane ``round_shift(x, s)`` (``arith.round_shift_var``: a shifter, then an
      increment), eight bits of it (it fits by the choice of s), registered, then written
      into the group's lanes of the block's K' word through the write-back.

    Members: :class:`FoldUnitSignature`.
    """

    def __init__(self, layout):
        self.layout = layout
        super().__init__(FoldUnitSignature(layout))

    def elaborate(self, platform):
        m = Module()
        L, ctl = self.layout, self.ctl
        P, LG, G = L.P, L.LG, L.G
        acc = signed(LANE_ACC_BITS)
        # Each lane group's lanes are captured in a register of its own a cycle after the block
        # arrives (the MAC's outputs hold until its next lane-mode result, d_h >= G cycles on),
        # then shifted one group a cycle along a chain through the groups in their order on the
        # die (engine_layout.lane_group_chain); the unit reads the chain's head. A multiplexer
        # over the G groups instead would pull all P x 32 wires from the whole die into one place.
        chain = lane_group_chain(G)
        load = replicate(m, self.lanes.valid, G + 1, "fold_load", reset=True)
        cap = [Signal(data.ArrayLayout(acc, LG), name=f"fold_cap{j}", reset_less=True) for j in range(G)]
        for j, gj in enumerate(chain):
            with m.If(load[gj]):
                # (a partial last group's missing lanes read 0, which changes no max or min)
                m.d.sync += [cap[j][i].eq(self.lanes.payload.lanes[gj * LG + i] if gj * LG + i < P else 0)
                             for i in range(LG)]
            if j + 1 < G:
                with m.Else():
                    m.d.sync += cap[j].eq(cap[j + 1])
        # the chain's head this cycle: its k-th group (k = 0 as the block is captured)
        k = Signal(range(max(G, 2)))
        scan = Signal()
        cb = Signal(range(max(L.CB, 2)))
        now = load[G]
        cur_k = Mux(now, 0, k)
        cur_cb = Mux(now, self.lanes.payload.tag, cb)
        active = now | scan
        m.d.sync += [k.eq(cur_k + 1), scan.eq(active & (cur_k != G - 1)), cb.eq(cur_cb)]
        gid = Signal(range(max(G, 2)))
        with m.Switch(cur_k):
            for j, gj in enumerate(chain):
                with m.Case(j):
                    m.d.comb += gid.eq(gj)
        grp = Signal(data.StructLayout({"valid": 1, "last": 1, "g": len(k), "cb": len(cb),
                                        "x": data.ArrayLayout(acc, LG)}))
        head = Signal(data.StructLayout({"valid": 1, "last": 1, "g": len(k), "cb": len(cb)}))
        m.d.sync += [head.valid.eq(active), head.last.eq(cur_k == G - 1), head.g.eq(gid), head.cb.eq(cur_cb)]
        m.d.comb += [grp.valid.eq(head.valid), grp.last.eq(head.last), grp.g.eq(head.g), grp.cb.eq(head.cb),
                     grp.x.eq(cap[0])]
        first_done = self._extremes(m, grp)
        second_done = self._round(m, grp)
        m.d.comb += ctl.retire.eq(first_done | second_done)
        return m

    def _extremes(self, m, grp):
        """First pass: the running maximum and minimum of the blocks, and the shift from them.
        Returns a block retired."""
        ctl = self.ctl
        hi = Signal(signed(LANE_ACC_BITS))
        lo = Signal(signed(LANE_ACC_BITS))
        # one register per tree level, both trees side by side
        his, los, valid, last = list(grp.x), list(grp.x), grp.valid & ~ctl.second, grp.last
        lvl = 0
        while len(his) > 1:
            pairs = range(0, len(his), 2)
            nh = [Signal(signed(LANE_ACC_BITS), name=f"fold_hi{lvl}_{k}") for k in pairs]
            nl = [Signal(signed(LANE_ACC_BITS), name=f"fold_lo{lvl}_{k}") for k in pairs]
            for n, k in enumerate(pairs):
                a, b = (his[k], his[k + 1]) if k + 1 < len(his) else (his[k], his[k])
                c, d = (los[k], los[k + 1]) if k + 1 < len(los) else (los[k], los[k])
                m.d.sync += [nh[n].eq(Mux(a > b, a, b)), nl[n].eq(Mux(c < d, c, d))]
            nv, nla = Signal(name=f"fold_v{lvl}"), Signal(name=f"fold_last{lvl}")
            m.d.sync += [nv.eq(valid), nla.eq(last)]
            his, los, valid, last, lvl = nh, nl, nv, nla, lvl + 1
        with m.If(ctl.clear):
            m.d.sync += [hi.eq(0), lo.eq(0)]
        with m.Elif(valid):
            with m.If(his[0] > hi):
                m.d.sync += hi.eq(his[0])
            with m.If(los[0] < lo):
                m.d.sync += lo.eq(los[0])
        # the shift: candidate s fails when round_shift(hi, s) > 127 or round_shift(lo, s) < -127
        ns = LANE_ACC_BITS - 6      # s = 26 never fails for a 32-bit accumulator
        assert (255 << (ns - 1)) >= 1 << (LANE_ACC_BITS - 1)
        fails = Signal(ns)
        for s in range(ns):
            bound = fixed.MANT_MAX + 1 if s == 0 else 255 << (s - 1)
            m.d.sync += fails[s].eq((hi >= bound) | (lo < -bound + (s == 0)))
        shift = Signal(FOLD_SHIFT_W)
        m.d.sync += shift.eq(0)
        for s in range(ns):
            with m.If(fails[s]):
                m.d.sync += shift.eq(s + 1)
        m.d.comb += self.shift.eq(shift)
        return valid & last

    def _round(self, m, grp):
        """Second pass: the group's K' mantissas, registered, then written. Returns a block
        retired (its last group written)."""
        ctl, w = self.ctl, self.write
        P, LG, G = self.layout.P, self.layout.LG, self.layout.G
        out = Signal(data.StructLayout({"valid": 1, "last": 1, "g": len(grp.g), "addr": len(w.addr),
                                        "x": data.ArrayLayout(signed(8), LG)}))
        now = grp.valid & ctl.second
        m.d.sync += [out.valid.eq(now), out.last.eq(grp.last), out.g.eq(grp.g),
                     out.addr.eq(ctl.slot_base + grp.cb)]
        m.d.sync += [out.x[i].eq(round_shift_var(grp.x[i], self.shift)[:8]) for i in range(LG)]
        # a copy of the bytes per lane group, a cycle on, next to that group's columns of ``dat``
        ctl_d = Signal(data.StructLayout({"valid": 1, "last": 1, "g": len(grp.g), "addr": len(w.addr)}))
        m.d.sync += [ctl_d.valid.eq(out.valid), ctl_d.last.eq(out.last), ctl_d.g.eq(out.g), ctl_d.addr.eq(out.addr)]
        copies = replicate(m, out.x, G, "fold_out")
        m.d.comb += [w.pre.eq(out.valid), w.valid.eq(ctl_d.valid), w.addr.eq(ctl_d.addr), w.group.eq(ctl_d.g)]
        m.d.comb += [w.data[l].eq(copies[l // LG][(l % LG) * 8:(l % LG + 1) * 8]) for l in range(P)]
        return ctl_d.valid & ctl_d.last
