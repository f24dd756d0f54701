"""Score unit of the lane engine: a dot product's scale and requantization into a score t, and
the running maximum of the kept scores."""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed

from .arith import ShiftRoundSat
from .engine_exponents import ScoreExponentsSignature
from .engine_layout import EXP_W, MASK_W, SCORE_TAG, TAG_BITS
from .mac import mac_out_layout

__all__ = ["ScoreControlSignature", "ScoresSignature", "ScoreUnitSignature", "ScoreUnit"]


class ScoreControlSignature(wiring.Signature):
    """The sequencer's side of the score unit.

    Members
    -------
    attn : Out(1)
        ATTENTION (the head's score scale, and value exponents from ``vexp``).
    retire : In(1)
        A score is written (the sequencer's count of results in flight).
    scored : In(stream.Signature(1, always_ready=True))
        A row's last score is written and its maximum latched (payload: the row's bank).
    """

    def __init__(self):
        super().__init__({"attn": Out(1), "retire": In(1),
                          "scored": In(stream.Signature(1, always_ready=True))})


class ScoresSignature(wiring.Signature):
    """The scores as the score unit makes them (the softmax's input).

    Members
    -------
    t : Out(stream.Signature({idx: 16, bank: 1, t: signed(SCORE_BITS)}, always_ready=True))
        Score t of key ``idx`` of the row in ``bank``, to be written into ``sc``; valid-only
        (written as it comes).
    max : Out(ArrayLayout(signed(SCORE_BITS), 2))
        The maximum of the kept scores of the last row scored into each bank (latched a cycle
        after the row's last score; the identity of max, -2^31, when the row kept none).
    """

    def __init__(self):
        super().__init__({
            "t": Out(stream.Signature(data.StructLayout({"idx": 16, "bank": 1, "t": signed(fixed.SCORE_BITS)}),
                                      always_ready=True)),
            "max": Out(data.ArrayLayout(signed(fixed.SCORE_BITS), 2)),
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
    and each row's maximum of the kept scores. Everything about a score's row comes with it in
    its tag (:data:`~hmtx.hw.engine_layout.SCORE_TAG`: key, keep, bank, last), so one row's
    last scores and the next row's first can follow each other through the pipeline.

    ``acc * mult`` (``mult < 2^16``, the score scale of ``fixed.score_scale``: of ``d_h`` for a
    recall, ``head_dim`` for attention) is three 17-bit slices of ``acc``, one MULT18X18D each
    with a register after it (``sc0_p<k>``), summed over the next two stages (``sca``: slice 1
    plus slice 0's bits above 17; ``sc1``: plus slice 2), then a
    :class:`~hmtx.hw.arith.ShiftRoundSat` (4 cycles); a score leaves 7 cycles after its dot
    product. k_exp of key b is read with the result's tag from both tables (K_i's, K row b's),
    there at ``sc0`` (their synchronous reads), and registered at ``sca`` beside
    ``shift - 8 - q_exp`` (q_exp of the row's bank, fixed long before the first score); ``sc1``
    subtracts the operation's.

    The maximum runs one cycle behind the scores: the kept score is registered first, so the
    compare starts from flip-flops. A row's first score (key 0) restarts it; a cycle after its
    last one it is latched into ``max[bank]`` and the row reported ``scored``.

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
        tag = data.View(SCORE_TAG, mo.tag[:SCORE_TAG.size])
        m.d.comb += [self.exps.key.eq(tag.key), self.exps.bank.eq(tag.bank)]
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
        # The low 17 bits of sc0_p0 need no add; the rest is summed over two stages (sca, sc1),
        # since one three-operand add of 47 bits after the DSP registers missed 100 MHz. The key's
        # exponents (both tables' reads by the tag) are registered at sca, beside the row's base;
        # the operation's is picked and subtracted at sc1.
        sca_valid = Signal()
        sca_lo = Signal(17, reset_less=True)
        sca_mid = Signal(signed(38), reset_less=True)
        sca_hi = Signal(signed(36), reset_less=True)
        sca_base = Signal.like(sc_base, reset_less=True)
        sca_ke = [Signal(signed(EXP_W), reset_less=True, name=f"sca_ke{k}") for k in range(2)]
        sca_tag = Signal(TAG_BITS, reset_less=True)
        m.d.sync += [sca_valid.eq(sc0_valid), sca_lo.eq(sc0_p[0][:17]),
                     sca_mid.eq(sc0_p[1] + (sc0_p[0] >> 17)), sca_hi.eq(sc0_p[2]),
                     sca_base.eq(sc_base), sca_ke[0].eq(self.exps.slot_exp), sca_ke[1].eq(self.exps.row_exp),
                     sca_tag.eq(sc0_tag)]
        m.d.sync += [sc1_valid.eq(sca_valid),
                     sc1_x.eq(Cat(sca_lo, (sca_hi << 17) + sca_mid).as_signed()),
                     sc1_s.eq(sca_base - Mux(ctl.attn, sca_ke[1], sca_ke[0])), sc1_tag.eq(sca_tag)]
        m.d.comb += [score_rq.i.valid.eq(sc1_valid), score_rq.i.payload.x.eq(sc1_x),
                     score_rq.i.payload.s.eq(sc1_s), score_rq.i.payload.tag.eq(sc1_tag)]
        t_b = score_rq.o.payload.y
        tag_out = data.View(SCORE_TAG, score_rq.o.payload.tag[:SCORE_TAG.size])
        out = self.scores
        m.d.comb += [out.t.valid.eq(score_rq.o.valid), out.t.payload.idx.eq(tag_out.key),
                     out.t.payload.bank.eq(tag_out.bank), out.t.payload.t.eq(t_b),
                     ctl.retire.eq(score_rq.o.valid)]
        none = -(1 << (fixed.SCORE_BITS - 1))
        score_max = Signal(signed(fixed.SCORE_BITS), reset_less=True)
        # the score registered with its row's flags, each already qualified by ``valid`` (a cycle
        # without a score changes nothing), so that after the compare's carry chain there are two
        # LUT levels: whether t is taken, then each bit's select
        smax = Signal(data.StructLayout({"valid": 1, "kept": 1, "first": 1, "restart": 1, "last": 1,
                                         "bank": 1}))
        smax_t = Signal.like(t_b, reset_less=True)
        v = score_rq.o.valid
        first = tag_out.key == 0
        m.d.sync += [smax.valid.eq(v), smax.kept.eq(v & tag_out.keep), smax.first.eq(first),
                     smax.restart.eq(v & first & ~tag_out.keep), smax.last.eq(tag_out.last),
                     smax.bank.eq(tag_out.bank), smax_t.eq(t_b)]
        # (a row's first score restarts the maximum: a kept one is taken whatever the compare
        # says, one masked out leaves the identity, -2^31)
        take_t = smax.kept & (smax.first | (smax_t > score_max))
        m.d.sync += score_max.eq(Mux(take_t, smax_t, Mux(smax.restart, none, score_max)))
        # A row's maximum is latched from ``score_max`` a cycle after its last score, so the
        # compare-and-select loop has ``score_max`` as its only load (latched from its output, it
        # was 38 levels and 11.9 ns to ``row_max`` in one placement); the softmax reads its row's
        # maximum from these latches.
        latch = Signal(data.StructLayout({"valid": 1, "bank": 1}))
        m.d.sync += [latch.valid.eq(smax.valid & smax.last), latch.bank.eq(smax.bank)]
        row_max = [Signal(signed(fixed.SCORE_BITS), reset_less=True, name=f"row_max{k}") for k in range(2)]
        m.d.sync += ctl.scored.valid.eq(0)
        with m.If(latch.valid):
            with m.If(latch.bank):
                m.d.sync += row_max[1].eq(score_max)
            with m.Else():
                m.d.sync += row_max[0].eq(score_max)
            m.d.sync += [ctl.scored.valid.eq(1), ctl.scored.payload.eq(latch.bank)]
        m.d.comb += [out.max[k].eq(row_max[k]) for k in range(2)]
        return m
