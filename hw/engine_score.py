"""Score unit of the lane engine: a dot product's scale and requantization into a score t, and
the running maximum of the kept scores."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed

from .arith import ShiftRoundSat
from .engine_exponents import ScoreExponentsSignature
from .engine_layout import EXP_W, MASK_W, TAG_BITS
from .mac import mac_out_layout

__all__ = ["ScoreControlSignature", "ScoresSignature", "ScoreUnitSignature", "ScoreUnit"]


class ScoreControlSignature(wiring.Signature):
    """The sequencer's side of the score unit.

    Members
    -------
    attn : Out(1)
        ATTENTION (the head's score scale, and value exponents from ``vexp``).
    causal : Out(1)
        ATTENTION or ATTN_PASS with a causal mask: key b counts towards the maximum iff
        ``b <= keep_lim`` (the row plus the diagonal).
    keep_lim : Out(signed(18))
    clear : Out(1)
        Start a new maximum (the cycle before the first score beat).
    retire : In(1)
        A score is written (the sequencer's count of results in flight).
    """

    def __init__(self):
        super().__init__({"attn": Out(1), "causal": Out(1), "keep_lim": Out(signed(18)),
                          "clear": Out(1), "retire": In(1)})


class ScoresSignature(wiring.Signature):
    """The scores as the score unit makes them (the softmax's input).

    Members
    -------
    t : Out(stream.Signature({idx: 16, t: signed(SCORE_BITS)}, always_ready=True))
        Score t of key ``idx``, to be written into ``sc``; valid-only (written as it comes).
    max : Out(signed(SCORE_BITS))
        The maximum of the kept scores so far (final four or more cycles after the last score).
    """

    def __init__(self):
        super().__init__({
            "t": Out(stream.Signature(data.StructLayout({"idx": 16, "t": signed(fixed.SCORE_BITS)}),
                                      always_ready=True)),
            "max": Out(signed(fixed.SCORE_BITS)),
        })


class ScoreUnitSignature(wiring.Signature):
    """Members of :class:`ScoreUnit`.

    Members
    -------
    ctl : In(ScoreControlSignature())
    dot : In(stream.Signature(mac_out_layout(P, TAG_BITS), always_ready=True))
        The MAC's score dot products (tag: the key), valid-only.
    exps : In(ScoreExponentsSignature())
        The exponent tables' reads for the scores: k_exp of the key, q_exp.
    scores : Out(ScoresSignature())
    """

    def __init__(self, layout):
        super().__init__({
            "ctl": In(ScoreControlSignature()),
            "dot": In(stream.Signature(mac_out_layout(layout.P, TAG_BITS), always_ready=True)),
            "exps": In(ScoreExponentsSignature()),
            "scores": Out(ScoresSignature()),
        })


class ScoreUnit(wiring.Component):
    """``t = shift_round_sat(acc * mult, shift - 8 - q_exp - k_exp[b], 32)`` per dot product,
    and the running maximum of the kept scores.

    ``acc * mult`` (``mult < 2^16``, the score scale of ``fixed.score_scale``: of ``d_h`` for a
    recall, ``head_dim`` for attention) is three 17-bit slices of ``acc``, one MULT18X18D each
    with a register after it (``sc0_p<k>``), summed in the next stage (``sc1``), then a
    :class:`~hmtx.hw.arith.ShiftRoundSat` (4 cycles); a score leaves 6 cycles after its dot
    product. k_exp of key b is read with the result's tag, there at ``sc0`` (the table's
    synchronous read); ``shift - 8 - q_exp`` is registered every cycle (q_exp is fixed long
    before the first score).

    The maximum runs one cycle behind the scores: the kept score is registered first, so the
    compare starts from flip-flops (the exp2 pass reads the maximum no sooner than four cycles
    after the last score: the sequencer's pending count, its state change, the issue, ex1).

    Members: :class:`ScoreUnitSignature`.
    """

    def __init__(self, layout):
        self.layout = layout
        super().__init__(ScoreUnitSignature(layout))

    def elaborate(self, platform):
        m = Module()
        c, ctl = self.layout.config, self.ctl
        m.submodules.score_rq = score_rq = ShiftRoundSat(64, fixed.SCORE_BITS, MASK_W, tag_bits=TAG_BITS)
        m.d.comb += score_rq.o.ready.eq(1)
        score_mult = [fixed.score_scale(c.d_h), fixed.score_scale(c.head_dim)]
        mo = self.dot.payload
        m.d.comb += self.exps.key.eq(mo.tag[:16])
        assert max(sm[0] for sm in score_mult) < (1 << 17) and fixed.ACC_BITS <= 51
        sc0_valid = Signal()
        sc0_p = [Signal(signed(36), name=f"sc0_p{k}", reset_less=True) for k in range(3)]
        sc0_tag = Signal(TAG_BITS, reset_less=True)
        sc1_valid = Signal()
        sc1_x = Signal(signed(64), reset_less=True)
        sc1_s = Signal(signed(MASK_W), reset_less=True)
        sc1_tag = Signal(TAG_BITS, reset_less=True)
        mult = Mux(ctl.attn, score_mult[1][0], score_mult[0][0])
        sshift = Mux(ctl.attn, score_mult[1][1], score_mult[0][1])
        dot_sl = [mo.dot[0:17], mo.dot[17:34], mo.dot[34:].as_signed()]
        sc_base = Signal(signed(EXP_W + 8), reset_less=True)
        m.d.sync += sc_base.eq(sshift - fixed.SCORE_FRAC - self.exps.q_exp)
        m.d.sync += [sc0_valid.eq(self.dot.valid), sc0_tag.eq(mo.tag)]
        m.d.sync += [sc0_p[k].eq(dot_sl[k] * mult) for k in range(3)]
        m.d.sync += [sc1_valid.eq(sc0_valid),
                     sc1_x.eq((sc0_p[2] << 34) + (sc0_p[1] << 17) + sc0_p[0]),
                     sc1_s.eq(sc_base - self.exps.key_exp), sc1_tag.eq(sc0_tag)]
        m.d.comb += [score_rq.i.valid.eq(sc1_valid), score_rq.i.payload.x.eq(sc1_x),
                     score_rq.i.payload.s.eq(sc1_s), score_rq.i.payload.tag.eq(sc1_tag)]
        t_b = score_rq.o.payload.y
        b_out = score_rq.o.payload.tag[:16]
        out = self.scores
        m.d.comb += [out.t.valid.eq(score_rq.o.valid), out.t.payload.idx.eq(b_out), out.t.payload.t.eq(t_b),
                     ctl.retire.eq(score_rq.o.valid)]
        score_max = Signal(signed(fixed.SCORE_BITS), reset_less=True)   # cleared before each row
        smax_ok = Signal()
        smax_t = Signal.like(t_b, reset_less=True)
        m.d.sync += [smax_ok.eq(score_rq.o.valid & (~ctl.causal | (b_out.as_signed() <= ctl.keep_lim))),
                     smax_t.eq(t_b)]
        # the clear comes from the sequencer's state decode; registered, it is off the running
        # maximum's compare loop (it arrives at SCORE_START, long before the row's first score)
        clear = Signal()
        m.d.sync += clear.eq(ctl.clear)
        with m.If(clear):
            m.d.sync += score_max.eq(-(1 << (fixed.SCORE_BITS - 1)))
        with m.If(smax_ok & (smax_t > score_max)):
            m.d.sync += score_max.eq(smax_t)
        # the softmax reads the maximum from a copy: the compare loop's flip-flops stay by the
        # compare, not pulled towards the softmax's subtractor (EXP's first read of it is at least
        # two cycles after the row's last score updates score_max)
        max_copy = Signal.like(score_max, reset_less=True)
        m.d.sync += max_copy.eq(score_max)
        m.d.comb += out.max.eq(max_copy)
        return m
