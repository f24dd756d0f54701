"""The sequential engine's projection stage: ``K_i = W_k^T M_i`` (WRITE) or ``q = W_q^T s``
(RECALL)."""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..engine import EXP_W
from .signatures import (Control, MacPort, OperandA, OperandB, beat, element, is_element, job_layout, lane_bits,
                         read_port, requantize, step_lane, write_port)

__all__ = ["Projection"]


class Projection(wiring.Component):
    """Projects the vector in ``vin`` (``dat`` words ``0..CB-1``) through ``W_k`` (WRITE, the
    second half of ``w``) or ``W_q`` (RECALL, the first half) one output element ``j`` at a time:
    a dot product of column ``j`` (``w`` words ``ptr..ptr+CB-1``) with the vector, ``d`` beats,
    then requantized by the weights' shift into ``key`` slot ``slot`` (WRITE, one key lane of
    one key word) or into the query buffer (RECALL).

    Its first cycle writes the slot's exponents (WRITE: ``mexp[slot] = vexp0``,
    ``kexp[slot] = vexp0 + wk_exp + wk_shift``) and sends q's exponent,
    ``vexp0 + wq_exp + wq_shift``, to the scores (``q_exp``). ``done`` in the cycle the last
    element is written.

    Members
    -------
    ctl : In(Control)
    job : In(job_layout)
    wq_exp, wk_exp, wq_shift, wk_shift : In
        As in :class:`~hmtx.hw.engine.EngineSignature`.
    mac : Out(MacPort)
    dat, w : In(memory.ReadPort.Signature)
        ``dat``'s and ``w``'s read ports (addresses only: the words go to the multiplier).
    key_w, qbuf_w, mexp_w, kexp_w : In(memory.WritePort.Signature)
        The results' memories.
    q_exp : Out(stream.Signature(signed(EXP_W), always_ready=True))
    """

    def __init__(self, e):
        self._e = e
        c = e.config
        word = data.ArrayLayout(signed(8), e.P)
        super().__init__({
            "ctl": In(Control), "job": In(job_layout(e)),
            **{name: In(e.signature.members[name].shape) for name in ("wq_exp", "wk_exp", "wq_shift", "wk_shift")},
            "mac": Out(MacPort(e)),
            "dat": In(read_port(e.dat_depth, word)),
            "w": In(read_port(2 * c.d_h * e.CB, word)),
            "key_w": In(write_port(c.n_slots * e.KB, data.ArrayLayout(signed(16), e.KP), granularity=1)),
            "qbuf_w": In(write_port(max(c.d_h, c.head_dim), signed(16))),
            "mexp_w": In(write_port(c.n_slots, signed(8))),
            "kexp_w": In(write_port(c.n_slots, signed(EXP_W))),
            "q_exp": Out(stream.Signature(signed(EXP_W), always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        e, job, fetch = self._e, self.job, self.mac.fetch
        c, P, CB = e.config, e.P, e.CB
        o_word = Signal(range(e.HB + 1))        # output element j, as (word, lane)
        o_lane = Signal(lane_bits(P))
        i_word = Signal(range(CB + 1))          # beat: element of the vector, as (word, lane)
        i_lane = Signal(lane_bits(P))
        ptr = Signal(range(2 * c.d_h * CB + 1))   # column j's first w word

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.ctl.start):
                    m.next = "START"
            with m.State("START"):
                with m.If(job.write):
                    m.d.comb += [self.mexp_w.addr.eq(job.slot), self.mexp_w.data.eq(job.vexp0), self.mexp_w.en.eq(1),
                                 self.kexp_w.addr.eq(job.slot), self.kexp_w.en.eq(1),
                                 self.kexp_w.data.eq(job.vexp0 + self.wk_exp + self.wk_shift)]
                m.d.comb += [self.q_exp.valid.eq(1), self.q_exp.payload.eq(job.vexp0 + self.wq_exp + self.wq_shift)]
                m.d.sync += [o_word.eq(0), o_lane.eq(0), i_word.eq(0), i_lane.eq(0),
                             ptr.eq(Mux(job.write, c.d_h * CB, 0))]
                m.next = "BEATS"
            with m.State("BEATS"):
                m.d.comb += [self.dat.addr.eq(i_word), self.w.addr.eq(ptr + i_word),
                             *beat(fetch, OperandA.DAT, OperandB.W, i_lane, first=is_element(P, i_word, i_lane, 0),
                                   last=is_element(P, i_word, i_lane, c.d - 1))]
                m.d.sync += step_lane(P, i_word, i_lane)
                with m.If(fetch.last):
                    m.next = "ACC"
            with m.State("ACC"):
                with m.If(self.mac.acc.valid):
                    m.d.comb += requantize(self.mac.rq, Mux(job.write, self.wk_shift, self.wq_shift))
                    m.next = "STORE"
            with m.State("STORE"):
                y = self.mac.y.payload
                with m.If(self.mac.y.valid):
                    with m.If(job.write):
                        _, k_lane = e.key_place(o_lane)
                        m.d.comb += [self.key_w.addr.eq(job.slot * e.KB + e.key_word(o_word, o_lane)),
                                     self.key_w.en.eq(Const(1, e.KP) << k_lane)]
                        m.d.comb += [self.key_w.data[k].eq(y) for k in range(e.KP)]
                    with m.Else():
                        m.d.comb += [self.qbuf_w.addr.eq(element(P, o_word, o_lane)), self.qbuf_w.data.eq(y), self.qbuf_w.en.eq(1)]
                    m.d.sync += [i_word.eq(0), i_lane.eq(0), ptr.eq(ptr + CB), *step_lane(P, o_word, o_lane)]
                    with m.If(is_element(P, o_word, o_lane, c.d_h - 1)):
                        m.d.comb += self.ctl.done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "BEATS"
        return m
