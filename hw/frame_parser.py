"""The top's frame parser: SLIP-decoded command bytes in; the header captured, the body counted
and CRC'd, the payload written straight to its place in the engine's memories."""

import types

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed
from hmtx.model.protocol import ATTN_TOTAL_LIMIT, ATTN_TOTAL_MIN, MAX_BODY, SHIFT_MAX, takes_attn_pass

from .engine import SHIFT_W
from .engine_layout import ROW_SCALAR_BYTES
from .slip import Crc8, DecodedByte
from .wire import ENGINE_WRITES, Header, Opcode, engine_part

__all__ = ["weight_state", "FrameSignature", "FrameParser"]


def weight_state(layout) -> data.StructLayout:
    """The device's state of one weight matrix (W_q or W_k), kept by the command processor: its
    exponent and shift, the rows received so far (``next_row``, and where the next row goes:
    lane ``next_lane`` of word ``next_word`` of each column), and whether it is loaded."""
    return data.StructLayout({"exp": signed(8), "shift": SHIFT_W, "next_row": 16,
                              "next_word": range(layout.CB + 1), "next_lane": range(layout.P),
                              "loaded": 1})


class FrameSignature(wiring.Signature):
    """A command frame as the frame parser hands it to the command processor (seen from the
    parser).

    The parser takes decoded bytes while ``receive`` is high; ``end`` is high in the cycle it
    takes the frame's END. Its outputs hold still from then until ``clear``, which starts the
    next frame (the cycle after). ``weights`` is the state of W_q and W_k
    (:func:`weight_state`, kept by the command processor): a LOAD_WEIGHTS chunk continues
    where the previous one ended.

    Members
    -------
    receive : In(1)
    clear : In(1)
    weights : In(ArrayLayout(weight_state, 2))
    end : Out(1)
    opcode : Out(8)
        The first body byte (0 before it).
    header : Out(Header)
        Body bytes 1..7.
    length : Out(16)
        Body bytes so far (the CRC byte included), at most ``MAX_BODY``.
    overlong : Out(1)
        An escape error or a body beyond ``MAX_BODY`` bytes: BAD_FRAME.
    crc_ok : Out(1)
        The CRC of the whole body is 0.
    bad_field : Out(1)
        A payload mantissa of -128, or an exponent out of range.
    weights_ok : Out(1)
        The LOAD_WEIGHTS header is acceptable (docs/protocol.md: matrix, exp, shift, rows,
        row_offset against ``weights``); its mantissas are written only then.
    weights_length, attention_length, attn_pass_length : Out(32)
        The body length a LOAD_WEIGHTS / an ATTENTION / an ATTN_PASS header asks for.
    weights_end : Out(17)
        ``row_offset + rows`` of a LOAD_WEIGHTS header.
    weights_next : Out(StructLayout({word, lane}))
        Where the row after the chunk goes (``next_word``, ``next_lane`` of :func:`weight_state`).
    tail : Out(8)
        Body byte ``d + 2``, the byte after a vector of length d: RECALL's flags byte when the body
        has ``d + 4`` bytes (protocol 1.2; in a ``d + 3`` body it is the CRC).
    """

    def __init__(self, layout):
        super().__init__({
            "receive": In(1), "clear": In(1),
            "weights": In(data.ArrayLayout(weight_state(layout), 2)),
            "end": Out(1), "opcode": Out(8), "header": Out(Header), "length": Out(16),
            "overlong": Out(1), "crc_ok": Out(1), "bad_field": Out(1),
            "weights_ok": Out(1), "weights_length": Out(32), "attention_length": Out(32),
            "attn_pass_length": Out(32), "weights_end": Out(17),
            "weights_next": Out(data.StructLayout({"word": range(layout.CB + 1), "lane": range(layout.P)})),
            "tail": Out(8),
        })


def _payload_write(m, depth, name, lanes):
    """A write into one of the engine's memories, requested (``req``, combinational) and
    registered (``reg``), and the lane enables decoded from the register."""
    # Only flip-flops drive the long way out to the lane block RAMs (the engine registers again
    # on its side). The request carries the lane's number and a valid bit; the one-hot lane
    # enable is decoded after the register -- as a register input, Yosys folds "not writing"
    # into a synchronous reset whose LUT then fans out to all P enable flip-flops.
    fields = {"addr": range(depth), "data": 8, "valid": 1} | ({"lane": range(lanes)} if lanes > 1 else {})
    req = Signal(data.StructLayout(fields), name=f"{name}_req")
    reg = Signal.like(req, name=f"{name}_reg")
    m.d.sync += reg.eq(req)
    return req, reg, (Mux(reg.valid, Const(1, lanes) << reg.lane, 0) if lanes > 1 else reg.valid)


def _exp_ok(byte):
    return byte[7] == byte[6]         # EXP_MIN..EXP_MAX = -64..63: bits 7 and 6 agree


def _row_byte(m, b, col, prow, pbase, aw, al, P, dat_wr, vexp_wr):
    """Byte ``col`` of a BFP8 tile row (ATTENTION's and ATTN_PASS's): byte 0 the row's exponent
    into ``vexp[prow]``, the others its mantissas into lane ``al`` of word ``pbase + aw``;
    an exponent out of range or a mantissa of -128 marks the frame bad."""
    with m.If(col == 0):
        m.d.comb += [vexp_wr.addr.eq(prow), vexp_wr.data.eq(b.byte), vexp_wr.valid.eq(1)]
        with m.If(~_exp_ok(b.byte)):
            m.d.comb += b.bad.eq(1)
    with m.Else():
        m.d.comb += [dat_wr.addr.eq(pbase + aw), dat_wr.lane.eq(al), dat_wr.valid.eq(1),
                     dat_wr.data.eq(b.byte)]
        m.d.sync += [al.eq(Mux(al == P - 1, 0, al + 1)), aw.eq(Mux(al == P - 1, aw + 1, aw))]
        with m.If(b.byte == 0x80):
            m.d.comb += b.bad.eq(1)


class FrameParser(wiring.Component):
    """Takes a command frame's decoded bytes, one per two cycles, while ``frame.receive``.

    Each byte is registered before the parser looks at it (no parser logic sits in front of the
    decoder or between its valid and ready; one byte per two cycles is far above any link
    rate). The CRC register runs over every body byte; the opcode and header bytes are
    captured; payload bytes go straight to their place in the engine's memories -- vector
    mantissas (WRITE_MEMORY, RECALL) to lane ``k % P`` of word ``k // P`` of ``dat``, attention
    rows to their row of ``dat`` (Q at row 0, K at ``max_queries``, V at
    ``max_queries + max_keys``), exponents to ``vexp``, weight mantissas to lane ``c % P`` of
    word ``j*CB + c // P`` of ``w`` once the LOAD_WEIGHTS header is good -- through write
    registers (a write reaches the engine a cycle after its byte; the engine starts >= 4
    cycles after the last payload byte -- END beat, CHECK, CHECK2, EXEC -- and weights are read
    by later commands only). Everything is checked as it streams (field ranges, mantissas
    -128), for the command processor to judge at END. ATTN_PASS (only where ``version`` has it,
    the lane engine's): the per-row scalars to the engine's row scalars a byte at a time, the rows
    as ATTENTION's (Q only when the frame carries them: the held ones stay), pass 1's V exponents
    to ``vexp`` at the V rows.

    Members
    -------
    i : In(stream.Signature(DecodedByte))
        The SLIP decoder's output.
    frame : Out(FrameSignature)
        The frame, to the command processor.
    engine : In(engine_part(engine, ENGINE_WRITES))
        The engine's write ports of ``dat``, ``w``, ``vexp`` and the row scalars.
    """

    def __init__(self, layout, version):
        self._layout = layout
        self._attn = takes_attn_pass(version)
        super().__init__({
            "i": In(stream.Signature(DecodedByte)),
            "frame": Out(FrameSignature(layout)),
            "engine": In(engine_part(layout, ENGINE_WRITES)),
        })

    def elaborate(self, platform):
        m = Module()
        L, f, eng = self._layout, self.frame, self.engine
        c, P, CB = L.config, L.P, L.CB

        beat = Signal(DecodedByte)
        beat_valid = Signal()
        m.d.comb += self.i.ready.eq(f.receive & ~beat_valid)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [beat.eq(self.i.payload), beat_valid.eq(1)]
        with m.If(f.receive & beat_valid):
            m.d.sync += beat_valid.eq(0)
        body = Signal()                 # a body byte is taken
        m.d.comb += [body.eq(f.receive & beat_valid & ~beat.end),
                     f.end.eq(f.receive & beat_valid & beat.end)]
        byte = beat.data

        count = Signal(16)              # body bytes so far (= index of the next one)
        overlong = Signal()
        opcode = Signal(8)
        header = Signal(Header)
        bad_arg = Signal()              # a streamed field out of range (mantissa -128, exponent)
        m.submodules.crc = crc = Crc8()
        m.d.comb += [crc.clear.eq(f.clear), crc.data.eq(byte)]
        with m.If(f.end & beat.err):
            m.d.sync += overlong.eq(1)      # judged as BAD_FRAME like an overlong body
        with m.If(body):
            with m.If(count == MAX_BODY):
                m.d.sync += overlong.eq(1)
            with m.Else():
                m.d.sync += count.eq(count + 1)
                m.d.comb += crc.valid.eq(1)
        with m.If(f.clear):
            m.d.sync += [count.eq(0), overlong.eq(0), bad_arg.eq(0), opcode.eq(0)]

        # Comparisons of the byte index, registered: beats come at least two cycles apart (and
        # none in the first cycle of ``receive``, after ``clear`` cleared count), so a flag
        # computed from count in the cycle after it changed is current at the next beat -- and
        # the parser's decisions start from flip-flops instead of 16-bit compares. The opcode
        # is decoded into flags the same way (it is set at body byte 0, and the body bytes that
        # these flags steer come two or more cycles later).
        def flag(cond, name):
            reg = Signal(name=f"at_{name}")
            m.d.sync += reg.eq(cond)
            return reg
        at = [flag(count == k, str(k)) for k in range(8)]
        ld_stop = Signal(32)            # LOAD_WEIGHTS: the index of the CRC byte
        flags = {
            "vector": flag((count >= 2) & (count < c.d + 2), "vector"),
            "rows": flag(count >= 4, "rows"),
            "weights": flag((count >= 8) & (count < ld_stop), "weights"),
            "op_vector": flag((opcode == Opcode.WRITE_MEMORY) | (opcode == Opcode.RECALL), "op_vector"),
            "op_attention": flag(opcode == Opcode.ATTENTION, "op_attention"),
            "op_weights": flag(opcode == Opcode.LOAD_WEIGHTS, "op_weights"),
        }
        if self._attn:
            flags |= {"ap_body": flag(count >= 6, "ap_body"),
                      "op_attn_pass": flag(opcode == Opcode.ATTN_PASS, "op_attn_pass")}
        at_tail = flag(count == c.d + 2, "tail")
        tail = Signal(8)
        with m.If(body):
            with m.If(at[0]):
                m.d.sync += opcode.eq(byte)
            for k in range(1, 8):
                with m.If(at[k]):
                    m.d.sync += header.bytes[k - 1].eq(byte)
            with m.If(at_tail):
                m.d.sync += tail.eq(byte)

        dat_wr, dat_wr_r, dat_wr_en = _payload_write(m, L.dat_depth, "dat_wr", P)
        w_wr, w_wr_r, w_wr_en = _payload_write(m, 2 * c.d_h * CB, "w_wr", P)
        vexp_wr, vexp_wr_r, vexp_wr_en = _payload_write(m, L.ROWS, "vexp_wr", 1)
        m.d.comb += [eng.wr_vexp_addr.eq(vexp_wr_r.addr), eng.wr_vexp_data.eq(vexp_wr_r.data),
                     eng.wr_vexp_en.eq(vexp_wr_en),
                     eng.wr_dat_addr.eq(dat_wr_r.addr), eng.wr_dat_en.eq(dat_wr_en),
                     eng.wr_w_addr.eq(w_wr_r.addr), eng.wr_w_en.eq(w_wr_en)]
        m.d.comb += [eng.wr_dat_data[l].eq(dat_wr_r.data) for l in range(P)]
        m.d.comb += [eng.wr_w_data[l].eq(w_wr_r.data) for l in range(P)]

        # the byte as the payload parsers see it; they set ``bad`` for a field out of range
        # (BAD_ARG at END)
        b = types.SimpleNamespace(body=body, byte=byte, at=at, flags=flags, bad=Signal())
        with m.If(b.bad):
            m.d.sync += bad_arg.eq(1)
        self._vector(m, b, dat_wr, vexp_wr)
        attention_length = self._attention(m, b, header.attention, dat_wr, vexp_wr)
        weights = self._weights(m, b, header, ld_stop, w_wr)
        if self._attn:
            m.d.comb += f.attn_pass_length.eq(self._attn_pass(m, b, header.attn_pass, dat_wr, vexp_wr))

        m.d.comb += [f.opcode.eq(opcode), f.header.eq(header), f.length.eq(count), f.overlong.eq(overlong),
                     f.crc_ok.eq(crc.zero), f.bad_field.eq(bad_arg), f.attention_length.eq(attention_length),
                     f.tail.eq(tail)]
        m.d.comb += [getattr(f, name).eq(value) for name, value in weights.items()]
        return m

    def _vector(self, m, b, dat_wr, vexp_wr):
        """WRITE_MEMORY / RECALL: the exponent at body byte 1 to ``vexp[0]``, mantissa k (body
        byte 2 + k) to lane k % P of word k // P of ``dat``."""
        P, CB = self._layout.P, self._layout.CB
        vw = Signal(range(CB + 1))
        vl = Signal(range(P))
        with m.If(b.body & b.at[0]):
            m.d.sync += [vw.eq(0), vl.eq(0)]
        with m.If(b.body & b.flags["op_vector"]):
            with m.If(b.at[1]):
                m.d.comb += [vexp_wr.addr.eq(0), vexp_wr.data.eq(b.byte), vexp_wr.valid.eq(1)]
                with m.If(~_exp_ok(b.byte)):
                    m.d.comb += b.bad.eq(1)
            with m.Elif(b.flags["vector"]):
                m.d.comb += [dat_wr.addr.eq(vw), dat_wr.lane.eq(vl), dat_wr.valid.eq(1), dat_wr.data.eq(b.byte)]
                m.d.sync += [vl.eq(Mux(vl == P - 1, 0, vl + 1)), vw.eq(Mux(vl == P - 1, vw + 1, vw))]
                with m.If(b.byte == 0x80):         # -128 is not a BFP8 mantissa
                    m.d.comb += b.bad.eq(1)

    def _attention(self, m, b, hdr, dat_wr, vexp_wr):
        """ATTENTION rows (1 + head_dim bytes each) from body byte 4 on: Q at row 0, K at row
        ``max_queries``, V at row ``max_queries + max_keys``; each row's exponent to ``vexp``,
        its mantissas to its AB words of ``dat``. Returns the body length the header asks for."""
        L = self._layout
        c, P, AB = L.config, L.P, L.AB
        MQ, MK = c.max_queries, c.max_keys
        rin = Signal(range(MQ + 2 * MK + 2))
        col = Signal(range(c.head_dim + 1))
        aw = Signal(range(AB + 1))
        al = Signal(range(P))
        prow = Signal(range(L.ROWS + 1))
        pbase = Signal(range(L.ROWS * AB + 1))
        a_sane = Signal()
        a_qend = Signal(signed(10))
        a_kend = Signal(signed(10))
        a_rows = Signal(10)
        # registered twice: a_rows is set at body byte 3, and the command processor's CHECK comes
        # >= 3 cycles later (END beat two cycles after byte 3, then the state change)
        attn_rows_len = Signal(32)
        attn_len = Signal(32)
        m.d.sync += [attn_rows_len.eq(a_rows * (1 + c.head_dim)), attn_len.eq(5 + attn_rows_len)]
        n_q, n_k = hdr.n_q, hdr.n_k
        with m.If(b.body & b.flags["op_attention"]):
            with m.If(b.at[3]):
                m.d.sync += [rin.eq(0), col.eq(0), aw.eq(0), al.eq(0), prow.eq(0), pbase.eq(0),
                             a_sane.eq((n_q >= 1) & (n_q <= MQ) & (n_k >= 1) & (n_k <= MK)),
                             a_qend.eq(n_q - 1), a_kend.eq(n_q + n_k - 1),
                             a_rows.eq(n_q + 2 * n_k)]
            with m.If(b.flags["rows"] & a_sane & (rin < a_rows)):
                _row_byte(m, b, col, prow, pbase, aw, al, P, dat_wr, vexp_wr)
                with m.If(col == c.head_dim):
                    m.d.sync += [col.eq(0), aw.eq(0), al.eq(0), rin.eq(rin + 1)]
                    with m.If(rin == a_qend):
                        m.d.sync += [prow.eq(MQ), pbase.eq(MQ * AB)]
                    with m.Elif(rin == a_kend):
                        m.d.sync += [prow.eq(MQ + MK), pbase.eq((MQ + MK) * AB)]
                    with m.Else():
                        m.d.sync += [prow.eq(prow + 1), pbase.eq(pbase + AB)]
                with m.Else():
                    m.d.sync += col.eq(col + 1)
        return attn_len

    def _attn_pass(self, m, b, hdr, dat_wr, vexp_wr):
        """ATTN_PASS from body byte 6 on, in segments: the per-row scalars (pass 2: m, 4 bytes;
        pass 3: m, E, sum, 9 bytes; to the engine's row scalars, row by row), the Q rows if the
        frame has them, the K rows, then pass 1's V exponents (to ``vexp`` rows
        ``max_queries + max_keys + b``) or pass 3's V rows; rows go where ATTENTION's go. Sets
        ``bad`` for a row as ATTENTION does, a V exponent or E outside -64..63, a sum outside
        [ATTN_TOTAL_MIN, ATTN_TOTAL_LIMIT). Returns the body length the header asks for."""
        L, eng = self._layout, self.engine
        c, P, AB = L.config, L.P, L.AB
        MQ, MK = c.max_queries, c.max_keys
        assert ATTN_TOTAL_MIN == 1 << 15 and ATTN_TOTAL_LIMIT == 1 << 25     # the byte checks below
        fl = hdr.flags
        n_q, n_k = hdr.n_q, hdr.n_k

        # the row scalars' writes, registered as the memories' are (_payload_write)
        rs_wr = Signal(data.StructLayout({"addr": range(MQ), "byte": range(ROW_SCALAR_BYTES), "data": 8,
                                          "valid": 1}), name="rs_wr_req")
        rs_wr_r = Signal.like(rs_wr, name="rs_wr_reg")
        m.d.sync += rs_wr_r.eq(rs_wr)
        m.d.comb += [eng.wr_rs_addr.eq(rs_wr_r.addr), eng.wr_rs_byte.eq(rs_wr_r.byte),
                     eng.wr_rs_data.eq(rs_wr_r.data), eng.wr_rs_en.eq(rs_wr_r.valid)]

        # the length, over three registers (the header's n_q, n_k and flags are in from body
        # byte 3 on; CHECK comes >= 5 cycles after byte 3): the rows' bytes are a product, whose
        # multiplier and the adders after it did not fit one cycle with the compare at CHECK
        row = 1 + c.head_dim
        p1, p2, p3 = fl.pass_ == 1, fl.pass_ == 2, fl.pass_ == 3
        scal_len, rows_n, v1_len, ap_len = Signal(16), Signal(10), Signal(8), Signal(32)
        rows_len, small_len = Signal(20), Signal(17)
        m.d.sync += [scal_len.eq(Mux(p2, n_q * 4, Mux(p3, n_q * 9, 0))),
                     rows_n.eq(Mux(fl.q, n_q, 0) + n_k + Mux(p3, n_k, 0)),
                     v1_len.eq(Mux(p1, n_k, 0)),
                     rows_len.eq(rows_n * row), small_len.eq(7 + scal_len + v1_len),
                     ap_len.eq(rows_len + small_len)]

        SCAL, QROWS, KROWS, VROWS, VEXPS, DONE = range(6)
        seg = Signal(range(6))
        sane = Signal()
        srow = Signal(range(MQ))
        sbyte = Signal(range(ROW_SCALAR_BYTES))
        sum_hi = Signal()               # the sum so far is >= 2^15 (bit 15 or a byte above set)
        rin = Signal(range(max(MQ, MK) + 1))
        col = Signal(range(c.head_dim + 1))
        aw = Signal(range(AB + 1))
        al = Signal(range(P))
        prow = Signal(range(L.ROWS + 1))
        pbase = Signal(range(L.ROWS * AB + 1))
        qlast, klast = Signal(8), Signal(8)

        def enter(nxt):
            """Start segment ``nxt`` (a row segment: at its first row)."""
            base = {QROWS: 0, KROWS: MQ, VROWS: MQ + MK, VEXPS: MQ + MK}.get(nxt, 0)
            m.d.sync += [seg.eq(nxt), rin.eq(0), col.eq(0), aw.eq(0), al.eq(0), prow.eq(base),
                         pbase.eq(base * AB)]

        def after_k():
            with m.If(fl.pass_ == 1):
                enter(VEXPS)
            with m.Elif(fl.pass_ == 3):
                enter(VROWS)
            with m.Else():
                enter(DONE)

        def rows_or_k():
            with m.If(fl.q):
                enter(QROWS)
            with m.Else():
                enter(KROWS)

        with m.If(b.body & b.flags["op_attn_pass"]):
            with m.If(b.at[5]):
                m.d.sync += [sane.eq((n_q >= 1) & (n_q <= MQ) & (n_k >= 1) & (n_k <= MK)),
                             srow.eq(0), sbyte.eq(0), sum_hi.eq(0), qlast.eq(n_q - 1), klast.eq(n_k - 1)]
                with m.If(p2 | p3):
                    enter(SCAL)
                with m.Else():
                    rows_or_k()
            with m.If(b.flags["ap_body"] & sane):
                with m.Switch(seg):
                    with m.Case(SCAL):
                        m.d.comb += [rs_wr.addr.eq(srow), rs_wr.byte.eq(sbyte), rs_wr.data.eq(b.byte),
                                     rs_wr.valid.eq(1)]
                        with m.If(p3):
                            # E (byte 4) a BFP exponent; sum (bytes 5..8, bits 0..31) in
                            # [2^15, 2^25): bits 25..31 clear, and bit 15 or one above it set
                            with m.Switch(sbyte):
                                with m.Case(4):
                                    with m.If(~_exp_ok(b.byte)):
                                        m.d.comb += b.bad.eq(1)
                                with m.Case(6):
                                    m.d.sync += sum_hi.eq(b.byte[7])
                                with m.Case(7):
                                    m.d.sync += sum_hi.eq(sum_hi | (b.byte != 0))
                                with m.Case(8):
                                    with m.If((b.byte[1:] != 0) | ~(sum_hi | b.byte[0])):
                                        m.d.comb += b.bad.eq(1)
                        with m.If(sbyte == Mux(p3, ROW_SCALAR_BYTES - 1, 3)):
                            m.d.sync += sbyte.eq(0)
                            with m.If(srow == qlast):
                                rows_or_k()
                            with m.Else():
                                m.d.sync += srow.eq(srow + 1)
                        with m.Else():
                            m.d.sync += sbyte.eq(sbyte + 1)
                    with m.Case(QROWS, KROWS, VROWS):
                        _row_byte(m, b, col, prow, pbase, aw, al, P, dat_wr, vexp_wr)
                        with m.If(col == c.head_dim):
                            m.d.sync += [col.eq(0), aw.eq(0), al.eq(0), rin.eq(rin + 1), prow.eq(prow + 1),
                                         pbase.eq(pbase + AB)]
                            with m.If((seg == QROWS) & (rin == qlast)):
                                enter(KROWS)
                            with m.Elif((seg == KROWS) & (rin == klast)):
                                after_k()
                            with m.Elif((seg == VROWS) & (rin == klast)):
                                enter(DONE)
                        with m.Else():
                            m.d.sync += col.eq(col + 1)
                    with m.Case(VEXPS):
                        m.d.comb += [vexp_wr.addr.eq(prow), vexp_wr.data.eq(b.byte), vexp_wr.valid.eq(1)]
                        with m.If(~_exp_ok(b.byte)):
                            m.d.comb += b.bad.eq(1)
                        m.d.sync += [rin.eq(rin + 1), prow.eq(prow + 1)]
                        with m.If(rin == klast):
                            enter(DONE)
        return ap_len

    def _weights(self, m, b, header, ld_stop, w_wr):
        """LOAD_WEIGHTS: mantissa i of the chunk is W[c, j], c = row_offset + i // d_h,
        j = i % d_h, to lane c % P of word j*CB + c // P of ``w`` (W_k from word d_h*CB), once
        the header is good. Returns the frame outputs about the chunk."""
        L, ws = self._layout, self.frame.weights
        c, P, CB = L.config, L.P, L.CB
        hdr = header.weights
        ld_c_word = Signal(range(CB + 1))
        ld_c_lane = Signal(range(P))
        ld_j = Signal(range(c.d_h + 1))
        ld_jbase = Signal(range(2 * c.d_h * CB + 1))
        sel = hdr.matrix[0]
        cur = Signal(ws.shape().elem_shape, name="ld_cur")     # the matrix the header names
        m.d.comb += cur.eq(Mux(sel, ws[1], ws[0]))
        ld_end = Signal(17)
        m.d.comb += ld_end.eq(hdr.row_offset + hdr.rows)
        ld_hdr_ok = ((hdr.matrix <= 1) & (hdr.exp >= fixed.EXP_MIN) & (hdr.exp <= fixed.EXP_MAX)
                     & (hdr.shift <= SHIFT_MAX) & (hdr.rows != 0) & (ld_end <= c.d)
                     & ((hdr.row_offset == 0) | ((hdr.row_offset == cur.next_row)
                        & (hdr.exp == cur.exp) & (hdr.shift == cur.shift))))
        # the header checks registered: the header is complete at least two cycles before the
        # first mantissa is looked at (one beat per two cycles)
        ld_ok_r = Signal()
        m.d.sync += ld_ok_r.eq(ld_hdr_ok)
        with m.If(b.body & b.flags["op_weights"]):
            with m.If(b.at[7]):
                # (the byte is the high byte of rows: header.bytes[6] only from the next cycle on)
                m.d.sync += ld_stop.eq(8 + Cat(header.bytes[5], b.byte) * c.d_h)
                m.d.sync += [ld_j.eq(0), ld_jbase.eq(Mux(sel, c.d_h * CB, 0)),
                             ld_c_word.eq(Mux(hdr.row_offset == 0, 0, cur.next_word)),
                             ld_c_lane.eq(Mux(hdr.row_offset == 0, 0, cur.next_lane))]
            with m.If(b.flags["weights"] & ld_ok_r):
                # (the engine registers the write on its way to the block RAMs)
                m.d.comb += [w_wr.addr.eq(ld_jbase + ld_c_word), w_wr.lane.eq(ld_c_lane),
                             w_wr.valid.eq(1), w_wr.data.eq(b.byte)]
                with m.If(b.byte == 0x80):
                    m.d.comb += b.bad.eq(1)
                with m.If(ld_j == c.d_h - 1):
                    m.d.sync += [ld_j.eq(0), ld_jbase.eq(Mux(sel, c.d_h * CB, 0)),
                                 ld_c_lane.eq(Mux(ld_c_lane == P - 1, 0, ld_c_lane + 1)),
                                 ld_c_word.eq(Mux(ld_c_lane == P - 1, ld_c_word + 1, ld_c_word))]
                with m.Else():
                    m.d.sync += [ld_j.eq(ld_j + 1), ld_jbase.eq(ld_jbase + CB)]
        return {"weights_ok": ld_hdr_ok, "weights_length": ld_stop + 1, "weights_end": ld_end,
                "weights_next": Cat(ld_c_word, ld_c_lane)}
