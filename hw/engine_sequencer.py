"""Sequencer of the lane engine: the state machine that steps WRITE, RECALL and ATTENTION through
their phases and issues one MAC beat or one softmax key per cycle."""

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from .arith import times_const
from .engine_exponents import ExponentControlSignature
from .engine_fetch import FetchControlSignature
from .engine_fold import FoldControlSignature
from .engine_layout import CONTROL_MEMBERS, LANE_TAG, EngineSignature, Op, Phase, block_lanes
from .engine_rowlap import RowOverlap
from .engine_rows import RowControlSignature
from .engine_score import ScoreControlSignature
from .engine_softmax import SoftmaxControlSignature
from .engine_writeback import WriteBackControlSignature

__all__ = ["SequencerSignature", "Sequencer"]


class SequencerSignature(wiring.Signature):
    """Members of :class:`Sequencer`.

    Members
    -------
    start, op, slot, n_keys, n_q, causal, busy, done, rd_dat_addr, rd_key_addr : ...
        The owner's (:data:`~hmtx.hw.engine_layout.CONTROL_MEMBERS` of
        :class:`~hmtx.hw.engine_layout.EngineSignature`, taken from there): the operation, and
        the addresses of its reads of ``dat`` and ``key`` while the engine is idle.
    phase : Out(Phase)
        The MAC phase whose results are in flight (names their owner).
    fetch : Out(FetchControlSignature(layout, w_depth))
    writeback : Out(WriteBackControlSignature(layout))
    score : Out(ScoreControlSignature())
    softmax : Out(SoftmaxControlSignature())
    exps : Out(ExponentControlSignature(layout))
    rows : Out(RowControlSignature(layout))
        ATTN_PASS's per-row scalars.
    fold : Out(FoldControlSignature(layout))
        Contract 2 only.
    """

    def __init__(self, layout, w_depth):
        owner = EngineSignature(layout).members
        super().__init__({
            **{name: owner[name] for name in CONTROL_MEMBERS},
            "phase": Out(Phase),
            "fetch": Out(FetchControlSignature(layout, w_depth)),
            "writeback": Out(WriteBackControlSignature(layout)),
            "score": Out(ScoreControlSignature()),
            "softmax": Out(SoftmaxControlSignature()),
            "exps": Out(ExponentControlSignature(layout)),
            "rows": Out(RowControlSignature(layout)),
            **({"fold": Out(FoldControlSignature(layout))} if layout.contract == 2 else {}),
        })


class Sequencer(RowOverlap, wiring.Component):
    """The engine's state machine: one MAC beat per cycle, P lanes.

    A WRITE projects K_i = W_k^T M_i (``d_h x CB`` beats in dot mode, one output per column j)
    while the first column's beats copy M_i into its slot. A RECALL projects q = W_q^T S
    (the same beats), scores q against the n keys (``n x KB`` beats), runs the exp2 pass over
    the n scores, one ~41-cycle reciprocal and the probability pass (a key per cycle each),
    then the weighted sum (``CB x n`` beats in lane mode: lane l accumulates
    ``w_i * M_i[cb*P + l]`` over the slots, so no transposed copy of M is needed). ATTENTION
    and ATTN_PASS run their rows overlapped (:class:`~hmtx.hw.engine_rowlap.RowOverlap`: the
    states ``A_*`` and two issuers of the softmax's passes beside this state machine): per
    query row its Q row into ``qbuf`` (AB words), scores against the n_k K rows (``n_k x AB``
    beats), the softmax passes and the weighted sum of the V rows.

    Contract 2 (``layout.contract``): a WRITE then folds W_q into the key (:meth:`_fold`), and
    a RECALL loads S into ``qbuf`` as an attention query row is loaded and scores it against the
    folded keys K'_i in ``dat`` (``n x CB`` beats): no projection, no read of W_q.

    Between phases the sequencer waits until every result of the previous phase is written:
    ``pending`` counts the results in flight (one up per last beat or per softmax key, one
    down per unit's ``retire``), and its zero test is registered (``pending_zero``), so the
    tests that end a phase start at a flip-flop. The beat counters are two, ``outer`` and
    ``inner``, each with its last value in a register (``outer_last``, ``inner_last``), so
    that the end of a row is a compare of two registers; the address bases ``base_o``/``base_i``
    step with them.

    ``done`` comes from a flip-flop, set for the one cycle in DONE with no write of the engine's
    still on its way (the command processor's state machine follows it, and its decode of
    our state was the slowest path of the routed smollm build).

    The units it steers take what it issues without backpressure (valid-only streams), and
    report back only ``retire`` (a result written), the fetch's ``q_loading``, the write-back's
    ``writing`` and the softmax's ``div_done``.

    Members: :class:`SequencerSignature`.
    """

    # cycles from the probability pass's first key to the weighted sum's first beat (contract 2's
    # recall, and every attention row at the earliest): the least that reads each weight from
    # ``wm`` after its write (_softmax_passes)
    WSUM_LAG = 6

    def __init__(self, layout, w_depth):
        self.layout = layout
        super().__init__(SequencerSignature(layout, w_depth))

    def elaborate(self, platform):
        m = Module()
        r = self._state(m)
        with m.FSM() as fsm:
            self._idle(m, r)
            self._projection(m, r)
            self._att_mac(m, r)
            self._scores(m, r)
            self._softmax_passes(m, r)
            self._weighted_sum(m, r)
            if self.layout.contract == 2:
                self._fold(m, r)
            with m.State("DONE"):
                with m.If(r.done):
                    m.next = "IDLE"
        with m.If(r.kc.on & r.kc.exp):
            self._pass_key(m, r, self.softmax.exp)
        with m.If(r.kc.on & r.kc.prob):
            self._pass_key(m, r, self.softmax.prob)
        self._att_exp(m, r)
        self._att_prob(m, r)
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        m.d.sync += r.done.eq(fsm.ongoing("DONE") & ~r.done & ~self.writeback.writing)
        m.d.comb += self.done.eq(r.done)
        return m

    def _state(self, m):
        """The operands latched at start, the counters, the pending count; the outputs that
        follow registers. Returns them all."""
        L = self.layout
        c = L.config
        r = SimpleNamespace()
        # operands latched at start
        r.op = Signal(2)
        r.slot = Signal.like(self.slot)
        r.n_keys = Signal.like(self.n_keys)
        r.n_q = Signal.like(self.n_q)
        r.causal = Signal()
        r.attn = r.op[1]                            # ATTENTION or ATTN_PASS (Op 2, 3)
        # ATTN_PASS: the pass (p1, p2, p3 one-hot), ext: m (and in pass 3 E and the sum) come
        # from the row scalars; cont: pass 3 adds the carried accumulators (not first); carry:
        # pass 3 stores them (not last). All latched at start.
        r.p1, r.p2, r.p3, r.ext, r.cont, r.carry = (Signal(name=n) for n in
                                                     ("p1", "p2", "p3", "ext", "cont", "carry"))
        r.off = Signal(3)                           # the weighted sum's carry beats per block: 0 or 4
        r.zfrom = Signal(16)                        # its beats from here on have weight 0
        r.wlast = Signal(16)                        # its last beat per block
        r.pbase = Signal(24)                        # the carried words of the current row and block
        r.diag = Signal(signed(16))
        r.c2 = L.contract == 2
        # the scores' keys are in ``dat``: ATTENTION's K rows, or contract 2's folded keys
        r.kdat = r.attn | (r.op == Op.RECALL) if r.c2 else r.attn
        r.second = Signal()                         # contract 2's WRITE: the second fold pass
        r.fslot_base = Signal(range(L.dat_depth + 1))
        r.kslot_base = Signal(range(c.n_slots * L.KB + 1))
        r.mslot_base = Signal(range(L.dat_depth + 1))
        r.single = Signal()                         # n_keys == 1 (latched with it)
        # counters
        r.outer = Signal(16)
        r.inner = Signal(16)
        # the last outer/inner index of the current pass (its count less one)
        r.outer_last = Signal(16)
        r.inner_last = Signal(16)
        r.issuing = Signal()
        r.base_o = Signal(24)       # address base advanced per outer step
        r.base_i = Signal(24)       # address base advanced per inner step
        r.sub_w = Signal(16)        # PROJ: j // P
        r.sub_l = Signal(range(L.P))  # PROJ: j % P
        r.done = Signal()
        # the exp2 and probability passes' key counter: the inner counter, or (contract 2) a
        # counter of its own, as the probability pass runs on beside the weighted sum's beats
        if r.c2:
            r.kc = SimpleNamespace(idx=Signal(16, name="pass_key"), last=Signal(16, name="pass_last"),
                                   on=Signal(name="pass_on"))
            r.lag = Signal(range(self.WSUM_LAG))   # cycles since the probability pass began
        else:
            r.kc = SimpleNamespace(idx=r.inner, last=r.inner_last, on=r.issuing)
        # which pass the key counter serves, as flip-flops set and cleared with the state's
        # changes: a pass's key (and ``sc``'s read address behind it) issues from registers, not
        # from the state's decode (which was the routed smollm build's critical path)
        r.kc.exp, r.kc.prob = Signal(name="pass_exp"), Signal(name="pass_prob")
        # results in flight
        pending = Signal(16)
        r.inc = Signal()
        r.inc_k = Signal()          # contract 2: a key of a pass issued (never in a cycle with r.inc)
        inc = r.inc | r.inc_k if r.c2 else r.inc
        dec = Signal(2)
        # (an attention op's results are counted by its issuers, hw/engine_rowlap.py)
        m.d.comb += dec.eq(~r.attn & (self.writeback.retire | self.score.retire | self.softmax.retire |
                                      (self.fold.retire if L.contract == 2 else 0)))
        m.d.sync += pending.eq(pending + inc - dec)
        # pending == 0, registered: it is computed from this cycle's count and changes (inc, dec
        # are single results)
        r.pending_zero = Signal(init=1)
        m.d.sync += r.pending_zero.eq(((pending == 0) & (inc == dec)) |
                                      ((pending == 1) & dec.bool() & ~inc))
        # the key at the head of the softmax passes is attended
        m.d.comb += [self.fetch.attn.eq(r.kdat), self.score.attn.eq(r.attn), self.exps.attn.eq(r.attn),

                     self.writeback.write.eq(r.op == Op.WRITE), self.writeback.kslot_base.eq(r.kslot_base),
                     self.exps.slot.eq(r.slot), self.exps.key.eq(r.kc.idx), self.exps.pkey.eq(r.kc.idx),
                     self.softmax.ext.eq(r.ext), self.writeback.carry.eq(r.carry)]
        if r.c2:
            m.d.comb += [self.fold.second.eq(r.second), self.fold.slot_base.eq(r.fslot_base),
                         self.fetch.q_row.eq(r.attn)]
        self._beats_per_block(m, r)
        r.att = self._att_state(m, r)
        return r

    def _advance(self, m, r, outer_step, inner_step):
        """One beat issued: step inner, and outer at the end of a row."""
        with m.If(r.inner == r.inner_last):
            m.d.sync += r.inner.eq(0)
            m.d.sync += outer_step
            with m.If(r.outer == r.outer_last):
                m.d.sync += r.issuing.eq(0)
            with m.Else():
                m.d.sync += r.outer.eq(r.outer + 1)
        with m.Else():
            m.d.sync += r.inner.eq(r.inner + 1)
            m.d.sync += inner_step

    def _beat(self, m, r, **fields):
        """Issue a beat (``first``/``last`` from the counters)."""
        beat = self.fetch.beat
        m.d.comb += [beat.valid.eq(1), beat.payload.first.eq(r.inner == 0),
                     beat.payload.last.eq(r.inner == r.inner_last)]
        m.d.comb += [getattr(beat.payload, k).eq(v) for k, v in fields.items()]

    def _idle(self, m, r):
        with m.State("IDLE"):
            m.d.comb += [self.fetch.dat_addr.eq(self.rd_dat_addr), self.fetch.key_addr.eq(self.rd_key_addr)]
            with m.If(self.start):
                m.d.sync += [r.op.eq(self.op), r.slot.eq(self.slot), r.n_keys.eq(self.n_keys),
                             r.n_q.eq(self.n_q), r.causal.eq(self.causal & self.op[1]),
                             r.single.eq(self.n_keys == 1)]
                self._latch_pass(m, r)
                with m.If(self.op[1]):
                    m.d.comb += r.att.start.eq(1)
                    m.next = "A_NEXT"
                if r.c2:
                    # contract 2's RECALL finds S in qbuf (the fetch copied it there as the owner
                    # wrote it): its scores start at once (S's exponent: SCORE's q_row)
                    with m.Elif(self.op == Op.RECALL):
                        self._scores_start(m, r, n_keys=self.n_keys)
                        m.next = "SCORE"
                with m.Else():
                    m.next = "PROJ_START"

    def _latch_pass(self, m, r):
        """At start: ATTN_PASS's pass and flags, the causal diagonal (ATTENTION's is n_k - n_q),
        and the weighted sum's beats per block: the keys, after 4 beats that add the carried
        accumulator back (pass 3 but the first), and at least 2 (a result word is written in two
        cycles) or 3 (carried: three) -- the extra beats of weight 0."""
        ap = self.op == Op.ATTN_PASS
        p = [ap & (self.apass == k) for k in (1, 2, 3)]
        cont, carry = p[2] & ~self.afirst, p[2] & ~self.alast
        m.d.sync += [r.p1.eq(p[0]), r.p2.eq(p[1]), r.p3.eq(p[2]), r.ext.eq(p[1] | p[2]),
                     r.cont.eq(cont), r.carry.eq(carry), r.off.eq(Mux(cont, 4, 0)),
                     r.diag.eq(Mux(ap, self.diag, self.n_keys - self.n_q))]

    def _beats_per_block(self, m, r):
        """The weighted sum's beats per block, from the latched operands, a cycle after start
        (its first beat is tens of cycles later): ``zfrom`` the first beat of weight 0,
        ``wlast`` the last."""
        n = r.n_keys
        least = Mux(r.carry, 3, 2)
        m.d.sync += [r.zfrom.eq(Mux(r.cont, n + 4, n)),
                     r.wlast.eq(Mux(r.cont, n + 3, Mux(n < least, least - 1, n - 1)))]

    def _projection(self, m, r):
        """PROJ: beat (j, cb), S/M block cb against W[., j] block cb; the tag is the result's
        (word, lane) in q's layout (K's place follows from it: key_place)."""
        L = self.layout
        c, P, CB = L.config, L.P, L.CB
        write = r.op == Op.WRITE
        with m.State("PROJ_START"):
            # slot bases from the latched slot (not from the start operands: timing)
            # (times_const: the multiply by CB was mapped to a DSP, a late path of a routed build)
            m.d.sync += [r.kslot_base.eq(times_const(r.slot, L.KB)),
                         r.mslot_base.eq(L.mem_base + times_const(r.slot, CB))]
            if r.c2:
                m.d.sync += r.fslot_base.eq(L.kf_base + times_const(r.slot, CB))
            m.d.sync += [r.outer.eq(0), r.inner.eq(0), r.outer_last.eq(c.d_h - 1), r.inner_last.eq(CB - 1),
                         r.base_o.eq(Mux(write, c.d_h * CB, 0)), r.base_i.eq(0), r.sub_w.eq(0),
                         r.sub_l.eq(0), r.issuing.eq(1)]
            with m.If(write):
                m.d.comb += self.exps.slot_wr.eq(1)
            with m.Else():
                m.d.comb += self.exps.q_vec.eq(1)
            m.d.sync += self.phase.eq(Phase.PROJ)
            m.next = "PROJ"
        with m.State("PROJ"):
            with m.If(r.issuing):
                m.d.comb += [self.fetch.dat_addr.eq(r.inner), self.fetch.w_addr.eq(r.base_o + r.inner),
                             r.inc.eq(r.inner == r.inner_last)]
                self._beat(m, r, copy=write & (r.outer == 0), lim=block_lanes(c.d, r.inner, CB, P), phase=Phase.PROJ,
                           tag=Cat(r.sub_w, r.sub_l), copy_addr=r.mslot_base + r.inner)
                sub_wrap = r.sub_l == P - 1
                self._advance(m, r, [r.base_o.eq(r.base_o + CB),
                                     r.sub_l.eq(Mux(sub_wrap, 0, r.sub_l + 1)),
                                     r.sub_w.eq(Mux(sub_wrap, r.sub_w + 1, r.sub_w))], [])
            with m.Elif(r.pending_zero):
                with m.If(write):
                    if r.c2:
                        m.d.sync += r.second.eq(0)
                        m.d.comb += self.fold.clear.eq(1)
                    m.next = "FOLD_START" if r.c2 else "DONE"
                with m.Else():
                    m.next = "SCORE_START"

    def _fold(self, m, r):
        """Contract 2's WRITE after K_i: two passes of ``CB x d_h`` lane-mode beats (cb, j), lane
        l accumulating ``K_i[j] * W_q[cb*P + l, j]`` (K_i[j] from ``wm``, W_q word j*CB + cb),
        one block of ``acc = W_q K_i`` per cb. The fold unit takes the first pass's maximum and
        minimum over all d channels, which fix the shift, and writes the second pass's blocks
        rounded by it as K'_i; then K'_i's exponent. Recomputing ``acc`` costs ``d_h x CB``
        beats; keeping it would take d x 32 bits of storage beside the lanes."""
        L = self.layout
        c, P, CB = L.config, L.P, L.CB
        with m.State("FOLD_START"):
            m.d.sync += [r.outer.eq(0), r.inner.eq(0), r.outer_last.eq(CB - 1), r.inner_last.eq(c.d_h - 1),
                         r.base_i.eq(0), r.issuing.eq(1), self.phase.eq(Phase.FOLD)]
            m.next = "FOLD"
        with m.State("FOLD"):
            with m.If(r.issuing):
                m.d.comb += [self.fetch.w_addr.eq(r.base_i + r.outer), self.fetch.wm_addr.eq(r.inner),
                             r.inc.eq(r.inner == r.inner_last)]
                self._beat(m, r, lane_mode=1, lim=block_lanes(c.d, r.outer, CB, P), phase=Phase.FOLD, tag=r.outer)
                self._advance(m, r, [r.base_i.eq(0)], [r.base_i.eq(r.base_i + CB)])
            with m.Elif(r.pending_zero):
                with m.If(r.second):
                    m.d.comb += self.exps.kf_wr.eq(1)
                    m.next = "DONE"
                with m.Else():
                    m.d.sync += r.second.eq(1)
                    m.next = "FOLD_START"

    def _scores(self, m, r):
        """SCORE (a recall's; attention rows: hw/engine_rowlap.py): beat (i, kb), q's key word kb
        against K_i's (key word kb is half kb % 2 of q's word kb // 2, key_place), or contract 2's
        S block against K'_i's."""
        L = self.layout
        c, P, KP, KB = L.config, L.P, L.KP, L.KB
        # a recall's keys: K_i in ``key`` (KB words per slot, over q's d_h elements), or contract
        # 2's K'_i in ``dat`` (CB words per slot from kf_base, over S's d elements)
        rk_words, rk_base = (L.CB, L.kf_base) if r.c2 else (KB, 0)
        with m.State("SCORE_START"):
            self._scores_start(m, r)
            m.next = "SCORE"
        with m.State("SCORE"):
            if r.c2:
                # S's exponent, vexp[0] (row 0 from the start on): read while the scores issue,
                # registered long before the first score reaches the score unit
                m.d.comb += self.exps.q_row.eq(1)
            with m.If(r.issuing):
                if KP == P:
                    halves = {"qaddr": r.inner}
                else:
                    halves = {"qaddr": r.inner if r.c2 else r.inner >> 1, "qhi": 0 if r.c2 else r.inner[0]}
                q_word = r.inner if KP == P else r.inner >> 1
                rk_lim = block_lanes(c.d, r.inner, L.CB, P) if r.c2 else block_lanes(c.d_h, q_word, L.HB, P)
                m.d.comb += [self.fetch.key_addr.eq(r.base_o + r.inner),
                             self.fetch.dat_addr.eq(r.base_o + r.inner), r.inc.eq(r.inner == r.inner_last)]
                self._beat(m, r, **halves, phase=Phase.SCORE, tag=Cat(r.outer[:16], 1, 0, r.outer == r.outer_last),
                           lim=rk_lim)
                self._advance(m, r, [r.base_o.eq(r.base_o + rk_words)], [])
            with m.Elif(r.pending_zero):
                if r.c2:
                    # the exp2 pass reads the maximum three cycles after a key is issued, and the
                    # maximum is latched three cycles after the last score: the first key a cycle on
                    m.next = "SCORE_MAX"
                else:
                    # (the exp2 and probability passes run over keys 0..n_keys-1)
                    m.d.comb += self.softmax.clear.eq(1)
                    m.d.sync += [r.kc.idx.eq(0), r.kc.last.eq(r.n_keys - 1), r.kc.on.eq(1), r.kc.exp.eq(1)]
                    m.next = "EXP"
        if r.c2:
            with m.State("SCORE_MAX"):
                m.d.comb += self.softmax.clear.eq(1)
                m.d.sync += [r.kc.on.eq(1), r.kc.exp.eq(1)]
                self._pass_key(m, r, self.softmax.exp)
                m.next = "EXP"

    def _scores_start(self, m, r, n_keys=None):
        """The counters and bases of a recall's score beats (and, contract 2, of the passes'
        keys). ``n_keys``: the operation's, where it is not yet in its register (at start)."""
        L = self.layout
        rk_words, rk_base = (L.CB, L.kf_base) if r.c2 else (L.KB, 0)
        n_keys = r.n_keys if n_keys is None else n_keys
        m.d.sync += [r.outer.eq(0), r.inner.eq(0), r.outer_last.eq(n_keys - 1), r.inner_last.eq(rk_words - 1),
                     r.base_o.eq(rk_base), r.base_i.eq(0), r.issuing.eq(1), self.phase.eq(Phase.SCORE)]
        if r.c2:
            m.d.sync += [r.kc.idx.eq(0), r.kc.last.eq(n_keys - 1)]

    def _softmax_passes(self, m, r):
        """EXP and PROB: a key per cycle into the softmax's passes; DIV: the reciprocal between.

        Contract 2: the weighted sum does not wait for the probability pass to drain. Its beats
        take the keys in the pass's order (block 0 first) a cycle each, as the pass makes their
        weights, so they start ``WSUM_LAG`` cycles behind it: a weight is written into ``wm``
        seven cycles after its key is issued, and a beat's read of ``wm`` is two cycles after
        the beat (its address registers), one cycle after that write at the earliest."""
        sm, kc = self.softmax, r.kc
        # (the keys of a pass issue while ``kc.on``, outside the states: elaborate above)
        with m.State("EXP"):
            with m.If(~kc.on & r.pending_zero):
                m.d.comb += sm.div.eq(1)
                m.d.sync += kc.exp.eq(0)
                if r.c2:
                    m.d.sync += kc.idx.eq(0)
                m.next = "DIV"
        with m.State("DIV"):
            with m.If(sm.div_done):
                m.d.sync += [kc.on.eq(1), kc.prob.eq(1)]
                if r.c2:
                    # the first key now: the pass multiplies by the reciprocal two cycles on
                    self._pass_key(m, r, sm.prob)
                    m.d.sync += r.lag.eq(1)
                else:
                    m.d.sync += kc.idx.eq(0)
                m.next = "PROB"
        with m.State("PROB"):
            if r.c2:
                # (the pass runs on into WSUM, ahead of the beats; ``kc.prob`` is cleared at DONE)
                m.d.sync += r.lag.eq(r.lag + 1)
                with m.If(r.lag == self.WSUM_LAG - 1):
                    self._weighted_sum_start(m, r)
                    m.next = "WSUM"
            else:
                with m.If(~kc.on & r.pending_zero):
                    m.d.sync += kc.prob.eq(0)
                    self._weighted_sum_start(m, r)
                    m.next = "WSUM"

    def _pass_key(self, m, r, issue):
        """Issue the key at the head of a softmax pass."""
        kc = r.kc
        m.d.comb += [issue.valid.eq(1), issue.payload.idx.eq(kc.idx), issue.payload.keep.eq(1),
                     (r.inc_k if r.c2 else r.inc).eq(1)]
        with m.If(kc.idx == kc.last):
            m.d.sync += kc.on.eq(0)
        m.d.sync += kc.idx.eq(kc.idx + 1)

    def _weighted_sum_start(self, m, r):
        # a single key gets a second beat of weight 0: the two writes of a result word (low,
        # high bytes) need results at least two cycles apart
        L = self.layout
        m.d.sync += [r.outer.eq(0), r.inner.eq(0), r.outer_last.eq(L.CB - 1), r.inner_last.eq(r.wlast),
                     r.base_o.eq(L.out_base), r.base_i.eq(L.mem_base), r.issuing.eq(1), self.phase.eq(Phase.WSUM)]

    def _weighted_sum(self, m, r):
        """WSUM (a recall's; attention rows: hw/engine_rowlap.py): beat (cb, i), lane l
        accumulates w_i * M_i[cb*P + l]; then the output exponent, and DONE."""
        L = self.layout
        CB = L.CB
        with m.State("WSUM"):
            with m.If(r.issuing):
                m.d.comb += [self.fetch.wm_addr.eq(r.inner), self.fetch.dat_addr.eq(r.base_i + r.outer),
                             r.inc.eq(r.inner == r.inner_last)]
                # (the tag: the result's first word in ``dat``, two words a result)
                self._beat(m, r, lane_mode=1, lim=L.P, phase=Phase.WSUM, zero=r.inner >= r.zfrom,
                           tag=r.base_o[:16] | (1 << LANE_TAG))
                self._advance(m, r, [r.base_i.eq(L.mem_base), r.base_o.eq(r.base_o + 2)],
                              [r.base_i.eq(r.base_i + Mux(r.single, 0, CB))])
            with m.Elif(r.pending_zero):
                m.d.comb += self.exps.row_done.eq(1)
                m.d.sync += r.kc.prob.eq(0)
                m.next = "DONE"
