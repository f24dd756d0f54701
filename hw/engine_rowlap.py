"""The lane engine's schedule of attention rows (ATTENTION and ATTN_PASS): rows overlapped, so
that the MAC lanes issue one row's scores and another row's weighted sum back to back while the
softmax runs the exp2 pass of one row beside the probability pass of the row before.

Three issuers hand rows to each other (docs/hardware.md, "Attention rows, overlapped"):

* the **MAC issuer** (states ``A_*`` of the sequencer's state machine): the scores of row s
  (its Q row loaded first), at most two rows ahead of the rows whose ``sc`` bank is free again,
  and the weighted sum of row w once its probability pass is ``WSUM_LAG`` keys ahead -- in the
  order S0 S1 W0 S2 W1 S3 W2 ...;
* the **exp2 issuer** (``E_*``): the exp2 pass of row x once its scores are in (the score unit
  reports each row's last score), then ATTN_PASS pass 1 / 2's answer, or the reciprocal and the
  hand-over of the row to
* the **probability issuer** (``P_*``): the probability pass of that row, then its output
  exponent.

Each counts its own results in flight. The row's bank of ``sc`` (row parity) and its causal
limit travel with every beat and key, so no unit holds a row's state that the next row needs.
"""

from types import SimpleNamespace

from amaranth.hdl import Cat, Mux, Signal, signed

from .engine_layout import LANE_TAG, Phase, block_lanes

__all__ = ["RowOverlap"]


def _count(m, name, inc, dec):
    """A count of results in flight (``inc``, ``dec`` single results) and its zero test,
    registered (computed from this cycle's count and change)."""
    n = Signal(16, name=f"{name}_pending")
    zero = Signal(init=1, name=f"{name}_zero")
    m.d.sync += [n.eq(n + inc - dec),
                 zero.eq(((n == 0) & (inc == dec)) | ((n == 1) & dec & ~inc))]
    return zero


class RowOverlap:
    """The attention rows' issuers, for :class:`~hmtx.hw.engine_sequencer.Sequencer` (a mixin:
    they share its counters, its beat issue and the units' controls)."""

    # cycles between a row's last score beat and the next row's Q load (contract 2's ring turns
    # under the score beats at their stage 3; a Q load's first write lands at its stage 2 + 1)
    QGAP = 3

    def _att_state(self, m, r):
        """The registers of the overlapped rows. Returns them (``r.att``)."""
        c = self.layout.config
        rows = range(c.max_queries + 2)
        a = SimpleNamespace(
            s=Signal(rows, name="att_s"), w=Signal(rows, name="att_w"), freed=Signal(rows, name="att_freed"),
            scored=Signal(rows, name="att_scored"), xe=Signal(rows, name="att_xe"), xp=Signal(rows, name="att_xp"),
            kl_s=Signal(signed(18), name="kl_s"), kl_e=Signal(signed(18), name="kl_e"),
            kl_p=Signal(signed(18), name="kl_p"),
            w_ready=Signal(name="w_ready"), gap=Signal(range(self.QGAP + 1), name="att_gap"),
            gap_e=Signal(2, name="att_gap_e"),
            ekey=Signal(16, name="ekey"), eon=Signal(name="eon"), pkey=Signal(16, name="pkey"),
            pon=Signal(name="pon"), lag=Signal(range(self.WSUM_LAG), name="att_lag"),
            start=Signal(name="att_start"), p_idle=Signal(name="p_idle"), e_end=Signal(name="e_end"),
            handoff=Signal(name="handoff"),
            inc_m=Signal(), inc_e=Signal(), inc_p=Signal(),
        )
        # a weighted sum follows a probability pass: ATTENTION and pass 3
        a.has_w = ~(r.p1 | r.p2)
        # (the units' results of a WRITE or RECALL are not counted: every one of them has retired
        # before the operation is done)
        a.m_zero = _count(m, "att_mac", a.inc_m, r.attn & (self.score.retire | self.writeback.retire))
        a.e_zero = _count(m, "att_exp", a.inc_e, r.attn & self.softmax.eretire)
        a.p_zero = _count(m, "att_prob", a.inc_p, r.attn & self.softmax.pretire)
        with m.If(self.score.scored.valid):
            m.d.sync += a.scored.eq(a.scored + 1)
        # row w's first output word and first carried word in ``dat``: they step with w (a
        # multiply by w ahead of their registers, mapped to a DSP, was a late path of routed builds)
        L = self.layout
        a.w_obase, a.w_pbase = Signal(16, name="w_obase"), Signal(16, name="w_pbase")
        with m.If(a.start):
            m.d.sync += [a.s.eq(0), a.w.eq(0), a.freed.eq(0), a.scored.eq(0), a.xe.eq(0), a.w_ready.eq(0),
                         a.w_obase.eq(L.out_base), a.w_pbase.eq(L.part_base)]
        # the softmax's rows: the exp2 pass's and the probability pass's banks (a recall's: 0)
        # (the Q row's exponent: ``row`` steps as a row's scores end, cycles before its Q load)
        with m.If(r.attn):
            m.d.comb += [self.softmax.ebank.eq(a.xe[0]), self.softmax.pbank.eq(a.xp[0]),
                         self.exps.row.eq(a.s), self.exps.qbank.eq(a.s[0])]
        return a

    # --- the MAC issuer -----------------------------------------------------------------------
    def _att_mac(self, m, r):
        L = self.layout
        c, AB = L.config, L.AB
        a = r.att
        with m.State("A_NEXT"):
            m.d.sync += self.phase.eq(Phase.SCORE)      # (results go by their tag)
            with m.If(a.gap != 0):
                m.d.sync += a.gap.eq(a.gap - 1)
            with m.If((a.s < r.n_q) & (a.s <= a.freed + 1) & (a.gap == 0)):
                m.d.sync += [a.kl_s.eq(a.s + r.diag), r.base_o.eq(a.s * AB), r.inner.eq(0), r.issuing.eq(1)]
                m.next = "A_QLOAD"
            with m.Elif(a.has_w & a.w_ready):
                m.d.sync += a.w_ready.eq(0)
                self._att_wsum_start(m, r)
                m.next = "A_WSUM"
            with m.Elif((a.s == r.n_q) & (~a.has_w | (a.w == r.n_q)) & a.e_end & a.p_idle & a.m_zero
                        & a.e_zero & a.p_zero):
                m.next = "DONE"
        with m.State("A_QLOAD"):
            m.d.comb += self.exps.q_row.eq(1)
            with m.If(r.issuing):
                m.d.comb += [self.fetch.dat_addr.eq(r.base_o + r.inner), self.fetch.q_load.valid.eq(1),
                             self.fetch.q_load.payload.eq(r.inner)]
                m.d.sync += r.inner.eq(r.inner + 1)
                with m.If(r.inner == AB - 1):
                    m.d.sync += r.issuing.eq(0)
                    if r.c2:
                        # (a score beat reads the ring no sooner than the Q load's write lands)
                        self._att_scores_start(m, r)
                        m.next = "A_SCORE"
            with m.Elif(~self.fetch.q_loading):
                self._att_scores_start(m, r)
                m.next = "A_SCORE"
        with m.State("A_SCORE"):
            with m.If(r.issuing):
                kept = ~r.causal | (r.outer.as_signed() <= a.kl_s)
                m.d.comb += [self.fetch.dat_addr.eq(r.base_o + r.inner), a.inc_m.eq(r.inner == r.inner_last)]
                self._beat(m, r, qaddr=r.inner, phase=Phase.SCORE,
                           tag=Cat(r.outer[:16], kept, a.s[0], r.outer == r.outer_last),
                           lim=block_lanes(c.head_dim, r.inner, AB, L.P))
                self._advance(m, r, [r.base_o.eq(r.base_o + AB)], [])
            with m.Else():
                m.d.sync += [a.s.eq(a.s + 1), a.gap.eq(self.QGAP)]
                m.next = "A_NEXT"
        with m.State("A_WSUM"):
            with m.If(r.issuing):
                key_beat = r.inner >= r.off
                carry_word = Mux(r.inner[1], 2, r.inner[0])
                m.d.comb += [self.fetch.wm_addr.eq(r.inner - r.off),
                             self.fetch.dat_addr.eq(Mux(key_beat, r.base_i + r.outer, r.pbase + carry_word)),
                             a.inc_m.eq(r.inner == r.inner_last)]
                # (the tag: the result's first word in ``dat``: its output words, or its carried ones)
                self._beat(m, r, lane_mode=1, lim=L.P, phase=Phase.WSUM, zero=r.inner >= r.zfrom,
                           wconst=Mux(key_beat, 0, Mux(r.inner[1], 3, r.inner[0] + 1)),
                           tag=Mux(r.carry, r.pbase, r.base_o)[:16] | (1 << LANE_TAG))
                vbase = (c.max_queries + c.max_keys) * AB
                self._advance(m, r, [r.base_i.eq(vbase), r.pbase.eq(r.pbase + 3), r.base_o.eq(r.base_o + 2)],
                              [r.base_i.eq(r.base_i + Mux(r.single | ~key_beat, 0, AB))])
            with m.Else():
                # (the row's probability pass has issued every key: its bank is free)
                m.d.sync += [a.w.eq(a.w + 1), a.freed.eq(a.freed + 1),
                             a.w_obase.eq(a.w_obase + 2 * L.AB), a.w_pbase.eq(a.w_pbase + 3 * L.AB)]
                m.next = "A_NEXT"

    def _att_scores_start(self, m, r):
        L = self.layout
        m.d.sync += [r.outer.eq(0), r.inner.eq(0), r.outer_last.eq(r.n_keys - 1), r.inner_last.eq(L.AB - 1),
                     r.base_o.eq(L.config.max_queries * L.AB), r.issuing.eq(1)]

    def _att_wsum_start(self, m, r):
        L = self.layout
        c, AB = L.config, L.AB
        a = r.att
        m.d.sync += [r.outer.eq(0), r.inner.eq(0), r.outer_last.eq(AB - 1), r.inner_last.eq(r.wlast),
                     r.base_i.eq((c.max_queries + c.max_keys) * AB), r.issuing.eq(1),
                     r.pbase.eq(a.w_pbase), r.base_o.eq(a.w_obase)]

    # --- the exp2 issuer ----------------------------------------------------------------------
    def _att_exp(self, m, r):
        a, sm = r.att, self.softmax
        # a key a cycle while ``eon`` (a register, set only for E_RUN): the pass's issue, and the
        # read address of ``sc`` behind it, start at a flip-flop, not at the state's decode
        with m.If(a.eon):
            keep = ~r.causal | (a.ekey.as_signed() <= a.kl_e)
            m.d.comb += [sm.exp.valid.eq(1), sm.exp.payload.idx.eq(a.ekey), sm.exp.payload.keep.eq(keep),
                         a.inc_e.eq(1)]
        m.d.comb += self.rows.row.eq(a.xe)
        with m.If(r.attn):
            m.d.comb += self.exps.key.eq(a.ekey)
        with m.FSM(name="att_exp"):
            with m.State("E_IDLE"):
                m.d.comb += a.e_end.eq(1)
                with m.If(a.start):
                    m.next = "E_WAIT"
            with m.State("E_WAIT"):
                with m.If(a.xe == r.n_q):
                    m.d.comb += a.e_end.eq(1)
                with m.Elif(r.attn & (a.scored > a.xe)):
                    # (the row's scalars reach ``rows.cur`` two cycles after its row, set above)
                    m.d.sync += [a.kl_e.eq(a.xe + r.diag), a.ekey.eq(0), a.gap_e.eq(2)]
                    m.next = "E_PREP"
            with m.State("E_PREP"):
                m.d.sync += a.gap_e.eq(a.gap_e - 1)
                with m.If(a.gap_e == 0):
                    m.d.comb += sm.clear.eq(1)
                    m.d.sync += a.eon.eq(1)
                    m.next = "E_RUN"
            with m.State("E_RUN"):
                with m.If(a.eon):
                    m.d.sync += a.ekey.eq(a.ekey + 1)
                    with m.If(a.ekey == r.n_keys - 1):
                        m.d.sync += a.eon.eq(0)
                with m.Elif(a.e_zero):
                    with m.If(~a.has_w):
                        # ATTN_PASS pass 1 / 2: the row's m and E, or its sum, is the answer
                        m.d.comb += [self.rows.store_max.eq(r.p1), self.rows.store_sum.eq(r.p2)]
                        m.d.sync += [a.xe.eq(a.xe + 1), a.freed.eq(a.freed + 1)]
                        m.next = "E_WAIT"
                    # the reciprocal, and the row to the probability issuer once it is free and the
                    # weighted sum of the row before has read its weights
                    with m.Elif(a.p_idle & (a.w >= a.xe)):
                        m.d.comb += [sm.div.eq(1), a.handoff.eq(1)]
                        m.d.sync += a.xe.eq(a.xe + 1)
                        m.next = "E_WAIT"

    # --- the probability issuer ---------------------------------------------------------------
    def _att_prob(self, m, r):
        a, sm = r.att, self.softmax
        # (as the exp2 issuer's: the issue follows ``pon``, set only for P_RUN)
        with m.If(a.pon):
            keep = ~r.causal | (a.pkey.as_signed() <= a.kl_p)
            m.d.comb += [sm.prob.valid.eq(1), sm.prob.payload.idx.eq(a.pkey), sm.prob.payload.keep.eq(keep),
                         a.inc_p.eq(1)]
        with m.If(r.attn):
            m.d.comb += [self.exps.pkey.eq(a.pkey), self.exps.orow.eq(a.xp)]
        with m.FSM(name="att_prob"):
            with m.State("P_IDLE"):
                m.d.comb += a.p_idle.eq(1)
                with m.If(a.handoff):
                    m.d.sync += [a.xp.eq(a.xe), a.kl_p.eq(a.xe + r.diag), a.pkey.eq(0)]
                    m.next = "P_DIV"
            with m.State("P_DIV"):
                with m.If(sm.div_done):
                    m.d.sync += [a.pon.eq(1), a.lag.eq(0)]
                    m.next = "P_RUN"
            with m.State("P_RUN"):
                with m.If(a.pon):
                    m.d.sync += a.pkey.eq(a.pkey + 1)
                    with m.If(a.pkey == r.n_keys - 1):
                        m.d.sync += a.pon.eq(0)
                # (the MAC issuer takes ``w_ready`` a cycle after it is set, when it is free, and
                # issues the first beat a cycle after that: that beat is WSUM_LAG cycles after the
                # pass's first key at the earliest)
                lag_end = self.WSUM_LAG - 1
                with m.If(a.lag != lag_end):
                    m.d.sync += a.lag.eq(a.lag + 1)
                    with m.If(a.lag == lag_end - 1):
                        m.d.sync += a.w_ready.eq(1)
                with m.If(~a.pon & a.p_zero & (a.lag == lag_end)):
                    m.d.comb += self.exps.row_done.eq(1)
                    m.next = "P_IDLE"

