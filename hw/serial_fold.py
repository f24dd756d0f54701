"""Contract 2's fold in the sequential engine (:class:`~hmtx.hw.serial_engine.SerialEngine`):
the folded key ``K'_i = W_q K_i`` of a WRITE, on the shared multiplier and requantizer."""

from amaranth.hdl import Const, Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed

from .engine import EXP_W
from .serial_signatures import (Control, MacPort, OperandA, OperandB, beat, is_element, job_layout, lane_bits,
                                read_port, requantize, step_lane, write_port)

__all__ = ["Fold", "fold_shift_bound"]


def fold_shift_bound(d_h: int) -> int:
    """The largest ``fixed.fold_shift`` of a fold over ``d_h`` terms: ``|acc| <= 127 * 2^15 * d_h``
    and ``round_shift(x, s)`` stays in int8 once ``|x| < 255 * 2^(s-1)``."""
    bound, s = fixed.MANT_MAX * (1 << 15) * d_h, 1
    while bound >= 255 << (s - 1):
        s += 1
    return s


class Fold(wiring.Component):
    """After a contract-2 WRITE's projection (K_i in the query buffer, int16 per element): per
    output element ``c`` (``d`` of them) the dot product ``acc[c] = sum_j W_q[c, j] K_i[j]``,
    ``d_h`` beats of the query buffer's ``j`` with lane ``c`` of ``w`` word ``j * CB + c // P``
    (column ``j`` of W_q, as the projection reads it), then ``round_shift(acc[c], s)`` into
    lane ``c % P`` of ``dat`` word ``kf_base + slot * CB + c // P``, and finally
    ``kexp[slot] = vexp0 + wk_exp + wk_shift + wq_exp + s``.

    ``s = fixed.fold_shift(acc)`` needs every ``acc[c]`` before the first is rounded, and
    keeping them would take d x ~35 bits; so, as the lane engine does, the dot products run
    twice. The first pass finds ``s`` without a comparator over the accumulator: each
    ``acc[c]`` is requantized by the current ``s`` (16-bit saturation keeps an out-of-range value
    out of range) and while the result is outside [-127, 127] ``s`` grows by one and the
    accumulator, still held, is requantized again. Being in range only gets easier as ``s``
    grows, so ``s`` ends as the largest of the per-element shifts, which is ``fold_shift``; it
    grows at most :func:`fold_shift_bound` times in all. The second pass rounds by that ``s``
    (the requantizer's round half up is ``round_shift``; the result fits int8, so it never
    saturates).

    About ``2 * d * (d_h + 6 + s)`` cycles plus the first pass's retries; ``done`` in the cycle
    ``kexp`` is written.

    Members
    -------
    ctl : In(Control)
    job : In(job_layout)
    wq_exp, wk_exp, wk_shift : In
        As in :class:`~hmtx.hw.engine.EngineSignature`.
    mac : Out(MacPort)
    w : In(memory.ReadPort.Signature)
        ``w``'s read port (address only: the words go to the multiplier).
    dat_w, kexp_w : In(memory.WritePort.Signature)
        K'_i's mantissas and exponent.
    """

    def __init__(self, e):
        self._e = e
        c = e.config
        word = data.ArrayLayout(signed(8), e.P)
        super().__init__({
            "ctl": In(Control), "job": In(job_layout(e)),
            **{name: In(e.signature.members[name].shape) for name in ("wq_exp", "wk_exp", "wk_shift")},
            "mac": Out(MacPort(e)),
            "w": In(read_port(2 * c.d_h * e.CB, word)),
            "dat_w": In(write_port(e.dat_depth, word, granularity=1)),
            "kexp_w": In(write_port(c.n_slots, signed(EXP_W))),
        })

    def elaborate(self, platform):
        m = Module()
        e, job, fetch, mac = self._e, self.job, self.mac.fetch, self.mac
        c, P, CB = e.config, e.P, e.CB
        o_word = Signal(range(CB + 1))          # output element c, as (word, lane)
        o_lane = Signal(lane_bits(P))
        j = Signal(range(c.d_h + 1))            # beat: element of K_i
        wj = Signal(range(c.d_h * CB + 1))      # j * CB, W_q's column j (no multiplier)
        second = Signal()                       # the rounding pass
        shift = Signal(range(fold_shift_bound(c.d_h) + 1))
        y = mac.y.payload

        def next_element():
            m.d.sync += [j.eq(0), wj.eq(0), *step_lane(P, o_word, o_lane)]
            m.next = "BEATS"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.ctl.start):
                    m.d.sync += [o_word.eq(0), o_lane.eq(0), j.eq(0), wj.eq(0), second.eq(0), shift.eq(0)]
                    m.next = "BEATS"
            with m.State("BEATS"):
                m.d.comb += [self.w.addr.eq(wj + o_word),
                             *beat(fetch, OperandA.QBUF, OperandB.W, o_lane, first=j == 0, last=j == c.d_h - 1,
                                   idx=j)]
                m.d.sync += [j.eq(j + 1), wj.eq(wj + CB)]
                with m.If(fetch.last):
                    m.next = "ACC"
            with m.State("ACC"):
                with m.If(mac.acc.valid):
                    m.d.comb += requantize(mac.rq, shift)
                    m.next = "ROUND"
            with m.State("ROUND"):
                last = is_element(P, o_word, o_lane, c.d - 1)
                with m.If(mac.y.valid & ~second):
                    with m.If((y > fixed.MANT_MAX) | (y < -fixed.MANT_MAX)):
                        # (the accumulator holds: no beat runs until this element is settled)
                        m.d.sync += shift.eq(shift + 1)
                        m.d.comb += requantize(mac.rq, shift + 1)
                    with m.Elif(last):
                        m.d.sync += [second.eq(1), o_word.eq(0), o_lane.eq(0), j.eq(0), wj.eq(0)]
                        m.next = "BEATS"
                    with m.Else():
                        next_element()
                with m.If(mac.y.valid & second):
                    m.d.comb += [self.dat_w.addr.eq(e.kf_base + job.slot * CB + o_word),
                                 self.dat_w.en.eq(Const(1, P) << o_lane)]
                    m.d.comb += [self.dat_w.data[lane].eq(y[:8]) for lane in range(P)]
                    with m.If(last):
                        m.next = "EXP"
                    with m.Else():
                        next_element()
            with m.State("EXP"):
                m.d.comb += [self.kexp_w.addr.eq(job.slot), self.kexp_w.en.eq(1),
                             self.kexp_w.data.eq(job.vexp0 + self.wk_exp + self.wk_shift + self.wq_exp + shift),
                             self.ctl.done.eq(1)]
                m.next = "IDLE"
        return m
