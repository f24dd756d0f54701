"""Softmax of the lane engine: the exp2 pass over the scores, the reciprocal of their sum and the
probability pass that makes the weights of the weighted sum."""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed

from .arith import Reciprocal, round_shift_var
from .engine_exponents import SoftmaxExponentsSignature
from .engine_fetch import q_write_layout
from .engine_layout import EXP_W, row_scalars_layout
from .engine_score import ScoresSignature

__all__ = ["pass_layout", "SoftmaxControlSignature", "SoftmaxSignature", "Softmax"]


def pass_layout():
    """One key of the exp2 or probability pass: its index, and whether it is attended (the
    causal mask)."""
    return data.StructLayout({"idx": 16, "keep": 1})


class SoftmaxControlSignature(wiring.Signature):
    """The sequencer's side of the softmax.

    Members
    -------
    exp, prob : Out(stream.Signature(pass_layout(), always_ready=True))
        The key at the head of the exp2 pass / of the probability pass (one a cycle; valid-only).
    clear : Out(1)
        Before the exp2 pass: the sum of the terms to 0, E to its least value.
    ebank, pbank : Out(1)
        The bank of ``sc`` of the exp2 pass's row and of the probability pass's row: the two
        passes may run at once, for two rows (the exp2 pass of row a+1 beside the probability
        pass of row a).
    div : Out(1)
        After the exp2 pass (every term written): start the reciprocal of the sum, and take
        the row's E for its probability pass (the exp2 pass may start on the next row).
    div_done : In(1)
        The reciprocal is there (a pulse, ~41 cycles after ``div``; contract 2: 13).
    retire, eretire, pretire : In(1)
        A term or a probability / a term / a probability is written (the sequencer's counts of
        results in flight).
    ext : Out(1)
        ATTN_PASS pass 2 or 3: the exp2 pass subtracts from the row's m, not the scores'
        maximum; E is the row's (not tracked), and the reciprocal is of the row's sum (pass 3).
    """

    def __init__(self):
        issue = stream.Signature(pass_layout(), always_ready=True)
        super().__init__({"exp": Out(issue), "prob": Out(issue), "clear": Out(1), "div": Out(1),
                          "div_done": In(1), "retire": In(1), "eretire": In(1), "pretire": In(1),
                          "ext": Out(1), "ebank": Out(1), "pbank": Out(1)})


class SoftmaxSignature(wiring.Signature):
    """Members of :class:`Softmax`.

    Members
    -------
    ctl : In(SoftmaxControlSignature())
    scores : In(ScoresSignature())
        The score unit's scores (into ``sc``) and their maximum.
    exps : In(SoftmaxExponentsSignature())
        The keys' value exponents; E, out.
    wm_rd : Out(memory.ReadPort.Signature(...))
        ``wm``'s read port, for the weighted sum's operand fetch.
    pm_rd : Out(memory.ReadPort.Signature(...))
        ``pm``'s read port, for the owner (``rd_pm_addr``/``rd_pm_data``).
    row : In(row_scalars_layout())
        ATTN_PASS: the current row's m, E and sum, from the host (with ``ctl.ext``).
    exp_sum : Out(32)
        The sum of the exp2 terms (ATTN_PASS pass 2's answer).
    big_e : Out(signed(EXP_W))
        E as the exp2 pass tracks it (ATTN_PASS pass 1's answer).
    k : In(stream.Signature(q_write_layout(), always_ready=True))
        Contract 2 only: WRITE's K_i, element ``word*P + lane`` into ``wm`` at that index.
    """

    def __init__(self, *, wm_rd, pm_rd, contract=1):
        super().__init__({
            "ctl": In(SoftmaxControlSignature()),
            "scores": In(ScoresSignature()),
            "exps": In(SoftmaxExponentsSignature()),
            "wm_rd": Out(wm_rd), "pm_rd": Out(pm_rd),
            "row": In(row_scalars_layout()), "exp_sum": Out(32), "big_e": Out(signed(EXP_W)),
            **({"k": In(stream.Signature(q_write_layout(), always_ready=True))} if contract == 2 else {}),
        })


class Softmax(wiring.Component):
    """The softmax of a row of scores, as the exponent-aligned weights of the weighted sum.

    Owns ``sc`` (the scores t, then the exp2 terms e over them), ``lut`` (the exp2 table),
    ``pm`` (the probabilities, read by the owner), ``wm`` (the weights, read by the operand
    fetch) and the :class:`~hmtx.hw.arith.Reciprocal`.

    * exp2 pass: ``e_b = round_shift(LUT[v & 255], v >> 8)`` for ``v = max - t_b`` (0 past the
      cutoff, or for a masked key), over ``sc`` in place; stage A registers t from the RAM,
      B forms v, C reads the table, D registers it (the table maps to a block RAM), then ex2
      writes e and adds it to the sum. E, the largest value exponent of the kept keys, is
      taken on the way (from the value exponent registered at B).
    * The reciprocal ``floor(2^40 / sum)`` (< 2^26, as ``sum >= LUT[0] = 2^15``), ~41 cycles
      (contract 2: 13, from the 15th quotient bit on and two bits a cycle).
    * probability pass: ``p = min(round_shift(e * r, 25), 32767)``, ``w = round_shift(p, align)``
      with ``align = min(E - value exponent, 16)``. Stage A registers e from each bank's RAM,
      B the bank's term, so the multipliers start from a flip-flop; ``e * r`` is two DSP
      products (r's low 17 bits, its high 9; a 16 x 26 multiply does not fit one MULT18X18D),
      each registered (prM, beside the value exponent), summed into pr2; p is there at pr3, and
      the weight goes into ``wm`` from a register a cycle later (the rounding shift reached
      ``wm``'s block RAM late; the weighted sum's first read of ``wm`` is several cycles after
      the pass ends).

    Contract 2: ``wm`` is also the fold beats' scalar buffer (``max(KMAX, d_h)`` deep): a
    WRITE's K projection writes K_i there (int16 in its 16 bits), and the fold beats read it as
    the weighted sum reads its weights, a word to all lanes. Neither use outlives its operation.

    The passes take a key a cycle from the sequencer and keep no backpressure (valid-only).
    A term's or probability's write is a result retired (``ctl.retire``).

    Members: :class:`SoftmaxSignature`. Attributes ``sc``, ``pm``, ``wm``, ``lut`` (the memories)
    and ``sc_r``, ``sc_w``, ``wm_r``, ``wm_w`` (their ports), for testbenches.
    """

    def __init__(self, layout):
        # (no read of these memories needs a write's data in the same cycle: see Engine)
        NO_RW = {"no_rw_check": 1}
        K = layout.KMAX
        self.layout = layout
        # (two banks, for two rows: each its own ports, as both are written in the same cycles)
        self.sc = memory.Memory(shape=signed(fixed.SCORE_BITS), depth=K, init=[], attrs=NO_RW)
        self.sc1 = memory.Memory(shape=signed(fixed.SCORE_BITS), depth=K, init=[], attrs=NO_RW)
        self.pm = memory.Memory(shape=unsigned(16), depth=K, init=[], attrs=NO_RW)
        self.wm = memory.Memory(shape=unsigned(16), depth=layout.WMD, init=[], attrs=NO_RW)
        self.lut = memory.Memory(shape=unsigned(fixed.EXP2_BITS + 1), depth=1 << fixed.SCORE_FRAC,
                                 init=fixed.exp2_lut())
        self.sc_r, self.sc_w = self.sc.read_port(), self.sc.write_port()
        self.sc1_r, self.sc1_w = self.sc1.read_port(), self.sc1.write_port()
        self._pm_w = self.pm.write_port()
        self.wm_r, self.wm_w = self.wm.read_port(), self.wm.write_port()
        self._lut_r = self.lut.read_port(domain="comb")
        self._pm_o = self.pm.read_port()
        super().__init__(SoftmaxSignature(wm_rd=self.wm_r.signature, pm_rd=self._pm_o.signature,
                                          contract=layout.contract))

    def elaborate(self, platform):
        m = Module()
        ctl = self.ctl
        for name in ("sc", "sc1", "pm", "wm", "lut"):
            m.submodules[name] = getattr(self, name)
        wiring.connect(m, wiring.flipped(self.wm_rd), self.wm_r)
        wiring.connect(m, wiring.flipped(self.pm_rd), self._pm_o)
        # E: tracked by the exp2 pass (big_e), taken for the probability pass at ``div`` (e_prob;
        # ATTN_PASS pass 3: the host's)
        big_e = Signal(signed(EXP_W))
        e_prob = Signal(signed(EXP_W))
        m.d.comb += self.exps.big_e.eq(e_prob)
        with m.If(ctl.clear):
            m.d.sync += big_e.eq(-(1 << (EXP_W - 1)))
        with m.If(ctl.div):
            m.d.sync += e_prob.eq(Mux(ctl.ext, self.row.e, big_e))
        m.d.comb += self.big_e.eq(big_e)
        # the scores into their bank of ``sc``; the exp2 pass's terms go over them (below), in the
        # other bank whenever scores are being written
        banks = [(self.sc_r, self.sc_w), (self.sc1_r, self.sc1_w)]
        t = self.scores.t
        for k, (_, w) in enumerate(banks):
            with m.If(t.valid & (t.payload.bank == k)):
                m.d.comb += [w.addr.eq(t.payload.idx), w.data.eq(t.payload.t), w.en.eq(1)]
        # a read of each bank: the exp2 pass's in its bank, the probability pass's in its own
        for k, (r, _) in enumerate(banks):
            m.d.comb += r.addr.eq(Mux(ctl.exp.valid & (ctl.ebank == k), ctl.exp.payload.idx, 0) |
                                  Mux(ctl.prob.valid & (ctl.pbank == k), ctl.prob.payload.idx, 0))
        ex_done, exp_sum = self._exp2_pass(m, big_e, banks)
        # (contract 2 starts the division past the quotient's 15 zero bits, sum >= LUT[0] = 2^15,
        # and finds two bits a cycle: the reciprocal is on the recall's critical path, 13 cycles)
        c2 = self.layout.contract == 2
        skip = fixed.EXP2_BITS if c2 else 0
        assert fixed.exp2_lut()[0] >= 1 << skip
        m.submodules.recip = recip = Reciprocal(32, min_divisor_log2=skip, radix=4 if c2 else 2)
        rcp = Signal(26)        # floor(2^40 / sum) < 2^26 because sum >= LUT[0] = 2^15
        m.d.comb += self.exp_sum.eq(exp_sum)
        m.d.comb += [recip.o.ready.eq(1), recip.i.valid.eq(ctl.div),
                     recip.i.payload.eq(Mux(ctl.ext, self.row.sum, exp_sum)),
                     ctl.div_done.eq(recip.o.valid)]
        with m.If(recip.o.valid):
            m.d.sync += rcp.eq(recip.o.payload)
        pr_done = self._prob_pass(m, e_prob, rcp, banks)
        m.d.comb += [ctl.retire.eq(ex_done | pr_done), ctl.eretire.eq(ex_done), ctl.pretire.eq(pr_done)]
        return m

    def _exp2_pass(self, m, big_e, banks):
        """Returns (a term written, the sum of the terms)."""
        ctl, ve2 = self.ctl, self.exps.value_exp
        exp_sum = Signal(32)
        with m.If(ctl.clear):
            m.d.sync += exp_sum.eq(0)
        ex1 = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1}))
        m.d.sync += [ex1.valid.eq(ctl.exp.valid), ex1.idx.eq(ctl.exp.payload.idx),
                     ex1.keep.eq(ctl.exp.payload.keep)]
        ebank = ctl.ebank       # (held for the whole pass and its drain)
        exA = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1, "t": signed(fixed.SCORE_BITS)}))
        exB = Signal(data.StructLayout({"valid": 1, "idx": 16, "live": 1, "r": fixed.SCORE_FRAC, "n": 4,
                                        "keep": 1, "ve": signed(8)}))
        exC = Signal(data.StructLayout({"valid": 1, "idx": 16, "live": 1, "lut": fixed.EXP2_BITS + 1,
                                        "n": 4}))
        exD = Signal.like(exC)      # the table value registered (it maps to a block RAM)
        ex2 = Signal(data.StructLayout({"valid": 1, "idx": 16, "e": fixed.EXP2_BITS + 1}))
        v = Signal(signed(fixed.SCORE_BITS + 2))
        # the row's m, registered (its sources are stable for the pass: the exp2 issuer starts
        # a row's pass cycles after its maximum is latched and its scalars read), and each bank's
        # score registered straight from its block RAM, the bank chosen after the registers
        m_sel = Signal(signed(fixed.SCORE_BITS), reset_less=True)
        m.d.sync += m_sel.eq(Mux(ctl.ext, self.row.m, self.scores.max[ebank]))
        exA_t = [Signal(signed(fixed.SCORE_BITS), reset_less=True, name=f"exA_t{k}") for k in range(2)]
        m.d.sync += [exA_t[k].eq(banks[k][0].data) for k in range(2)]
        exA_bank = Signal()
        m.d.sync += exA_bank.eq(ebank)
        m.d.comb += exA.t.eq(Mux(exA_bank, exA_t[1], exA_t[0]))
        m.d.comb += v.eq(m_sel - exA.t)
        # (v < 0 only for a host's m below a score, ATTN_PASS: the contract clamps v at 0)
        neg = v[-1]
        n_int = v >> fixed.SCORE_FRAC
        m.d.comb += self._lut_r.addr.eq(exB.r)
        m.d.sync += exD.eq(exC)
        e_val = (exD.lut + ((Const(1, 16) << exD.n) >> 1)) >> exD.n
        with m.If(exB.valid & exB.keep & (exB.ve > big_e) & ~ctl.ext):
            m.d.sync += big_e.eq(exB.ve)
        m.d.sync += [exA.valid.eq(ex1.valid), exA.idx.eq(ex1.idx), exA.keep.eq(ex1.keep),
                     exB.valid.eq(exA.valid), exB.idx.eq(exA.idx), exB.keep.eq(exA.keep), exB.ve.eq(ve2),
                     exB.live.eq(exA.keep & (neg | (n_int < fixed.EXP2_CUTOFF))),
                     exB.r.eq(Mux(neg, 0, v[:fixed.SCORE_FRAC])), exB.n.eq(Mux(neg, 0, n_int[:4])),
                     exC.valid.eq(exB.valid), exC.idx.eq(exB.idx), exC.live.eq(exB.live),
                     exC.lut.eq(self._lut_r.data), exC.n.eq(exB.n),
                     ex2.valid.eq(exD.valid), ex2.idx.eq(exD.idx), ex2.e.eq(Mux(exD.live, e_val, 0))]
        with m.If(ex2.valid):
            for k, (_, w) in enumerate(banks):
                with m.If(ebank == k):
                    m.d.comb += [w.addr.eq(ex2.idx), w.data.eq(ex2.e), w.en.eq(1)]
            m.d.sync += exp_sum.eq(exp_sum + ex2.e)
        return ex2.valid, exp_sum

    def _prob_pass(self, m, big_e, rcp, banks):
        """Returns a probability written."""
        ctl, ve2 = self.ctl, self.exps.pvalue_exp
        pr1 = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1}))
        m.d.sync += [pr1.valid.eq(ctl.prob.valid), pr1.idx.eq(ctl.prob.payload.idx),
                     pr1.keep.eq(ctl.prob.payload.keep)]
        prA = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1, "e": 16}))
        prM = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1, "ve": signed(8),
                                        "lo": 33, "hi": 25}))
        pr2 = Signal(data.StructLayout({"valid": 1, "idx": 16, "align": 5, "prod": 42}))
        pr3 = Signal(data.StructLayout({"valid": 1, "idx": 16, "align": 5, "p": 16}))
        pshift = fixed.RECIP_BITS - fixed.PROB_BITS
        # (each bank's term registered straight from its block RAM, the bank chosen after)
        prA_e = [Signal(16, reset_less=True, name=f"prA_e{k}") for k in range(2)]
        prA_bank = Signal()
        m.d.sync += [prA.valid.eq(pr1.valid), prA.idx.eq(pr1.idx), prA.keep.eq(pr1.keep), prA_bank.eq(ctl.pbank)]
        m.d.sync += [prA_e[k].eq(banks[k][0].data[:16]) for k in range(2)]
        m.d.comb += prA.e.eq(Mux(prA_bank, prA_e[1], prA_e[0]))
        # the chosen term registered again (prB), so the multipliers start from flip-flops: the
        # bank multiplexer in front of the DSPs made their products the slowest path (10.36 ns)
        # (the value exponent, read for prA's key, goes along)
        prB = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1, "e": 16, "ve": signed(8)}))
        m.d.sync += [prB.valid.eq(prA.valid), prB.idx.eq(prA.idx), prB.keep.eq(prA.keep), prB.e.eq(prA.e),
                     prB.ve.eq(ve2)]
        m.d.sync += [prM.valid.eq(prB.valid), prM.idx.eq(prB.idx), prM.keep.eq(prB.keep), prM.ve.eq(prB.ve),
                     prM.lo.eq(prB.e * rcp[:17]), prM.hi.eq(prB.e * rcp[17:])]
        ediff = big_e - prM.ve
        # a masked key's weight is 0, which is also what the largest shift gives (p < 2^15, so
        # round_shift(p, 16) == 0): the mask goes into the shift, not into a multiplexer after it
        m.d.sync += [pr2.valid.eq(prM.valid), pr2.idx.eq(prM.idx),
                     pr2.align.eq(Mux(~prM.keep | (ediff > fixed.ALIGN_CUTOFF), fixed.ALIGN_CUTOFF,
                                      Mux(ediff < 0, 0, ediff))),     # (< 0: a host's E, ATTN_PASS)
                     pr2.prod.eq((prM.hi << 17) + prM.lo)]
        p_val = (pr2.prod + (1 << (pshift - 1))) >> pshift
        m.d.sync += [pr3.valid.eq(pr2.valid), pr3.idx.eq(pr2.idx), pr3.align.eq(pr2.align),
                     pr3.p.eq(Mux(p_val > fixed.PROB_MAX, fixed.PROB_MAX, p_val))]
        w_val = round_shift_var(pr3.p, pr3.align)
        with m.If(pr3.valid):
            m.d.comb += [self._pm_w.addr.eq(pr3.idx), self._pm_w.data.eq(pr3.p), self._pm_w.en.eq(1)]
        wm_wr = Signal(data.StructLayout({"addr": len(self.wm_w.addr), "data": 16, "en": 1}))
        m.d.sync += [wm_wr.addr.eq(pr3.idx), wm_wr.data.eq(w_val), wm_wr.en.eq(pr3.valid)]
        if self.layout.contract == 2:
            k = self.k
            with m.If(k.valid):
                m.d.sync += [wm_wr.addr.eq(k.payload.word * self.layout.P + k.payload.lane),
                             wm_wr.data.eq(k.payload.y), wm_wr.en.eq(1)]
        m.d.comb += [self.wm_w.addr.eq(wm_wr.addr), self.wm_w.data.eq(wm_wr.data), self.wm_w.en.eq(wm_wr.en)]
        return pr3.valid
