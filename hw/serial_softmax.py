"""The sequential engine's softmax: scores to probabilities and aligned weights."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed

from .arith import Reciprocal
from .engine import EXP_W
from .serial_signatures import Control, MacPort, job_layout, read_port, requantize, write_port

__all__ = ["Softmax"]


class Softmax(wiring.Component):
    """``fixed.softmax`` of one row of scores and the weights of the row's weighted sums, in
    three passes over the keys ``b < n_keys``, after collecting the scores:

    * collect: each score from the scores stage (``score``) into ``sc[b]``, and the largest score
      of an attended key;
    * exp2: ``e_b = round_shift(LUT[v & 255], v >> 8)`` with ``v = max - t_b`` (0 for a key
      not attended or ``v >> 8 >= EXP2_CUTOFF``) back into ``sc[b]``, their sum, and ``E``, the
      largest value exponent (``mexp[b]``, RECALL, or ``vexp[MQ + MK + b]``, ATTENTION) of an
      attended key;
    * the reciprocal ``r = floor(2^40 / sum)`` (:class:`~hmtx.hw.arith.Reciprocal`);
    * probabilities ``p_b = min(round_shift(e_b * r, 25), 32767)`` into ``pm[b]`` and weights
      ``w_b = round_shift(p_b, min(E - v_exp_b, 16))`` (0 for a key not attended) into ``wm[b]``.

    Owns ``sc`` (scores, then exp2 terms) and ``lut`` (the exp2 table). ``start`` with the
    scores stage's; ``done`` in the cycle the last weight is written. ``big_e`` holds ``E`` from
    then until the next row's exp2 pass.

    Members
    -------
    ctl : In(Control)
    job : In(job_layout)
    score : In(stream.Signature(signed(SCORE_BITS), always_ready=True))
    mac : Out(MacPort)
        Only its requantizer.
    vexp, mexp : In(memory.ReadPort.Signature)
    pm_w, wm_w : In(memory.WritePort.Signature)
    big_e : Out(signed(EXP_W))
    """

    def __init__(self, e):
        self._e = e
        c = e.config
        # (no read needs a write's data in the same cycle: see Engine)
        self.sc = memory.Memory(shape=signed(fixed.SCORE_BITS), depth=e.KMAX, init=[], attrs={"no_rw_check": 1})
        self.lut = memory.Memory(shape=unsigned(fixed.EXP2_BITS + 1), depth=1 << fixed.SCORE_FRAC,
                                 init=fixed.exp2_lut())
        super().__init__({
            "ctl": In(Control), "job": In(job_layout(e)),
            "score": In(stream.Signature(signed(fixed.SCORE_BITS), always_ready=True)),
            "mac": Out(MacPort(e)),
            "vexp": In(read_port(e.ROWS, signed(8))),
            "mexp": In(read_port(c.n_slots, signed(8))),
            "pm_w": In(write_port(e.KMAX, unsigned(16))),
            "wm_w": In(write_port(e.KMAX, unsigned(16))),
            "big_e": Out(signed(EXP_W)),
        })
        self._sc_r, self._sc_w = self.sc.read_port(), self.sc.write_port()
        self._lut_r = self.lut.read_port()

    def elaborate(self, platform):
        m = Module()
        e, job, mac = self._e, self.job, self.mac
        c = e.config
        m.submodules.sc, m.submodules.lut = self.sc, self.lut
        m.submodules.recip = recip = Reciprocal(32)
        m.d.comb += recip.o.ready.eq(1)
        b = Signal(range(e.KMAX + 1))
        score_max = Signal(signed(fixed.SCORE_BITS))
        big_e = self.big_e
        exp_sum = Signal(32)
        rcp = Signal(26)          # floor(2^40 / sum) < 2^26 because sum >= LUT[0] = 2^15
        keep = Signal()           # key b is attended (registered)
        ve = Signal(signed(8))    # its value exponent
        live = Signal()           # exp2 pass: its term is not cut off
        shift_n = Signal(4)
        y = mac.y.payload

        m.d.comb += self.mexp.addr.eq(b)
        v_exp = Mux(job.attn, self.vexp.data, self.mexp.data)
        keep_b = ~(job.attn & job.causal) | (b <= job.keep_lim)
        vexp_addr = c.max_queries + c.max_keys + b

        def store(value):
            m.d.comb += [self._sc_w.addr.eq(b), self._sc_w.data.eq(value), self._sc_w.en.eq(1)]

        def next_key(this_state, next_state, done=False):
            with m.If(b == job.n_keys - 1):
                m.d.sync += b.eq(0)
                if done:
                    m.d.comb += self.ctl.done.eq(1)
                m.next = next_state
            with m.Else():
                m.d.sync += b.eq(b + 1)
                m.next = this_state

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.ctl.start):
                    m.d.sync += [b.eq(0), score_max.eq(-(1 << (fixed.SCORE_BITS - 1)))]
                    m.next = "COLLECT"
            with m.State("COLLECT"):
                with m.If(self.score.valid):
                    store(self.score.payload)
                    with m.If(keep_b & (self.score.payload > score_max)):
                        m.d.sync += score_max.eq(self.score.payload)
                    with m.If(b == job.n_keys - 1):
                        m.d.sync += [exp_sum.eq(0), big_e.eq(-(1 << (EXP_W - 1)))]
                    next_key("COLLECT", "EXP_READ")

            # --- exp2 pass ----------------------------------------------------------------------
            with m.State("EXP_READ"):
                m.d.comb += [self._sc_r.addr.eq(b), self.vexp.addr.eq(vexp_addr)]
                m.next = "EXP_LUT"
            with m.State("EXP_LUT"):
                v = Signal(signed(fixed.SCORE_BITS + 2))
                m.d.comb += [v.eq(score_max - self._sc_r.data), self._lut_r.addr.eq(v[:fixed.SCORE_FRAC])]
                n_int = v >> fixed.SCORE_FRAC
                m.d.sync += [keep.eq(keep_b), live.eq(keep_b & (n_int < fixed.EXP2_CUTOFF)), shift_n.eq(n_int[:4])]
                with m.If(keep_b & (v_exp > big_e)):
                    m.d.sync += big_e.eq(v_exp)
                m.next = "EXP_TERM"
            with m.State("EXP_TERM"):
                with m.If(live):
                    m.d.comb += requantize(mac.rq, shift_n, wide=1, x=self._lut_r.data)
                    m.next = "EXP_STORE"
                with m.Else():
                    store(0)
                    next_key("EXP_READ", "DIV_START")
            with m.State("EXP_STORE"):
                with m.If(mac.y.valid):
                    store(y)
                    m.d.sync += exp_sum.eq(exp_sum + y)
                    next_key("EXP_READ", "DIV_START")

            # --- the reciprocal of the sum ----------------------------------------------------
            with m.State("DIV_START"):
                m.d.comb += [recip.i.valid.eq(1), recip.i.payload.eq(exp_sum)]
                with m.If(recip.i.ready):
                    m.next = "DIV"
            with m.State("DIV"):
                with m.If(recip.o.valid):
                    m.d.sync += rcp.eq(recip.o.payload)
                    m.next = "PROB_READ"

            # --- probabilities and weights ------------------------------------------------------
            with m.State("PROB_READ"):
                m.d.comb += [self._sc_r.addr.eq(b), self.vexp.addr.eq(vexp_addr)]
                m.next = "PROB_MUL"
            with m.State("PROB_MUL"):
                m.d.comb += requantize(mac.rq, fixed.RECIP_BITS - fixed.PROB_BITS, x=rcp, m=self._sc_r.data[:16])
                m.d.sync += [keep.eq(keep_b), ve.eq(v_exp)]
                m.next = "PROB_P"
            with m.State("PROB_P"):
                with m.If(mac.y.valid):
                    m.d.comb += [self.pm_w.addr.eq(b), self.pm_w.data.eq(y), self.pm_w.en.eq(1)]
                    ediff = big_e - ve
                    m.d.comb += requantize(mac.rq, Mux(ediff > fixed.ALIGN_CUTOFF, fixed.ALIGN_CUTOFF, ediff), x=y)
                    m.next = "PROB_W"
            with m.State("PROB_W"):
                with m.If(mac.y.valid):
                    m.d.comb += [self.wm_w.addr.eq(b), self.wm_w.data.eq(Mux(keep, y, 0)), self.wm_w.en.eq(1)]
                    next_key("PROB_READ", "IDLE", done=True)
        return m
