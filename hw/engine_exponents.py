"""Exponent tables of the lane engine: every block-floating-point exponent the engine keeps, and
the reads and writes of them that the other units make."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed

from .engine_fold import FOLD_SHIFT_W
from .engine_layout import EXP_W, SHIFT_W
from .regtable import RegisterTable

__all__ = ["ExponentControlSignature", "ScoreExponentsSignature", "SoftmaxExponentsSignature",
           "ExponentTablesSignature", "ExponentTables"]


class ExponentControlSignature(wiring.Signature):
    """The sequencer's side of the exponent tables.

    Members
    -------
    attn : Out(1)
        ATTENTION: a key's exponents are its K and V rows' (``vexp``), not the slot's.
    slot, slot_wr : Out(...)
        WRITE: enter M_i's and K_i's exponents for ``slot`` (a pulse; they are written a cycle later).
    q_vec : Out(1)
        RECALL: q_exp is the vector's exponent plus W_q's (registered beforehand).
    q_row, row, qbank : Out(...)
        ATTENTION: q_exp of bank ``qbank`` is Q row ``row``'s exponent (the row's entry is there
        the cycle after ``row`` changes; ``q_row`` holds while the row loads). The score unit
        reads the q_exp of each score's bank, so two rows' scores can follow each other.
    row_done, orow : Out(...)
        Row ``orow`` (0 for a recall) is done: write its output exponent ``E - (PROB_BITS - OUT_SHIFT)``.
    key, pkey : Out(16)
        The keys at the head of the exp2 pass and of the probability pass (their value
        exponents' addresses; the passes may run at once, for different rows).
    kf_wr : Out(1)
        Contract 2's WRITE, once the fold shift is known: K'_i's exponent ``e_K + e_Wq + s``
        into ``kexp[slot]`` over K_i's (a pulse; written a cycle later).
    """

    def __init__(self, layout):
        c = layout.config
        super().__init__({
            "attn": Out(1),
            "slot": Out(range(c.n_slots)), "slot_wr": Out(1),
            "q_vec": Out(1), "q_row": Out(1), "row": Out(range(c.max_queries + 1)), "qbank": Out(1),
            "row_done": Out(1), "orow": Out(range(c.max_queries + 1)), "key": Out(16), "pkey": Out(16),
            "kf_wr": Out(1),
        })


class ScoreExponentsSignature(wiring.Signature):
    """The exponents the score unit reads.

    Members
    -------
    key, bank : In(...)
        A key and its row's bank, at the MAC's result.
    slot_exp, row_exp : Out(signed(EXP_W))
        Its exponent, one cycle after ``key``: K_i's (a recall's key, slot ``key``) and K row
        ``key``'s (attention), both read; the score unit picks one after its register, so that
        the tables' read multiplexers end at a flip-flop.
    q_exp : Out(signed(EXP_W))
        The exponent of q (recall) or of the bank's Q row (attention), in the same cycle.
    """

    def __init__(self):
        super().__init__({"key": In(16), "bank": In(1), "slot_exp": Out(signed(EXP_W)),
                          "row_exp": Out(signed(EXP_W)),
                          "q_exp": Out(signed(EXP_W))})


class SoftmaxExponentsSignature(wiring.Signature):
    """The exponents the softmax reads and makes.

    Members
    -------
    value_exp, pvalue_exp : Out(signed(8))
        The value exponent (M_i's, or V row b's) of the control's ``key`` (exp2 pass) and
        ``pkey`` (probability pass), two cycles after it.
    big_e : In(signed(EXP_W))
        E of the row in the probability pass (the row's output exponent follows from it).
    """

    def __init__(self):
        super().__init__({"value_exp": Out(signed(8)), "pvalue_exp": Out(signed(8)), "big_e": In(signed(EXP_W))})


class ExponentTablesSignature(wiring.Signature):
    """Members of :class:`ExponentTables`.

    Members
    -------
    ctl : In(ExponentControlSignature(layout))
    score : Out(ScoreExponentsSignature())
    softmax : Out(SoftmaxExponentsSignature())
    wq_exp, wk_exp, wq_shift, wk_shift, wr_vexp_*, rd_mexp_*, rd_kexp_*, rd_oexp_* : ...
        The owner's (:class:`~hmtx.hw.engine.EngineSignature`, same timing).
    fold_shift : In(FOLD_SHIFT_W)
        Contract 2: the fold unit's shift s of K'_i (stable when ``ctl.kf_wr`` pulses).
    """

    def __init__(self, layout):
        c = layout.config
        super().__init__({
            "ctl": In(ExponentControlSignature(layout)),
            "score": Out(ScoreExponentsSignature()),
            "softmax": Out(SoftmaxExponentsSignature()),
            "wq_exp": In(signed(8)), "wk_exp": In(signed(8)),
            "wq_shift": In(SHIFT_W), "wk_shift": In(SHIFT_W),
            "wr_vexp_addr": In(range(layout.ROWS)), "wr_vexp_data": In(signed(8)), "wr_vexp_en": In(1),
            "rd_mexp_addr": In(range(c.n_slots)), "rd_mexp_data": Out(signed(8)),
            "rd_kexp_addr": In(range(c.n_slots)), "rd_kexp_data": Out(signed(EXP_W)),
            "rd_oexp_addr": In(range(c.max_queries)), "rd_oexp_data": Out(signed(EXP_W)),
            "fold_shift": In(FOLD_SHIFT_W),
        })


class ExponentTables(wiring.Component):
    """The engine's exponent tables and the units' reads and writes of them.

    * ``vexp``: one int8 exponent per input vector/row (the vector uses entry 0), written by the
      owner; ``mexp``, ``kexp``: M_i's and K_i's per slot, written by WRITE; ``oexp``: the
      result exponent of each output row. ``vexp``, ``mexp`` and ``kexp`` are flip-flop tables read
      through a register inside their multiplexer (:class:`~hmtx.hw.regtable.RegisterTable`):
      they are read at a new address every cycle of the exp2 and probability passes. Each read
      of ``vexp`` covers only its part (K rows, V rows, Q rows), a smaller multiplexer with no
      adder in front; the value exponents' reads register their address beside each bank of the
      table first (latency 2), so the sequencer's key counter, whose compares steer it, is not
      pulled towards the tables. ``oexp`` is flip-flops too (its only read is the owner's,
      into logic).
    * The vector's exponent sums (``vexp[0] + W_k's exponent and shift``, the same with W_q's)
      are registered every cycle (``vexp[0]`` and the weights' exponents are stable for cycles
      before a start), so the sequencer only copies registers when it starts a projection.
    * WRITE's M and K exponents, and each row's output exponent, go into their tables from a
      register (the tables' enable decode then starts at flip-flops, not at the sequencer's
      state).

    Members: :class:`ExponentTablesSignature`.
    """

    def __init__(self, layout):
        c = layout.config
        MQ, MK = c.max_queries, c.max_keys
        super().__init__(ExponentTablesSignature(layout))
        self.vexp = RegisterTable(signed(8), layout.ROWS, name="vexp")
        self.mexp = RegisterTable(signed(8), c.n_slots, name="mexp")
        self.kexp = RegisterTable(signed(EXP_W), c.n_slots, name="kexp")
        self.oexp = memory.Memory(shape=signed(EXP_W), depth=MQ, init=[], attrs={"ram_style": "logic"})
        self._vexp_k = self.vexp.read_port(base=MQ, size=MK)
        self._vexp_v = self.vexp.read_port(base=MQ + MK, size=MK, latency=2)
        self._vexp_pv = self.vexp.read_port(base=MQ + MK, size=MK, latency=2)
        self._vexp_q = self.vexp.read_port(size=MQ)
        self._mexp_r = self.mexp.read_port(latency=2)
        self._mexp_pr = self.mexp.read_port(latency=2)
        self._mexp_w = self.mexp.write_port()
        self._kexp_r = self.kexp.read_port()
        self._kexp_w = self.kexp.write_port()
        self._oexp_w = self.oexp.write_port()
        # the owner's ports, after the engine's own
        self._vexp_o, self._mexp_o = self.vexp.write_port(), self.mexp.read_port()
        self._kexp_o, self._oexp_o = self.kexp.read_port(), self.oexp.read_port(domain="comb")

    def elaborate(self, platform):
        m = Module()
        ctl = self.ctl
        for name in ("vexp", "mexp", "kexp", "oexp"):
            m.submodules[name] = getattr(self, name)
        m.d.comb += [self._vexp_o.addr.eq(self.wr_vexp_addr), self._vexp_o.data.eq(self.wr_vexp_data),
                     self._vexp_o.en.eq(self.wr_vexp_en)]
        for name in ("mexp", "kexp", "oexp"):
            port = getattr(self, f"_{name}_o")
            m.d.comb += [port.addr.eq(getattr(self, f"rd_{name}_addr")),
                         getattr(self, f"rd_{name}_data").eq(port.data)]

        # the vector's exponent sums, registered every cycle
        vexp0_r = Signal(signed(8))
        kexp_pre = Signal(signed(EXP_W))
        qexp_pre = Signal(signed(EXP_W))
        vexp0 = self.vexp.data[0]
        m.d.sync += [vexp0_r.eq(vexp0),
                     kexp_pre.eq(vexp0 + self.wk_exp + self.wk_shift),
                     qexp_pre.eq(vexp0 + self.wq_exp + self.wq_shift)]
        # WRITE's M and K exponents
        exp_wr = Signal(data.StructLayout({"slot": len(ctl.slot), "m": signed(8), "k": signed(EXP_W),
                                           "en": 1, "k_only": 1}))
        m.d.sync += exp_wr.en.eq(0)
        with m.If(ctl.slot_wr):
            m.d.sync += [exp_wr.slot.eq(ctl.slot), exp_wr.m.eq(vexp0_r), exp_wr.k.eq(kexp_pre),
                         exp_wr.en.eq(1), exp_wr.k_only.eq(0)]
        with m.If(ctl.kf_wr):
            m.d.sync += [exp_wr.slot.eq(ctl.slot), exp_wr.k.eq(kexp_pre + self.wq_exp + self.fold_shift),
                         exp_wr.en.eq(1), exp_wr.k_only.eq(1)]
        m.d.comb += [self._mexp_w.addr.eq(exp_wr.slot), self._mexp_w.data.eq(exp_wr.m),
                     self._mexp_w.en.eq(exp_wr.en & ~exp_wr.k_only),
                     self._kexp_w.addr.eq(exp_wr.slot), self._kexp_w.data.eq(exp_wr.k),
                     self._kexp_w.en.eq(exp_wr.en)]
        # the exponent of q / of Q row a, per bank
        q_exp = [Signal(signed(EXP_W), name=f"q_exp{k}") for k in range(2)]
        m.d.comb += self._vexp_q.addr.eq(ctl.row)
        with m.If(ctl.q_vec):
            m.d.sync += q_exp[0].eq(qexp_pre)
        with m.If(ctl.q_row):
            with m.If(ctl.qbank):
                m.d.sync += q_exp[1].eq(self._vexp_q.data)
            with m.Else():
                m.d.sync += q_exp[0].eq(self._vexp_q.data)
        # a row's output exponent (the owner reads it only after done)
        oexp_wr = Signal(data.StructLayout({"addr": len(self._oexp_w.addr), "data": signed(EXP_W), "en": 1}))
        m.d.sync += oexp_wr.en.eq(0)
        with m.If(ctl.row_done):
            m.d.sync += [oexp_wr.addr.eq(ctl.orow), oexp_wr.en.eq(1),
                         oexp_wr.data.eq(self.softmax.big_e - (fixed.PROB_BITS - fixed.OUT_SHIFT))]
        m.d.comb += [self._oexp_w.addr.eq(oexp_wr.addr), self._oexp_w.data.eq(oexp_wr.data),
                     self._oexp_w.en.eq(oexp_wr.en)]
        # the scores' key exponents (at the MAC's result), the passes' value exponents (at the issue)
        m.d.comb += [self._kexp_r.addr.eq(self.score.key), self._vexp_k.addr.eq(self.score.key),
                     self.score.slot_exp.eq(self._kexp_r.data), self.score.row_exp.eq(self._vexp_k.data),
                     self.score.q_exp.eq(Mux(self.score.bank, q_exp[1], q_exp[0]))]
        m.d.comb += [self._mexp_r.addr.eq(ctl.key), self._vexp_v.addr.eq(ctl.key),
                     self.softmax.value_exp.eq(Mux(ctl.attn, self._vexp_v.data, self._mexp_r.data)),
                     self._mexp_pr.addr.eq(ctl.pkey), self._vexp_pv.addr.eq(ctl.pkey),
                     self.softmax.pvalue_exp.eq(Mux(ctl.attn, self._vexp_pv.data, self._mexp_pr.data))]
        return m
