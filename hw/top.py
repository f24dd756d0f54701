"""Top level of the hmtx engine: command frames in, response frames out (docs/protocol.md)."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed
from hmtx.model.configs import EngineConfig
from hmtx.model.protocol import MAGIC, MAX_BODY, SHIFT_MAX, VERSION, Info, Op as WireOp, Status as WireStatus

from . import ENGINES
from .engine import Engine, Op as EngineOp
from .slip import SlipDecoder, SlipEncoder, crc8_next

__all__ = ["HmtxTop", "OPCODES", "STATUS", "ENGINES", "engine_class"]

# The wire constants exist once, in the protocol's executable form (model/protocol.py); the
# tests compare this RTL with the golden device byte for byte.
OPCODES = {op.name: int(op) for op in WireOp}
STATUS = {st.name: int(st) for st in WireStatus}


def engine_class(kind: str):
    """The engine class of ``kind`` (one of :data:`ENGINES`): Engine for "lanes", SerialEngine
    for "serial"."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
    if kind == "serial":
        # imported only when asked for: the ECP5 builds and their tests never need it
        from .serial_engine import SerialEngine
        return SerialEngine
    return Engine


class HmtxTop(wiring.Component):
    """The hmtx recall/attention engine behind a framed byte-stream host interface.

    Bytes from ``cmd`` are un-SLIPped and consumed one per cycle while the device is idle: the
    header fields are captured, payload bytes go straight to their place in the engine's input
    buffer (vector mantissas to P-byte words, exponents to their table, weight mantissas to
    the weight memory at word ``j*ceil(d/P) + c//P``) while the CRC register runs over every
    body byte. At END the frame is judged in the documented order; a valid compute command
    starts the engine; the response is generated from registers and result memories, CRC'd on
    the fly and SLIP-encoded onto ``rsp``. ``cmd`` is not ready while a command executes or its
    response is being sent (protocol: stop-and-wait).

    ``engine`` picks the datapath behind the same interface: ``"lanes"`` (default), the
    pipelined P-lane :class:`~hmtx.hw.engine.Engine` (ECP5), or ``"serial"``,
    :class:`~hmtx.hw.serial_engine.SerialEngine` with one time-shared multiplier (iCE40 UP5K).
    Both give the same responses, CYCLES' counts aside. ``engine_kind`` keeps the
    choice for reports.

    Members
    -------
    cmd : In(stream.Signature(8))
        Command frame bytes.
    rsp : Out(stream.Signature(8))
        Response frame bytes.
    """

    cmd: In(stream.Signature(8))
    rsp: Out(stream.Signature(8))

    def __init__(self, config: EngineConfig, engine: str = "lanes"):
        if not isinstance(config, EngineConfig):
            raise ValueError(f"HmtxTop needs an EngineConfig, got {type(config).__name__}")
        for name in ("d", "d_h", "n_slots", "lanes", "head_dim", "max_queries", "max_keys"):
            if getattr(config, name) > 0xFFFF:
                raise ValueError(f"config {config.name!r}: {name} does not fit the protocol's u16")
        if config.max_queries > 255 or config.max_keys > 255:
            raise ValueError(f"config {config.name!r}: tile sizes must fit the protocol's u8 header")
        self.config = config
        self.engine = engine_class(engine)(config)      # (ValueError for an unknown kind)
        self.engine_kind = engine
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        c = self.config
        eng = m.submodules.engine = self.engine
        P, CB, AB = eng.P, eng.CB, eng.AB
        MQ, MK, N = c.max_queries, c.max_keys, c.n_slots
        m.submodules.dec = dec = SlipDecoder()
        m.submodules.enc = enc = SlipEncoder()
        # Bytes are taken only between commands (stop-and-wait), into a register first: cmd.ready
        # then depends on flip-flops only, not on the byte's value (the decoder's ready does).
        rx = Signal()
        in_valid = Signal()
        in_byte = Signal(8)
        m.d.comb += [self.cmd.ready.eq(rx & ~in_valid), dec.i.valid.eq(in_valid), dec.i.payload.eq(in_byte)]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [in_byte.eq(self.cmd.payload), in_valid.eq(1)]
        with m.If(dec.i.valid & dec.i.ready):
            m.d.sync += in_valid.eq(0)

        def le(value, nbytes):
            """Little-endian bytes of an int or a Value (sign- or zero-extended to nbytes)."""
            if isinstance(value, int):
                return [(value >> (8 * k)) & 0xFF for k in range(nbytes)]
            v = Value.cast(value)
            ext = Signal(signed(8 * nbytes) if v.shape().signed else 8 * nbytes)
            m.d.comb += ext.eq(v)
            return [ext[8 * k:8 * k + 8] for k in range(nbytes)]
        wiring.connect(m, enc.o, wiring.flipped(self.rsp))


        # --- device state --------------------------------------------------------------------
        fill = Signal(range(N + 1))
        wp = Signal(range(N))
        loaded = Signal(2)
        w_exp = [Signal(signed(8), name=f"w{n}_exp") for n in "qk"]
        w_shift = [Signal(5, name=f"w{n}_shift") for n in "qk"]
        next_row = [Signal(16, name=f"w{n}_next_row") for n in "qk"]
        nr_word = [Signal(range(CB + 1), name=f"w{n}_nr_word") for n in "qk"]
        nr_lane = [Signal(range(P), name=f"w{n}_nr_lane") for n in "qk"]
        cyc_total = Signal(64)
        cyc_last = Signal(32)
        cyc_op = Signal(8)
        cyc_run = Signal(32)
        resp_slot = Signal(16)
        m.d.comb += [eng.wq_exp.eq(w_exp[0]), eng.wk_exp.eq(w_exp[1]),
                     eng.wq_shift.eq(w_shift[0]), eng.wk_shift.eq(w_shift[1])]

        # --- frame state -----------------------------------------------------------------------
        count = Signal(16)          # body bytes so far (= index of the next one)
        overlong = Signal()
        crc = Signal(8)
        opcode = Signal(8)
        hdr = [Signal(8, name=f"hdr{k}") for k in range(8)]
        bad_arg = Signal()          # a streamed field out of range (mantissa -128, exponent)
        status = Signal(8)
        known_r, length_ok_r, arg_bad_r = Signal(), Signal(), Signal()

        def is_op(name):
            return opcode == OPCODES[name]

        # vector payload (WRITE_MEMORY, RECALL): exponent at body[1], mantissa k at body[2 + k]
        vw = Signal(range(CB + 1))
        vl = Signal(range(P))
        # attention rows
        rin = Signal(range(MQ + 2 * MK + 2))
        col = Signal(range(c.head_dim + 1))
        aw = Signal(range(AB + 1))
        al = Signal(range(P))
        prow = Signal(range(eng.ROWS + 1))
        pbase = Signal(range(eng.ROWS * AB + 1))
        n_q, n_k, aflags = hdr[1], hdr[2], hdr[3]
        a_sane = Signal()
        a_qend = Signal(signed(10))
        a_kend = Signal(signed(10))
        a_rows = Signal(10)
        # weight rows: mantissa i is W[c, j], c = row_offset + i // d_h, j = i % d_h
        ld_c_word = Signal(range(CB + 1))
        ld_c_lane = Signal(range(P))
        ld_j = Signal(range(c.d_h + 1))
        ld_jbase = Signal(range(2 * c.d_h * CB + 1))
        ld_matrix = hdr[1]
        ld_exp = hdr[2].as_signed()
        ld_shift = hdr[3]
        ld_row_offset = Cat(hdr[4], hdr[5])
        ld_rows = Cat(hdr[6], hdr[7])
        ld_sel = ld_matrix[0]
        ld_next = Mux(ld_sel, next_row[1], next_row[0])
        ld_end = Signal(17)
        m.d.comb += ld_end.eq(ld_row_offset + ld_rows)
        ld_hdr_ok = ((ld_matrix <= 1) & (ld_exp >= fixed.EXP_MIN) & (ld_exp <= fixed.EXP_MAX)
                     & (ld_shift <= SHIFT_MAX) & (ld_rows != 0) & (ld_end <= c.d)
                     & ((ld_row_offset == 0) | ((ld_row_offset == ld_next)
                        & (ld_exp == Mux(ld_sel, w_exp[1], w_exp[0]))
                        & (ld_shift == Mux(ld_sel, w_shift[1], w_shift[0])))))
        slot_arg = Cat(hdr[1], hdr[2])
        # header checks registered: the header is complete at least two cycles before the first
        # mantissa is looked at (one beat per two cycles)
        ld_ok_r = Signal()
        ld_stop = Signal(32)
        m.d.sync += ld_ok_r.eq(ld_hdr_ok)

        # registered twice: a_rows is set at body byte 3, and CHECK comes >= 3 cycles later
        # (END beat two cycles after byte 3, then the state change)
        attn_rows_len = Signal(32)
        attn_len = Signal(32)
        m.d.sync += [attn_rows_len.eq(a_rows * (1 + c.head_dim)), attn_len.eq(5 + attn_rows_len)]
        ld_len = Signal(32)
        m.d.comb += ld_len.eq(ld_stop + 1)                       # 9 + rows * d_h

        # The decoded beat is registered before the parser looks at it, so no parser logic sits
        # between cmd__valid and cmd__ready or in front of the decoder; one byte per two cycles
        # is far above any link rate.
        beat = Signal.like(dec.o.payload)
        beat_valid = Signal()
        m.d.comb += dec.o.ready.eq(rx & ~beat_valid)
        with m.If(dec.o.valid & dec.o.ready):
            m.d.sync += [beat.eq(dec.o.payload), beat_valid.eq(1)]
        byte = beat.data

        # Comparisons of the byte index, registered: beats come at least two cycles apart (and
        # none in RX's first cycle, after NEXT clears count), so a flag computed from count
        # in the cycle after it changed is current at the next beat -- and the parser's
        # decisions start from flip-flops instead of 16-bit compares.
        def beat_flag(cond, name):
            flag = Signal(name=f"at_{name}")
            m.d.sync += flag.eq(cond)
            return flag
        at = [beat_flag(count == k, str(k)) for k in range(8)]
        in_vector = beat_flag((count >= 2) & (count < c.d + 2), "vector")
        in_rows = beat_flag(count >= 4, "rows")
        in_weights = beat_flag((count >= 8) & (count < ld_stop), "weights")
        # the opcode, decoded into flags the same way (it is set at body byte 0, and the body
        # bytes that these flags steer come two or more cycles later)
        op_vector = beat_flag(is_op("WRITE_MEMORY") | is_op("RECALL"), "op_vector")
        op_attention = beat_flag(is_op("ATTENTION"), "op_attention")
        op_weights = beat_flag(is_op("LOAD_WEIGHTS"), "op_weights")

        def exp_ok(b):
            return b[7] == b[6]         # EXP_MIN..EXP_MAX = -64..63: bits 7 and 6 agree

        mant_bad = byte == 0x80          # -128 is not a BFP8 mantissa

        # Payload writes into the engine's ``dat``, ``w`` and ``vexp``: the parser's decision (a compare of
        # the byte count, a lane decode) is registered here, next to the parser, so that only
        # flip-flops drive the long way out to the lane block RAMs (the engine registers again
        # on its side). A write lands a cycle later; the engine starts >= 4 cycles after the
        # last payload byte (END beat, CHECK, CHECK2, EXEC) and the weights are read by later
        # commands only.
        # (the request carries the lane's number and a valid bit; the one-hot lane enable is
        # decoded after the register -- as a register input, Yosys folds "not writing" into a
        # synchronous reset whose LUT then fans out to all P enable flip-flops)
        def payload_write(depth, name, lanes=P):
            fields = {"addr": range(depth), "data": 8, "valid": 1} | ({"lane": range(lanes)} if lanes > 1 else {})
            req = Signal(data.StructLayout(fields), name=f"{name}_req")
            reg = Signal.like(req, name=f"{name}_reg")
            m.d.sync += reg.eq(req)
            return req, reg, (Mux(reg.valid, Const(1, lanes) << reg.lane, 0) if lanes > 1 else reg.valid)
        dat_wr, dat_wr_r, dat_wr_en = payload_write(eng.dat_depth, "dat_wr")
        w_wr, w_wr_r, w_wr_en = payload_write(2 * c.d_h * CB, "w_wr")
        vexp_wr, vexp_wr_r, vexp_wr_en = payload_write(eng.ROWS, "vexp_wr", lanes=1)
        m.d.comb += [eng.wr_vexp_addr.eq(vexp_wr_r.addr), eng.wr_vexp_data.eq(vexp_wr_r.data), eng.wr_vexp_en.eq(vexp_wr_en)]
        m.d.comb += [eng.wr_dat_addr.eq(dat_wr_r.addr), eng.wr_dat_en.eq(dat_wr_en),
                     eng.wr_w_addr.eq(w_wr_r.addr), eng.wr_w_en.eq(w_wr_en)]
        m.d.comb += [eng.wr_dat_data[l].eq(dat_wr_r.data) for l in range(P)]
        m.d.comb += [eng.wr_w_data[l].eq(w_wr_r.data) for l in range(P)]

        # --- response generator state ------------------------------------------------------------
        ri = Signal(16)              # element / byte counters of the response segments
        rk = Signal(16)
        rb = Signal()
        rrow = Signal(range(MQ + 1))
        rcrc = Signal(8)
        send_data = Signal(8)
        send_last = Signal()
        send = Signal()
        sent = Signal()
        # Response bytes pass through a register before the SLIP encoder: its ready depends on
        # the byte's value (escapes), which must not reach back into the memory read paths.
        obuf_valid = Signal()
        m.d.comb += [enc.i.valid.eq(obuf_valid), sent.eq(send & ~obuf_valid)]
        with m.If(enc.i.valid & enc.i.ready):
            m.d.sync += obuf_valid.eq(0)
        with m.If(sent):
            m.d.sync += [enc.i.payload.data.eq(send_data), enc.i.payload.last.eq(send_last),
                         obuf_valid.eq(1)]
        # the CRC runs over the registered byte, one cycle after it was loaded (the next load,
        # and so the CRC byte itself, comes at least a cycle later)
        crc_upd = Signal()
        m.d.sync += crc_upd.eq(sent)
        with m.If(crc_upd & ~enc.i.payload.last):
            m.d.sync += rcrc.eq(crc8_next(rcrc, enc.i.payload.data))

        with m.FSM():
            with m.State("RX"):
                m.d.comb += rx.eq(1)
                with m.If(beat_valid):
                    m.d.sync += beat_valid.eq(0)
                with m.If(beat_valid & beat.end):
                    m.next = "CHECK"
                    with m.If(beat.err):
                        m.d.sync += overlong.eq(1)   # judged as BAD_FRAME like an overlong body
                with m.Elif(beat_valid):
                    with m.If(count == MAX_BODY):
                        m.d.sync += overlong.eq(1)
                    with m.Else():
                        m.d.sync += [count.eq(count + 1), crc.eq(crc8_next(crc, byte))]
                    with m.If(at[0]):
                        m.d.sync += [opcode.eq(byte), vw.eq(0), vl.eq(0)]
                    for k in range(1, 8):
                        with m.If(at[k]):
                            m.d.sync += hdr[k].eq(byte)

                    # WRITE_MEMORY / RECALL vector
                    with m.If(op_vector):
                        with m.If(at[1]):
                            m.d.comb += [vexp_wr.addr.eq(0), vexp_wr.data.eq(byte), vexp_wr.valid.eq(1)]
                            with m.If(~exp_ok(byte)):
                                m.d.sync += bad_arg.eq(1)
                        with m.Elif(in_vector):
                            m.d.comb += [dat_wr.addr.eq(vw), dat_wr.lane.eq(vl), dat_wr.valid.eq(1), dat_wr.data.eq(byte)]
                            m.d.sync += [vl.eq(Mux(vl == P - 1, 0, vl + 1)), vw.eq(Mux(vl == P - 1, vw + 1, vw))]
                            with m.If(mant_bad):
                                m.d.sync += bad_arg.eq(1)

                    # ATTENTION rows: Q at row 0, K at row MQ, V at row MQ + MK
                    with m.If(op_attention):
                        with m.If(at[3]):
                            m.d.sync += [rin.eq(0), col.eq(0), aw.eq(0), al.eq(0), prow.eq(0), pbase.eq(0),
                                         a_sane.eq((n_q >= 1) & (n_q <= MQ) & (n_k >= 1) & (n_k <= MK)),
                                         a_qend.eq(n_q - 1), a_kend.eq(n_q + n_k - 1),
                                         a_rows.eq(n_q + 2 * n_k)]
                        with m.If(in_rows & a_sane & (rin < a_rows)):
                            with m.If(col == 0):
                                m.d.comb += [vexp_wr.addr.eq(prow), vexp_wr.data.eq(byte), vexp_wr.valid.eq(1)]
                                with m.If(~exp_ok(byte)):
                                    m.d.sync += bad_arg.eq(1)
                            with m.Else():
                                m.d.comb += [dat_wr.addr.eq(pbase + aw), dat_wr.lane.eq(al), dat_wr.valid.eq(1),
                                             dat_wr.data.eq(byte)]
                                m.d.sync += [al.eq(Mux(al == P - 1, 0, al + 1)),
                                             aw.eq(Mux(al == P - 1, aw + 1, aw))]
                                with m.If(mant_bad):
                                    m.d.sync += bad_arg.eq(1)
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

                    # LOAD_WEIGHTS: mantissas stream into the weight memory once the header is good
                    with m.If(op_weights):
                        with m.If(at[7]):
                            m.d.sync += ld_stop.eq(8 + Cat(hdr[6], byte) * c.d_h)
                            row_off = Cat(hdr[4], hdr[5])
                            sel = hdr[1][0]
                            # W_q and W_k share one memory; W_k starts at word d_h*CB
                            m.d.sync += [ld_j.eq(0), ld_jbase.eq(Mux(sel, c.d_h * CB, 0)),
                                         ld_c_word.eq(Mux(row_off == 0, 0, Mux(sel, nr_word[1], nr_word[0]))),
                                         ld_c_lane.eq(Mux(row_off == 0, 0, Mux(sel, nr_lane[1], nr_lane[0])))]
                        with m.If(in_weights & ld_ok_r):
                            # (the engine registers the write on its way to the block RAMs)
                            m.d.comb += [w_wr.addr.eq(ld_jbase + ld_c_word), w_wr.lane.eq(ld_c_lane),
                                         w_wr.valid.eq(1), w_wr.data.eq(byte)]
                            with m.If(mant_bad):
                                m.d.sync += bad_arg.eq(1)
                            with m.If(ld_j == c.d_h - 1):
                                m.d.sync += [ld_j.eq(0), ld_jbase.eq(Mux(ld_sel, c.d_h * CB, 0)),
                                             ld_c_lane.eq(Mux(ld_c_lane == P - 1, 0, ld_c_lane + 1)),
                                             ld_c_word.eq(Mux(ld_c_lane == P - 1, ld_c_word + 1, ld_c_word))]
                            with m.Else():
                                m.d.sync += [ld_j.eq(ld_j + 1), ld_jbase.eq(ld_jbase + CB)]

            with m.State("CHECK"):
                # the documented order: BAD_FRAME, BAD_CRC, BAD_OPCODE, BAD_LENGTH, BAD_ARG, per-op;
                # first the per-opcode conditions into registers, then the status (CHECK2)
                length_ok = Signal()
                with m.Switch(opcode):
                    with m.Case(OPCODES["LOAD_WEIGHTS"]):
                        m.d.comb += length_ok.eq((count >= 8) & (count == ld_len))
                    with m.Case(OPCODES["ATTENTION"]):
                        m.d.comb += length_ok.eq((count >= 4) & (count == attn_len))
                    with m.Case(OPCODES["WRITE_MEMORY"], OPCODES["RECALL"]):
                        m.d.comb += length_ok.eq(count == c.d + 3)
                    with m.Case(OPCODES["READ_SLOT"]):
                        m.d.comb += length_ok.eq(count == 4)
                    with m.Default():
                        m.d.comb += length_ok.eq(count == 2)
                arg_bad = Signal()
                with m.Switch(opcode):
                    with m.Case(OPCODES["LOAD_WEIGHTS"]):
                        m.d.comb += arg_bad.eq(~ld_hdr_ok | bad_arg)
                    with m.Case(OPCODES["ATTENTION"]):
                        m.d.comb += arg_bad.eq(bad_arg | (n_q < 1) | (n_q > MQ) | (n_k < 1) | (n_k > MK)
                                               | (aflags[1:] != 0) | (aflags[0] & (n_q > n_k)))
                    with m.Default():
                        m.d.comb += arg_bad.eq(bad_arg)
                m.d.sync += [known_r.eq(Cat(*[opcode == v for v in OPCODES.values()]).any()),
                             length_ok_r.eq(length_ok), arg_bad_r.eq(arg_bad)]
                m.next = "CHECK2"
            with m.State("CHECK2"):
                known, length_ok, arg_bad = known_r, length_ok_r, arg_bad_r
                st = Signal(8)
                with m.If(overlong | (count == 1)):
                    m.d.comb += st.eq(STATUS["BAD_FRAME"])
                with m.Elif(crc != 0):
                    m.d.comb += st.eq(STATUS["BAD_CRC"])
                with m.Elif(~known):
                    m.d.comb += st.eq(STATUS["BAD_OPCODE"])
                with m.Elif(~length_ok):
                    m.d.comb += st.eq(STATUS["BAD_LENGTH"])
                with m.Elif(arg_bad):
                    m.d.comb += st.eq(STATUS["BAD_ARG"])
                with m.Elif(is_op("WRITE_MEMORY") & ~loaded[1]):
                    m.d.comb += st.eq(STATUS["NO_WEIGHTS"])
                with m.Elif(is_op("RECALL") & ~loaded[0]):
                    m.d.comb += st.eq(STATUS["NO_WEIGHTS"])
                with m.Elif(is_op("RECALL") & (fill == 0)):
                    m.d.comb += st.eq(STATUS["EMPTY_CACHE"])
                with m.Elif(is_op("READ_SLOT") & (slot_arg >= fill)):
                    m.d.comb += st.eq(STATUS["SLOT_RANGE"])
                m.d.sync += [status.eq(st), cyc_run.eq(0)]   # compute cycles start after this
                with m.If(count == 0):
                    with m.If(~overlong):
                        m.d.sync += opcode.eq(0)
                        m.next = "NEXT"           # empty body: ignored
                    with m.Else():
                        m.d.sync += opcode.eq(0)
                        m.next = "HDR_S"
                with m.Elif(st != 0):
                    # a failed LOAD_WEIGHTS may have written part of its matrix
                    with m.If(is_op("LOAD_WEIGHTS") & (count >= 2) & (hdr[1] <= 1)):
                        for n in range(2):
                            with m.If(hdr[1] == n):
                                m.d.sync += [loaded[n].eq(0), next_row[n].eq(0)]
                    m.next = "HDR_S"
                with m.Else():
                    m.next = "EXEC"

            with m.State("EXEC"):
                m.d.sync += cyc_run.eq(cyc_run + 1)
                with m.Switch(opcode):
                    with m.Case(OPCODES["RESET_CACHE"]):
                        m.d.sync += [fill.eq(0), wp.eq(0)]
                        m.next = "FINISH"
                    with m.Case(OPCODES["LOAD_WEIGHTS"]):
                        for n in range(2):
                            with m.If(ld_sel == n):
                                with m.If(ld_row_offset == 0):
                                    m.d.sync += [w_exp[n].eq(ld_exp), w_shift[n].eq(ld_shift)]
                                m.d.sync += [next_row[n].eq(ld_end), nr_word[n].eq(ld_c_word),
                                             nr_lane[n].eq(ld_c_lane), loaded[n].eq(ld_end == c.d)]
                        m.next = "FINISH"
                    with m.Case(OPCODES["WRITE_MEMORY"], OPCODES["RECALL"], OPCODES["ATTENTION"]):
                        m.d.comb += [eng.start.eq(1), eng.slot.eq(wp), eng.n_q.eq(n_q),
                                     eng.causal.eq(aflags[0])]
                        with m.Switch(opcode):
                            with m.Case(OPCODES["WRITE_MEMORY"]):
                                m.d.comb += eng.op.eq(EngineOp.WRITE)
                            with m.Case(OPCODES["RECALL"]):
                                m.d.comb += [eng.op.eq(EngineOp.RECALL), eng.n_keys.eq(fill)]
                            with m.Default():
                                m.d.comb += [eng.op.eq(EngineOp.ATTENTION), eng.n_keys.eq(n_k)]
                        m.next = "WAIT"
                    with m.Default():
                        m.next = "HDR_S"
            with m.State("WAIT"):
                m.d.sync += cyc_run.eq(cyc_run + 1)
                with m.If(eng.done):
                    with m.If(is_op("WRITE_MEMORY")):
                        # the response names the slot written: keep it in hdr[1..2]
                        m.d.sync += [resp_slot.eq(wp),
                                     wp.eq(Mux(wp == N - 1, 0, wp + 1)),
                                     fill.eq(Mux(fill == N, N, fill + 1))]
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.sync += [cyc_total.eq(cyc_total + cyc_run), cyc_last.eq(cyc_run),
                             cyc_op.eq(opcode)]
                m.next = "HDR_S"

            # --- response: status, opcode, payload, CRC ---------------------------------------
            with m.State("HDR_S"):
                m.d.comb += [send.eq(1), send_data.eq(status)]
                with m.If(sent):
                    m.next = "HDR_O"
            with m.State("HDR_O"):
                m.d.comb += [send.eq(1), send_data.eq(opcode)]
                with m.If(sent):
                    m.d.sync += [ri.eq(0), rk.eq(0), rb.eq(0), rrow.eq(0)]
                    with m.If(status != 0):
                        m.next = "CRC"
                    with m.Else():
                        with m.Switch(opcode):
                            with m.Case(OPCODES["INFO"], OPCODES["STATUS"], OPCODES["CYCLES"],
                                        OPCODES["WRITE_MEMORY"]):
                                m.next = "FIX"
                            with m.Case(OPCODES["READ_SLOT"]):
                                m.next = "SLOT_MEXP"
                            with m.Case(OPCODES["RECALL"], OPCODES["ATTENTION"]):
                                m.next = "OUT_EXP_F"
                            with m.Default():
                                m.next = "CRC"

            with m.State("FIX"):
                info = ([MAGIC[0], MAGIC[1], VERSION[0], VERSION[1], Info.capabilities_for(self.engine_kind)]
                        + sum((le(v, 2) for v in (c.d, c.d_h, N, P, c.head_dim, MQ, MK, MAX_BODY)), [])
                        + [fixed.EXP_MIN & 0xFF, fixed.EXP_MAX, fixed.SCORE_FRAC, fixed.EXP2_BITS,
                           fixed.PROB_BITS, fixed.OUT_SHIFT, fixed.ALIGN_CUTOFF, SHIFT_MAX])
                status_b = le(fill, 2) + le(wp, 2) + [loaded] + le(next_row[0], 2) + le(next_row[1], 2)
                cycles_b = le(cyc_total, 8) + le(cyc_last, 4) + [cyc_op]
                write_b = le(resp_slot, 2) + le(fill, 2)
                tables = {"INFO": info, "STATUS": status_b, "CYCLES": cycles_b, "WRITE_MEMORY": write_b}
                with m.Switch(opcode):
                    for name, table in tables.items():
                        with m.Case(OPCODES[name]):
                            with m.Switch(ri):
                                for k, v in enumerate(table):
                                    with m.Case(k):
                                        m.d.comb += send_data.eq(v)
                            m.d.comb += send.eq(1)
                            with m.If(sent):
                                m.d.sync += ri.eq(ri + 1)
                                with m.If(ri == len(table) - 1):
                                    m.next = "CRC"

            # READ_SLOT: M exponent, d mantissas, K exponent (i16), d_h x i16
            slot = slot_arg[:max(1, (N - 1).bit_length())]
            # (the M/K exponent tables read synchronously: the slot is fixed from the header on)
            m.d.comb += [eng.rd_mexp_addr.eq(slot), eng.rd_kexp_addr.eq(slot), eng.rd_oexp_addr.eq(rrow)]
            # element k of a vector lives in word k // P, lane k % P: rk counts words, ri lanes
            # ``dat`` holds M_i and the result rows (an int16 word as a low-byte and a high-byte word).
            # The word addresses are registered here and again in the engine before they reach
            # the block RAMs (a fetch takes eight cycles: four address registers, read, the
            # engine's register after the block RAM, two lane-select steps).
            # The slot/row bases (multiplies by constants) have registers of their own: the slot
            # is fixed from the header on, and rrow changes >= 2 cycles before its next fetch.
            rd_dat_q = Signal.like(eng.rd_dat_addr)
            rd_key_q = Signal.like(eng.rd_key_addr)
            slot_mbase = Signal.like(eng.rd_dat_addr)
            slot_kbase = Signal.like(eng.rd_key_addr)
            row_obase = Signal.like(eng.rd_dat_addr)
            # (slot * CB in a register of its own: a multiplier, then the add, each from flip-flops)
            slot_cb = Signal.like(eng.rd_dat_addr)
            m.d.sync += [slot_cb.eq(slot * CB), slot_mbase.eq(eng.mem_base + slot_cb), slot_kbase.eq(slot * eng.KB),
                         row_obase.eq(eng.out_base + rrow * (2 * AB))]
            m.d.sync += [rd_dat_q.eq(Mux(is_op("READ_SLOT"), slot_mbase + rk, row_obase + 2 * rk + rb)),
                         rd_key_q.eq(slot_kbase + eng.key_word(rk, ri))]
            m.d.comb += [eng.rd_dat_addr.eq(rd_dat_q), eng.rd_key_addr.eq(rd_key_q), eng.rd_pm_addr.eq(ri)]
            r_elem = Signal(16)     # elements sent of the current vector
            elem = Signal(16)       # the element being sent, registered from its memory word

            def vector(state, n_elems, word, lane_bits, elem_bytes, next_state, fetch_state, split=False, lanes=P,
                       pick=None):
                """Send elements 0..n-1 from a sync-read memory word (``word``: its raw bits, lanes
                of ``lane_bits``): per element an eight-cycle fetch (four address registers, block
                RAM read, word register, then the lane in two registered steps: the lane's place
                within every group of 8 lanes, then the group -- a P-lane word sits in block RAMs
                across the die, a lane group's in one region (hw/flow/floorplan.py), so the first step is
                local to each group and only one element per group travels to the second).
                ``split``: each byte of a 2-byte element is its own fetch (``rb`` selects the word).
                Element ``rk * P + ri`` is lane ``pick`` (default ``ri``) of a word of ``lanes``
                lanes (the key words: ``Engine.key_place``)."""
                pick = ri if pick is None else pick
                # the lane to pick, registered: ri is fixed from the fetch on, and the lane
                # selects of every group then start at a flip-flop
                pick_r = Signal(range(lanes), name=f"{state.lower()}_pick")
                m.d.sync += pick_r.eq(pick)
                pick = pick_r
                gl = 8 if lanes % 8 == 0 else lanes
                groups = lanes // gl
                picks = Signal(groups * lane_bits, name=f"{state.lower()}_picks", reset_less=True)
                # wait while the word is in flight: our address register, the engine's read
                # latency, our word register
                waits = [fetch_state] + [f"{fetch_state}_wait{k}" for k in range(1, eng.READ_LATENCY + 2)]
                for cur, nxt in zip(waits, waits[1:] + [fetch_state + "_in_group"]):
                    with m.State(cur):
                        m.next = nxt
                # (case statements, not word_select: Yosys maps a variable word_select to a
                # shifter whose stages spread every input bit over many LUTs)
                with m.State(fetch_state + "_in_group"):
                    with m.Switch(pick % gl):
                        for j in range(gl):
                            with m.Case(j):
                                m.d.sync += picks.eq(Cat(word[(g * gl + j) * lane_bits:(g * gl + j + 1) * lane_bits]
                                                         for g in range(groups)))
                    m.next = fetch_state + "_group"
                with m.State(fetch_state + "_group"):
                    with m.Switch(pick // gl):
                        for g in range(groups):
                            with m.Case(g):
                                m.d.sync += elem.eq(picks[g * lane_bits:(g + 1) * lane_bits])
                    m.next = state
                with m.State(state):
                    v = elem
                    m.d.comb += [send.eq(1),
                                 send_data.eq(Mux(rb, v[8:16], v[:8]) if elem_bytes == 2 and not split
                                              else v[:8])]
                    with m.If(sent):
                        if elem_bytes == 2:
                            m.d.sync += rb.eq(~rb)
                            adv = rb
                            if split:
                                with m.If(~rb):
                                    m.next = fetch_state
                        else:
                            adv = 1
                        with m.If(adv):
                            m.d.sync += [r_elem.eq(r_elem + 1), ri.eq(Mux(ri == P - 1, 0, ri + 1)),
                                         rk.eq(Mux(ri == P - 1, rk + 1, rk))]
                            with m.If(r_elem == n_elems - 1):
                                m.next = next_state
                            with m.Else():
                                m.next = fetch_state

            def scalar(state, value, nbytes, next_state, on_done=()):
                with m.State(state):
                    bytes_ = le(value, nbytes)
                    m.d.comb += [send.eq(1), send_data.eq(bytes_[0] if nbytes == 1 else Mux(rb, bytes_[1], bytes_[0]))]
                    with m.If(sent):
                        if nbytes == 2:
                            m.d.sync += rb.eq(~rb)
                        with m.If(rb if nbytes == 2 else 1):
                            m.d.sync += [ri.eq(0), rk.eq(0), r_elem.eq(0)]
                            m.d.sync += list(on_done)
                            m.next = next_state

            # The exponents the response sends, read from their flip-flop memories and
            # registered (slot is fixed from the header on; rrow changes one state ahead, in
            # HDR_O / OUT_NEXT, and OUT_EXP_F waits a cycle for it)
            mexp_q, kexp_q, oexp_q = (Signal.like(d, name=f"{n}_q") for d, n in
                                      ((eng.rd_mexp_data, "mexp"), (eng.rd_kexp_data, "kexp"),
                                       (eng.rd_oexp_data, "oexp")))
            m.d.sync += [mexp_q.eq(eng.rd_mexp_data), kexp_q.eq(eng.rd_kexp_data), oexp_q.eq(eng.rd_oexp_data)]
            with m.State("OUT_EXP_F"):
                m.next = "OUT_EXP"
            scalar("SLOT_MEXP", mexp_q, 1, "SLOT_M_F")
            # The block RAM words are registered here before the lane select (a DP16KD's clock to
            # output is ~5.8 ns).
            dat_word = Signal.like(eng.rd_dat_data, reset_less=True)
            key_word = Signal.like(eng.rd_key_data, reset_less=True)
            m.d.sync += [dat_word.eq(eng.rd_dat_data), key_word.eq(eng.rd_key_data)]
            vector("SLOT_M", c.d, Value.cast(dat_word), 8, 1, "SLOT_KEXP", "SLOT_M_F")
            scalar("SLOT_KEXP", kexp_q, 2, "SLOT_K_F")
            vector("SLOT_K", c.d_h, Value.cast(key_word), 16, 2, "CRC", "SLOT_K_F", lanes=eng.KP,
                   pick=eng.key_place(ri)[1])

            # RECALL: P exponent, d x i16, n, n probabilities; ATTENTION: n_q x (exponent, row)
            scalar("OUT_EXP", oexp_q, 2, "OUT_V_F")
            out_len = Mux(is_op("RECALL"), c.d, c.head_dim)
            vector("OUT_V", out_len, Value.cast(dat_word), 8, 2, "OUT_NEXT", "OUT_V_F", split=True)
            with m.State("OUT_NEXT"):
                m.d.sync += [ri.eq(0), rk.eq(0), r_elem.eq(0)]
                with m.If(is_op("RECALL")):
                    m.next = "REC_N"
                with m.Elif(rrow + 1 < n_q):
                    m.d.sync += rrow.eq(rrow + 1)
                    m.next = "OUT_EXP_F"
                with m.Else():
                    m.next = "CRC"
            scalar("REC_N", fill, 2, "REC_P_F")
            # (the probability's block RAM output is registered before it goes anywhere: a
            # DP16KD's clock-to-output is ~5.8 ns)
            pm_q = Signal.like(eng.rd_pm_data, reset_less=True)
            m.d.sync += pm_q.eq(eng.rd_pm_data)
            with m.State("REC_P_F"):
                m.next = "REC_P_F2"
            with m.State("REC_P_F2"):
                m.next = "REC_P_F3"
            with m.State("REC_P_F3"):
                m.d.sync += elem.eq(pm_q)
                m.next = "REC_P"
            with m.State("REC_P"):
                m.d.comb += [send.eq(1), send_data.eq(Mux(rb, elem[8:16], elem[:8]))]
                with m.If(sent):
                    m.d.sync += rb.eq(~rb)
                    with m.If(rb):
                        m.d.sync += ri.eq(ri + 1)
                        with m.If(ri == fill - 1):
                            m.next = "CRC"
                        with m.Else():
                            m.next = "REC_P_F"

            with m.State("CRC"):
                m.d.comb += [send.eq(1), send_data.eq(rcrc),
                             send_last.eq(1)]
                with m.If(sent):
                    m.next = "NEXT"
            with m.State("NEXT"):
                m.d.sync += [count.eq(0), overlong.eq(0), crc.eq(0), bad_arg.eq(0), rcrc.eq(0),
                             rb.eq(0), opcode.eq(0)]
                m.next = "RX"
        return m
