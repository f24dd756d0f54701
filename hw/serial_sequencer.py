"""The sequential engine's sequencer: which stage runs when."""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed

from .engine import EXP_W, Op
from .serial_signatures import Control, job_layout, read_port, write_port

__all__ = ["Sequencer"]


class Sequencer(wiring.Component):
    """Latches an operation at ``start`` and runs its stages one after the other, each started in
    the cycle the one before signals done, so no cycle is lost between them:

    * WRITE: copy ``M_i`` into its slot (here: a ``vin`` word read in one cycle is written to the
      slot in the next), then ``proj`` (its exponents and ``K_i = W_k^T M_i``);
    * RECALL: ``proj`` (``q = W_q^T s``), then one row: ``scores`` with ``softmax`` collecting
      them, the rest of ``softmax``, ``wsum``, and the row's result exponent into ``oexp``;
    * ATTENTION: per query row ``a``: ``qrow`` (Q row ``a`` into the query buffer), then the
      row as for RECALL.

    Contract 2 (``e.contract``): a WRITE runs ``fold`` after ``proj`` (K'_i = W_q K_i); a
    RECALL is one row as for ATTENTION (``qrow`` loads S, row 0, into the query buffer) without
    ``proj``.

    ``busy`` is high from the cycle after ``start`` to ``done``, the last cycle of the
    operation. While idle, ``vexp[0]`` (the read port's default address) is latched every cycle
    for the operation that starts next: the owner's last write lands >= 4 cycles before a start.

    Members
    -------
    start, op, slot, n_keys, n_q, causal : In
        As in :class:`~hmtx.hw.engine.EngineSignature`.
    busy, done : Out(1)
    job : Out(job_layout)
        The operation, for every stage.
    proj, qrow, scores, softmax, wsum : Out(Control)
        The stages.
    fold : Out(Control)
        Contract 2 only.
    dat : In(memory.ReadPort.Signature)
        ``dat``'s read port, for the copy.
    dat_w : In(memory.WritePort.Signature)
        ``dat``'s write port, for the copy.
    vexp : In(memory.ReadPort.Signature)
        ``vexp``'s read port (``vexp0``).
    big_e : In(signed(EXP_W))
        The row's largest value exponent (from the softmax).
    oexp_w : In(memory.WritePort.Signature)
        ``oexp``'s write port.
    """

    def __init__(self, e):
        self._e = e
        c = e.config
        word = data.ArrayLayout(signed(8), e.P)
        super().__init__({
            **{name: In(e.signature.members[name].shape)
               for name in ("start", "op", "slot", "n_keys", "n_q", "causal")},
            "busy": Out(1), "done": Out(1),
            "job": Out(job_layout(e)),
            "proj": Out(Control), "qrow": Out(Control), "scores": Out(Control), "softmax": Out(Control),
            "wsum": Out(Control),
            **({"fold": Out(Control)} if e.contract == 2 else {}),
            "dat": In(read_port(e.dat_depth, word)),
            "dat_w": In(write_port(e.dat_depth, word, granularity=1)),
            "vexp": In(read_port(e.ROWS, signed(8))),
            "big_e": In(signed(EXP_W)),
            "oexp_w": In(write_port(c.max_queries, signed(EXP_W))),
        })

    def elaborate(self, platform):
        m = Module()
        e, job = self._e, self.job
        CB = e.CB

        # the copy: a vin word read in one cycle is written to the slot in the next
        word = Signal(range(CB + 1))
        copy = Signal(data.StructLayout({"valid": 1, "addr": range(e.dat_depth)}))
        m.d.sync += copy.valid.eq(0)
        with m.If(copy.valid):
            m.d.comb += [self.dat_w.addr.eq(copy.addr), self.dat_w.data.eq(self.dat.data),
                         self.dat_w.en.eq((1 << e.P) - 1)]

        def scores_start():
            m.d.comb += [self.scores.start.eq(1), self.softmax.start.eq(1)]

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.sync += job.vexp0.eq(self.vexp.data)
                with m.If(self.start):
                    m.d.sync += [job.write.eq(self.op == Op.WRITE), job.attn.eq(self.op == Op.ATTENTION),
                                 job.slot.eq(self.slot), job.n_keys.eq(self.n_keys), job.n_q.eq(self.n_q),
                                 job.causal.eq(self.causal & (self.op == Op.ATTENTION)),
                                 job.a.eq(0), word.eq(0)]
                    with m.Switch(self.op):
                        with m.Case(Op.WRITE):
                            m.next = "COPY"
                        if e.contract == 1:
                            with m.Case(Op.RECALL):
                                m.d.comb += self.proj.start.eq(1)
                                m.next = "PROJ"
                        with m.Default():
                            m.next = "ROW"
            with m.State("COPY"):
                m.d.comb += self.dat.addr.eq(word)
                m.d.sync += [copy.valid.eq(1), copy.addr.eq(e.mem_base + job.slot * CB + word), word.eq(word + 1)]
                with m.If(word == CB - 1):
                    m.d.comb += self.proj.start.eq(1)
                    m.next = "PROJ"
            with m.State("PROJ"):
                with m.If(self.proj.done):
                    with m.If(job.write):
                        if e.contract == 1:
                            m.next = "DONE"
                        else:
                            m.d.comb += self.fold.start.eq(1)
                            m.next = "FOLD"
                    with m.Else():
                        scores_start()
                        m.next = "SCORES"
            with m.State("ROW"):
                m.d.sync += job.keep_lim.eq(job.a + job.n_keys - job.n_q)
                m.d.comb += self.qrow.start.eq(1)
                m.next = "QROW"
            with m.State("QROW"):
                with m.If(self.qrow.done):
                    scores_start()
                    m.next = "SCORES"
            with m.State("SCORES"):
                with m.If(self.scores.done):
                    m.next = "SOFTMAX"
            with m.State("SOFTMAX"):
                with m.If(self.softmax.done):
                    m.d.comb += self.wsum.start.eq(1)
                    m.next = "WSUM"
            with m.State("WSUM"):
                with m.If(self.wsum.done):
                    m.next = "ROW_END"
            with m.State("ROW_END"):
                m.d.comb += [self.oexp_w.addr.eq(job.a), self.oexp_w.en.eq(1),
                             self.oexp_w.data.eq(self.big_e - (fixed.PROB_BITS - fixed.OUT_SHIFT))]
                with m.If(job.attn & (job.a + 1 < job.n_q)):
                    m.d.sync += [job.a.eq(job.a + 1)]
                    m.next = "ROW"
                with m.Else():
                    m.next = "DONE"
            if e.contract == 2:
                with m.State("FOLD"):
                    with m.If(self.fold.done):
                        m.next = "DONE"
            with m.State("DONE"):
                m.next = "IDLE"
        m.d.comb += [self.busy.eq(~fsm.ongoing("IDLE")), self.done.eq(fsm.ongoing("DONE"))]
        return m
