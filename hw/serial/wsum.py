"""The sequential engine's last stage: the weighted sums, written back as results."""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed

from .signatures import (Control, MacPort, OperandA, OperandB, beat, is_element, job_layout, lane_bits, read_port,
                         requantize, step_lane, write_port)

__all__ = ["WeightedSum"]


class WeightedSum(wiring.Component):
    """Per output element ``x`` (``d`` for RECALL, ``head_dim`` for ATTENTION):
    ``out[x] = sat16(round_shift(sum_b w_b V_b[x], 7))`` over the keys, with the weights from
    ``wm`` and ``V_b`` the memory slot ``b`` (RECALL) or V row ``b`` (ATTENTION, ``dat`` words
    from ``(MQ + MK) * AB``): ``n_keys`` beats, the accumulator, the requantizer, then the
    result written back into row ``a`` of the results in ``dat``, its low byte at
    ``out_base + 2 * (a * AB + word)`` and its high byte at the next word, one lane each.

    ``done`` in the cycle the last high byte is written.

    Members
    -------
    ctl : In(Control)
    job : In(job_layout)
    mac : Out(MacPort)
    dat : In(memory.ReadPort.Signature)
        ``dat``'s read port (addresses only: the words go to the multiplier).
    dat_w : In(memory.WritePort.Signature)
        ``dat``'s write port.
    """

    def __init__(self, e):
        self._e = e
        word = data.ArrayLayout(signed(8), e.P)
        super().__init__({
            "ctl": In(Control), "job": In(job_layout(e)),
            "mac": Out(MacPort(e)),
            "dat": In(read_port(e.dat_depth, word)),
            "dat_w": In(write_port(e.dat_depth, word, granularity=1)),
        })

    def elaborate(self, platform):
        m = Module()
        e, job, fetch = self._e, self.job, self.mac.fetch
        c, P, AB, CB = e.config, e.P, e.AB, e.CB
        MQ, MK = c.max_queries, c.max_keys
        o_word = Signal(range(max(CB, AB) + 1))           # element, as (word, lane)
        o_lane = Signal(lane_bits(P))
        i = Signal(range(e.KMAX + 1))                     # beat: key
        vptr = Signal(range(e.dat_depth + max(CB, AB) + 1))     # V_i's word of element x
        res = Signal(signed(16))                          # a result between its two writes
        base = Mux(job.attn, (MQ + MK) * AB, e.mem_base)
        out_addr = e.out_base + 2 * (job.row_ptr + o_word)
        lane_en = Const(1, P) << o_lane

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.ctl.start):
                    m.d.sync += [o_word.eq(0), o_lane.eq(0), i.eq(0), vptr.eq(base)]
                    m.next = "BEATS"
            with m.State("BEATS"):
                m.d.comb += [self.dat.addr.eq(vptr),
                             *beat(fetch, OperandA.WM, OperandB.DAT, o_lane, first=i == 0, last=i == job.n_keys - 1,
                                   idx=i)]
                m.d.sync += [i.eq(i + 1), vptr.eq(vptr + Mux(job.attn, AB, CB))]
                with m.If(fetch.last):
                    m.next = "ACC"
            with m.State("ACC"):
                with m.If(self.mac.acc.valid):
                    m.d.comb += requantize(self.mac.rq, fixed.OUT_SHIFT)
                    m.next = "LO"
            with m.State("LO"):
                with m.If(self.mac.y.valid):
                    m.d.comb += [self.dat_w.addr.eq(out_addr), self.dat_w.en.eq(lane_en)]
                    m.d.comb += [self.dat_w.data[lane].eq(self.mac.y.payload[:8]) for lane in range(P)]
                    m.d.sync += res.eq(self.mac.y.payload)
                    m.next = "HI"
            with m.State("HI"):
                m.d.comb += [self.dat_w.addr.eq(out_addr | 1), self.dat_w.en.eq(lane_en)]
                m.d.comb += [self.dat_w.data[lane].eq(res[8:]) for lane in range(P)]
                m.d.sync += [i.eq(0), vptr.eq(base + o_word + (o_lane == P - 1)), *step_lane(P, o_word, o_lane)]
                with m.If(Mux(job.attn, is_element(P, o_word, o_lane, c.head_dim - 1),
                              is_element(P, o_word, o_lane, c.d - 1))):
                    m.d.comb += self.ctl.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "BEATS"
        return m
