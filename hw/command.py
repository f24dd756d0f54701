"""The top's command processor: judges each command frame at its END, keeps the device's state
and runs the engine."""

import types

from amaranth.hdl import C, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hmtx.model.protocol import RECALL_FLAGS_MASK, RECALL_PROBS, ops_of, takes_attn_pass

from .engine import Op as EngineOp
from .frame_parser import FrameSignature
from .response import CYCLES_PAYLOAD, ResponseSignature
from .wire import ENGINE_CONTROL, Opcode, Status, engine_part

__all__ = ["CommandProcessor"]


class CommandProcessor(wiring.Component):
    """Stop-and-wait command sequencing: receive a frame, judge it, execute it, have it answered.

    While ``receiving`` the frame parser takes the frame. At its END the frame is judged in the
    documented order (docs/protocol.md section 4: BAD_FRAME, BAD_CRC, BAD_OPCODE, BAD_LENGTH,
    BAD_ARG -- RECALL's flags byte, protocol 1.2, included --, then per opcode SLOT_RANGE,
    NO_WEIGHTS, EMPTY_CACHE) in two steps (CHECK: every
    condition into a register; CHECK2: the status from them); an empty body is ignored. A good
    command executes (EXEC: RESET_CACHE and LOAD_WEIGHTS change the state in one cycle;
    WRITE_MEMORY, RECALL, ATTENTION and ATTN_PASS start the engine and WAIT for it to be done),
    the cycle counters are updated (FINISH), and the response generator is started (in the same
    cycle for an error); the next frame is received once it has sent the response. The opcodes
    known are those of ``version`` (the top's protocol: ATTN_PASS only from 1.3 / 2.2).

    State: the cache's ``fill`` and write pointer, W_q's and W_k's exponent, shift, rows
    received and loaded flag (``frame.weights``: the parser continues a chunk from them), the
    cycle counters of CYCLES, the slot the last WRITE_MEMORY wrote; with ATTN_PASS, whether Q
    rows are held and the pass-3 accumulators open, and their n_q (docs/protocol.md section 10,
    ``GoldenDevice._frame``: every frame but INFO, STATUS, CYCLES, READ_SLOT and an accepted
    ATTN_PASS drops both; an accepted ATTN_PASS holds its Q rows and opens the accumulators in
    pass 3 without ``last`` only).

    Members
    -------
    frame : In(FrameSignature)
        The frame parser's output.
    engine : In(engine_part(engine, ENGINE_CONTROL))
        Starts the engine's operations.
    respond : Out(ResponseSignature)
        To the response generator.
    receiving : Out(1)
        Command bytes may be taken.
    """

    def __init__(self, layout, version):
        self._layout = layout
        self._ops = ops_of(version)
        self._attn = takes_attn_pass(version)
        super().__init__({
            "frame": In(FrameSignature(layout)),
            "engine": In(engine_part(layout, ENGINE_CONTROL)),
            "respond": Out(ResponseSignature(layout)),
            "receiving": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        N = self._layout.config.n_slots
        f, eng, rsp = self.frame, self.engine, self.respond
        ws = f.weights
        fill = Signal(range(N + 1))
        wp = Signal(range(N))
        written = Signal(16)                # the slot the last WRITE_MEMORY wrote
        cycles = Signal(CYCLES_PAYLOAD)
        cyc_run = Signal(32)
        status = Signal(Status)
        m.d.comb += [eng.wq_exp.eq(ws[0].exp), eng.wk_exp.eq(ws[1].exp),
                     eng.wq_shift.eq(ws[0].shift), eng.wk_shift.eq(ws[1].shift)]
        m.d.comb += [rsp.status.eq(status), rsp.opcode.eq(f.opcode), rsp.slot.eq(f.header.read_slot.slot),
                     rsp.n_q.eq(f.header.attention.n_q), rsp.apass.eq(f.header.attn_pass.flags.pass_),
                     rsp.alast.eq(f.header.attn_pass.flags.last), rsp.fill.eq(fill), rsp.write_pointer.eq(wp),
                     rsp.loaded.eq(Cat(ws[0].loaded, ws[1].loaded)),
                     rsp.next_row[0].eq(ws[0].next_row), rsp.next_row[1].eq(ws[1].next_row),
                     rsp.written_slot.eq(written), rsp.cycles.eq(cycles)]

        # ATTN_PASS's state: Q rows held, accumulators open (both for ap_nq query rows: the
        # accumulators are only ever opened by a frame that also holds its Q rows)
        ap = types.SimpleNamespace(held=Signal(), open=Signal(), nq=Signal(8))
        with m.FSM():
            with m.State("RX"):
                m.d.comb += [self.receiving.eq(1), f.receive.eq(1)]
                with m.If(f.end):
                    m.next = "CHECK"
            self._judge(m, status, fill, cyc_run, ap)
            self._execute(m, fill, wp, written, cycles, cyc_run, ap)
            with m.State("RESPOND"):
                with m.If(rsp.done):
                    m.next = "NEXT"
            with m.State("NEXT"):
                m.d.comb += f.clear.eq(1)
                m.next = "RX"
        return m

    def _judge(self, m, status, fill, cyc_run, ap):
        """The states CHECK and CHECK2: the frame's status, into ``status``. CHECK registers
        every condition (each a compare of the frame's fields or the device state, which hold
        still from END to EXEC); CHECK2 then decides from flip-flops only."""
        c = self._layout.config
        MQ, MK = c.max_queries, c.max_keys
        f, ws, rsp = self.frame, self.frame.weights, self.respond
        opcode, count = f.opcode, f.length
        attention = f.header.attention
        known_r, length_ok_r, arg_bad_r = Signal(), Signal(), Signal()
        # RECALL: a d + 4 body carries the flags byte (protocol 1.2), a d + 3 body asks for everything
        flagged = count == c.d + 4
        probs_r = Signal()
        m.d.comb += rsp.probs.eq(probs_r)
        empty_r, frame_bad_r, crc_bad_r, weights_fail_r = Signal(), Signal(), Signal(), Signal()
        keeps_ap_r = Signal()
        op_status_r = Signal(Status)        # the per-opcode checks' status (OK: none failed)
        with m.State("CHECK"):
            length_ok = Signal()
            with m.Switch(opcode):
                with m.Case(Opcode.LOAD_WEIGHTS):
                    m.d.comb += length_ok.eq((count >= 8) & (count == f.weights_length))
                with m.Case(Opcode.ATTENTION):
                    m.d.comb += length_ok.eq((count >= 4) & (count == f.attention_length))
                with m.Case(Opcode.WRITE_MEMORY):
                    m.d.comb += length_ok.eq(count == c.d + 3)
                with m.Case(Opcode.RECALL):
                    m.d.comb += length_ok.eq((count == c.d + 3) | flagged)
                with m.Case(Opcode.READ_SLOT):
                    m.d.comb += length_ok.eq(count == 4)
                if self._attn:
                    with m.Case(Opcode.ATTN_PASS):
                        m.d.comb += length_ok.eq((count >= 7) & (count == f.attn_pass_length))
                with m.Default():
                    m.d.comb += length_ok.eq(count == 2)
            arg_bad = Signal()
            with m.Switch(opcode):
                with m.Case(Opcode.LOAD_WEIGHTS):
                    m.d.comb += arg_bad.eq(~f.weights_ok | f.bad_field)
                with m.Case(Opcode.ATTENTION):
                    n_q, n_k = attention.n_q, attention.n_k
                    m.d.comb += arg_bad.eq(f.bad_field | (n_q < 1) | (n_q > MQ) | (n_k < 1) | (n_k > MK)
                                           | (attention.flags.reserved != 0)
                                           | (attention.flags.causal & (n_q > n_k)))
                with m.Case(Opcode.RECALL):
                    m.d.comb += arg_bad.eq(f.bad_field | (flagged & ((f.tail & (0xFF & ~RECALL_FLAGS_MASK)) != 0)))
                if self._attn:
                    with m.Case(Opcode.ATTN_PASS):
                        a = f.header.attn_pass
                        fl, n_q, n_k = a.flags, a.n_q, a.n_k
                        # GoldenDevice._op_attn_pass's rules (all BAD_ARG; the rows', V exponents',
                        # E's and sums' ranges came with the frame, bad_field)
                        m.d.comb += arg_bad.eq(
                            f.bad_field | (n_q < 1) | (n_q > MQ) | (n_k < 1) | (n_k > MK) | (fl.reserved != 0)
                            | (fl.pass_ == 0) | ((fl.pass_ != 3) & (fl.first | fl.last)) | (~fl.causal & (a.diag != 0))
                            | (~fl.q & ~(ap.held & (ap.nq == n_q)))
                            | ((fl.pass_ == 3) & ~fl.first & ~(ap.open & (ap.nq == n_q))))
                with m.Default():
                    m.d.comb += arg_bad.eq(f.bad_field)
            op_status = Signal(Status)
            # Contract 1's WRITE_MEMORY projects with W_k and its RECALL with W_q; contract 2's
            # WRITE_MEMORY folds W_q into the key as well, and its RECALL reads no weights.
            folds = self._layout.contract == 2
            write_needs = (ws[1].loaded & ws[0].loaded) if folds else ws[1].loaded
            recall_needs = C(1, 1) if folds else ws[0].loaded
            with m.If((opcode == Opcode.WRITE_MEMORY) & ~write_needs):
                m.d.comb += op_status.eq(Status.NO_WEIGHTS)
            with m.Elif((opcode == Opcode.RECALL) & ~recall_needs):
                m.d.comb += op_status.eq(Status.NO_WEIGHTS)
            with m.Elif((opcode == Opcode.RECALL) & (fill == 0)):
                m.d.comb += op_status.eq(Status.EMPTY_CACHE)
            with m.Elif((opcode == Opcode.READ_SLOT) & (f.header.read_slot.slot >= fill)):
                m.d.comb += op_status.eq(Status.SLOT_RANGE)
            if self._attn:
                # (the ATTN_PASS state survives only the read-only opcodes, an error or not, and
                # an accepted ATTN_PASS: GoldenDevice._frame)
                read_only = (Opcode.INFO, Opcode.STATUS, Opcode.CYCLES, Opcode.READ_SLOT)
                m.d.sync += keeps_ap_r.eq(Cat(*[opcode == op for op in read_only]).any() & ~f.overlong)
            m.d.sync += [known_r.eq(Cat(*[opcode == op for op in self._ops]).any()),
                         length_ok_r.eq(length_ok), arg_bad_r.eq(arg_bad), op_status_r.eq(op_status),
                         empty_r.eq(count == 0), frame_bad_r.eq(f.overlong | (count == 1)),
                         crc_bad_r.eq(~f.crc_ok),
                         probs_r.eq(~flagged | (f.tail & RECALL_PROBS).any()),
                         # (a LOAD_WEIGHTS frame that fails invalidates the matrix it names)
                         weights_fail_r.eq((opcode == Opcode.LOAD_WEIGHTS) & (count >= 2)
                                           & (f.header.weights.matrix <= 1))]
            m.next = "CHECK2"

        with m.State("CHECK2"):
            # the documented order: BAD_FRAME, BAD_CRC, BAD_OPCODE, BAD_LENGTH, BAD_ARG, per-op
            st = Signal(Status)
            with m.If(frame_bad_r):
                m.d.comb += st.eq(Status.BAD_FRAME)
            with m.Elif(crc_bad_r):
                m.d.comb += st.eq(Status.BAD_CRC)
            with m.Elif(~known_r):
                m.d.comb += st.eq(Status.BAD_OPCODE)
            with m.Elif(~length_ok_r):
                m.d.comb += st.eq(Status.BAD_LENGTH)
            with m.Elif(arg_bad_r):
                m.d.comb += st.eq(Status.BAD_ARG)
            with m.Else():
                m.d.comb += st.eq(op_status_r)
            m.d.sync += [status.eq(st), cyc_run.eq(0)]   # compute cycles start after this
            if self._attn:
                # every frame drops it but those that keep it; an accepted ATTN_PASS sets it
                # again in EXEC (an empty body is no frame: nothing changes)
                with m.If(~empty_r & ~keeps_ap_r):
                    m.d.sync += [ap.held.eq(0), ap.open.eq(0)]
            with m.If(empty_r):
                # (the opcode is still 0: no body byte since the parser was cleared)
                with m.If(~f.overlong):
                    m.next = "NEXT"           # empty body: ignored
                with m.Else():
                    m.d.comb += rsp.start.eq(1)
                    m.next = "RESPOND"
            with m.Elif(st != Status.OK):
                # a failed LOAD_WEIGHTS may have written part of its matrix
                with m.If(weights_fail_r):
                    matrix = f.header.weights.matrix
                    for n in range(2):
                        with m.If(matrix == n):
                            m.d.sync += [ws[n].loaded.eq(0), ws[n].next_row.eq(0)]
                m.d.comb += rsp.start.eq(1)
                m.next = "RESPOND"
            with m.Else():
                m.next = "EXEC"

    def _execute(self, m, fill, wp, written, cycles, cyc_run, ap):
        """The states EXEC, WAIT and FINISH: a good command's effect, and its cycles counted."""
        N = self._layout.config.n_slots
        f, ws, eng, rsp = self.frame, self.frame.weights, self.engine, self.respond
        opcode = f.opcode
        hdr = f.header.weights
        with m.State("EXEC"):
            m.d.sync += cyc_run.eq(cyc_run + 1)
            with m.Switch(opcode):
                with m.Case(Opcode.RESET_CACHE):
                    m.d.sync += [fill.eq(0), wp.eq(0)]
                    m.next = "FINISH"
                with m.Case(Opcode.LOAD_WEIGHTS):
                    for n in range(2):
                        with m.If(hdr.matrix[0] == n):
                            with m.If(hdr.row_offset == 0):
                                m.d.sync += [ws[n].exp.eq(hdr.exp), ws[n].shift.eq(hdr.shift)]
                            m.d.sync += [ws[n].next_row.eq(f.weights_end),
                                         ws[n].next_word.eq(f.weights_next.word),
                                         ws[n].next_lane.eq(f.weights_next.lane),
                                         ws[n].loaded.eq(f.weights_end == self._layout.config.d)]
                    m.next = "FINISH"
                with m.Case(Opcode.WRITE_MEMORY, Opcode.RECALL, Opcode.ATTENTION):
                    attention = f.header.attention
                    m.d.comb += [eng.start.eq(1), eng.slot.eq(wp), eng.n_q.eq(attention.n_q),
                                 eng.causal.eq(attention.flags.causal)]
                    with m.Switch(opcode):
                        with m.Case(Opcode.WRITE_MEMORY):
                            m.d.comb += eng.op.eq(EngineOp.WRITE)
                        with m.Case(Opcode.RECALL):
                            m.d.comb += [eng.op.eq(EngineOp.RECALL), eng.n_keys.eq(fill)]
                        with m.Default():
                            m.d.comb += [eng.op.eq(EngineOp.ATTENTION), eng.n_keys.eq(attention.n_k)]
                    m.next = "WAIT"
                if self._attn:
                    with m.Case(Opcode.ATTN_PASS):
                        a = f.header.attn_pass
                        m.d.comb += [eng.start.eq(1), eng.op.eq(EngineOp.ATTN_PASS), eng.slot.eq(wp),
                                     eng.n_q.eq(a.n_q), eng.n_keys.eq(a.n_k), eng.causal.eq(a.flags.causal),
                                     eng.apass.eq(a.flags.pass_), eng.afirst.eq(a.flags.first),
                                     eng.alast.eq(a.flags.last), eng.diag.eq(a.diag)]
                        # its Q rows are held now; pass 3 before the last tile leaves the
                        # accumulators open
                        m.d.sync += [ap.held.eq(1), ap.nq.eq(a.n_q),
                                     ap.open.eq((a.flags.pass_ == 3) & ~a.flags.last)]
                        m.next = "WAIT"
                with m.Default():
                    m.d.comb += rsp.start.eq(1)
                    m.next = "RESPOND"
        with m.State("WAIT"):
            m.d.sync += cyc_run.eq(cyc_run + 1)
            with m.If(eng.done):
                with m.If(opcode == Opcode.WRITE_MEMORY):
                    m.d.sync += [written.eq(wp),
                                 wp.eq(Mux(wp == N - 1, 0, wp + 1)),
                                 fill.eq(Mux(fill == N, N, fill + 1))]
                m.next = "FINISH"
        with m.State("FINISH"):
            m.d.sync += [cycles.total.eq(cycles.total + cyc_run), cycles.last.eq(cyc_run),
                         cycles.op.eq(opcode)]
            m.d.comb += rsp.start.eq(1)
            m.next = "RESPOND"
