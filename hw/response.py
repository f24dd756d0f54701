"""The top's response generator: the response frame's bytes, from the command processor's
registers and the engine's read ports, CRC'd on the fly, to the SLIP encoder."""

import types

from amaranth.hdl import Cat, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed
from hmtx.model.protocol import MAGIC, MAX_BODY, SHIFT_MAX, Info, takes_attn_pass

from .slip import BodyByte, Crc8
from .wire import ENGINE_READS, Opcode, Status, engine_part

__all__ = ["STATUS_PAYLOAD", "CYCLES_PAYLOAD", "WRITE_PAYLOAD", "ResponseSignature", "ResponseGenerator"]

# The fixed-size OK payloads of docs/protocol.md section 3, byte for byte (little-endian).
STATUS_PAYLOAD = data.StructLayout({"fill": 16, "write_pointer": 16, "loaded": 8,
                                    "next_row": data.ArrayLayout(16, 2)})
CYCLES_PAYLOAD = data.StructLayout({"total": 64, "last": 32, "op": 8})
WRITE_PAYLOAD = data.StructLayout({"slot": 16, "fill": 16})


class ResponseSignature(wiring.Signature):
    """What to answer, from the command processor to the response generator (seen from the
    processor).

    ``start`` (a pulse) has the response sent; ``done`` pulses when its last byte (the CRC) has
    been taken. Everything else holds still in between: the status, the opcode to echo, the
    command's READ_SLOT slot and ATTENTION / ATTN_PASS n_q, ATTN_PASS's pass and ``last`` flag,
    whether a RECALL asked for the probabilities (``probs``; protocol 1.2), and the device state
    that STATUS, CYCLES, WRITE_MEMORY and RECALL report.

    Members
    -------
    start : Out(1)
    done : In(1)
    status : Out(Status)
    opcode : Out(8)
    slot : Out(16)
    n_q : Out(8)
    apass : Out(2)
    alast : Out(1)
    probs : Out(1)
    fill : Out(range(N + 1))
    write_pointer : Out(range(N))
    loaded : Out(2)
    next_row : Out(ArrayLayout(16, 2))
    written_slot : Out(16)
    cycles : Out(CYCLES_PAYLOAD)
    """

    def __init__(self, layout):
        N = layout.config.n_slots
        super().__init__({
            "start": Out(1), "done": In(1),
            "status": Out(Status), "opcode": Out(8), "slot": Out(16), "n_q": Out(8),
            "apass": Out(2), "alast": Out(1), "probs": Out(1),
            "fill": Out(range(N + 1)), "write_pointer": Out(range(N)), "loaded": Out(2),
            "next_row": Out(data.ArrayLayout(16, 2)), "written_slot": Out(16),
            "cycles": Out(CYCLES_PAYLOAD),
        })


def _le(m, value, nbytes):
    """Little-endian bytes of an int or a Value (sign- or zero-extended to nbytes)."""
    if isinstance(value, int):
        return [(value >> (8 * k)) & 0xFF for k in range(nbytes)]
    v = Value.cast(value)
    ext = Signal(signed(8 * nbytes) if v.shape().signed else 8 * nbytes)
    m.d.comb += ext.eq(v)
    return [ext[8 * k:8 * k + 8] for k in range(nbytes)]


class ResponseGenerator(wiring.Component):
    """Sends the response to each command: ``status | opcode | payload | crc``.

    One byte per two cycles at most: a byte goes into the output register (the encoder's
    ready depends on the byte's value -- escapes -- which must not reach back into the memory
    read paths), and the CRC register runs over the registered byte a cycle later (the next
    load, and so the CRC byte itself, comes at least a cycle after that). Fixed payloads (INFO,
    STATUS, CYCLES, WRITE_MEMORY) come from registers and constants; vectors from the engine's
    memories through its read ports, an element per eight-cycle fetch (:meth:`_vector`); ATTN_PASS's
    pass 1 and 2 answers from the engine's row scalars (:meth:`_row_scalars`), pass 3's last as
    ATTENTION's.

    Members
    -------
    request : In(ResponseSignature)
        From the command processor.
    engine : In(engine_part(engine, ENGINE_READS))
        The engine's read ports: ``dat`` (M_i, the result rows), ``key``, ``pm``, ``mexp``,
        ``kexp``, ``oexp``.
    o : Out(stream.Signature(BodyByte))
        To the SLIP encoder.
    """

    def __init__(self, layout, engine_kind: str, version):
        self._layout = layout
        self._capabilities = Info.capabilities_for(engine_kind)
        self._version = version             # INFO's (the major names the contract)
        self._attn = takes_attn_pass(version)
        super().__init__({
            "request": In(ResponseSignature(layout)),
            "engine": In(engine_part(layout, ENGINE_READS)),
            "o": Out(stream.Signature(BodyByte)),
        })

    def elaborate(self, platform):
        m = Module()
        L, rq, eng = self._layout, self.request, self.engine
        c, P = L.config, L.P
        s = types.SimpleNamespace(
            ri=Signal(16), rk=Signal(16),   # element / word counters of the response segments
            rb=Signal(), rrow=Signal(range(c.max_queries + 1)),
            r_elem=Signal(16),              # elements sent of the current vector
            elem=Signal(16),                # a probability being sent, registered from its word
            send=Signal(), send_data=Signal(8), send_last=Signal(), sent=Signal(),
            in_key=Signal())                # contract 2's READ_SLOT: sending K'_i, from dat
        o = self.o
        m.d.comb += s.sent.eq(s.send & ~o.valid)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(s.sent):
            m.d.sync += [o.payload.data.eq(s.send_data), o.payload.last.eq(s.send_last), o.valid.eq(1)]
        m.submodules.crc = crc = Crc8()
        crc_upd = Signal()
        m.d.sync += crc_upd.eq(s.sent)
        m.d.comb += [crc.valid.eq(crc_upd & ~o.payload.last), crc.data.eq(o.payload.data),
                     crc.clear.eq(rq.done)]

        words = self._reads(m, s)
        with m.FSM():
            with m.State("IDLE"):
                if L.contract == 2:
                    m.d.sync += s.in_key.eq(0)
                with m.If(rq.start):
                    m.next = "HDR_S"
            with m.State("HDR_S"):
                m.d.comb += [s.send.eq(1), s.send_data.eq(rq.status)]
                with m.If(s.sent):
                    m.next = "HDR_O"
            with m.State("HDR_O"):
                m.d.comb += [s.send.eq(1), s.send_data.eq(rq.opcode)]
                with m.If(s.sent):
                    m.d.sync += [s.ri.eq(0), s.rk.eq(0), s.rb.eq(0), s.rrow.eq(0)]
                    with m.If(rq.status != Status.OK):
                        m.next = "CRC"
                    with m.Else():
                        with m.Switch(rq.opcode):
                            with m.Case(Opcode.INFO, Opcode.STATUS, Opcode.CYCLES, Opcode.WRITE_MEMORY):
                                m.next = "FIX"
                            with m.Case(Opcode.READ_SLOT):
                                m.next = "SLOT_MEXP"
                            with m.Case(Opcode.RECALL, Opcode.ATTENTION):
                                m.next = "OUT_EXP_F"
                            if self._attn:
                                with m.Case(Opcode.ATTN_PASS):
                                    with m.If((rq.apass == 1) | (rq.apass == 2)):
                                        m.next = "RS_F"
                                    with m.Elif(rq.alast):
                                        m.next = "OUT_EXP_F"    # the output rows, as ATTENTION's
                                    with m.Else():
                                        m.next = "CRC"          # pass 3 before the last tile: nothing
                            with m.Default():
                                m.next = "CRC"
            self._fixed(m, s)

            # READ_SLOT: M exponent, d mantissas, K exponent (i16), then K_i, d_h x i16 from
            # ``key`` (contract 1), or K'_i, d x i8 from its region of ``dat`` (contract 2)
            self._scalar(m, s, "SLOT_MEXP", words.mexp, 1, "SLOT_M_F")
            self._vector(m, s, "SLOT_M", c.d, Value.cast(words.dat), 8, 1,
                         "SLOT_KEXP" if L.contract == 1 else "SLOT_KBASE", "SLOT_M_F")
            if L.contract == 2:
                with m.State("SLOT_KBASE"):
                    m.d.sync += s.in_key.eq(1)
                    m.next = "SLOT_KEXP"
            self._scalar(m, s, "SLOT_KEXP", words.kexp, 2, "SLOT_K_F")
            if L.contract == 1:
                self._vector(m, s, "SLOT_K", c.d_h, Value.cast(words.key), 16, 2, "CRC", "SLOT_K_F", lanes=L.KP,
                             pick=L.key_place(s.ri)[1])
            else:
                self._vector(m, s, "SLOT_K", c.d, Value.cast(words.dat), 8, 1, "CRC", "SLOT_K_F")

            # RECALL: P exponent, d x i16, n, n probabilities (if asked for); ATTENTION: n_q x
            # (exponent, row)
            recall = rq.opcode == Opcode.RECALL
            with m.State("OUT_EXP_F"):
                m.next = "OUT_EXP"
            self._scalar(m, s, "OUT_EXP", words.oexp, 2, "OUT_V_F")
            self._vector(m, s, "OUT_V", Mux(recall, c.d, c.head_dim), Value.cast(words.dat), 8, 2, "OUT_NEXT",
                         "OUT_V_F", split=True)
            with m.State("OUT_NEXT"):
                m.d.sync += [s.ri.eq(0), s.rk.eq(0), s.r_elem.eq(0)]
                with m.If(recall):
                    m.next = "REC_N"
                with m.Elif(s.rrow + 1 < rq.n_q):
                    m.d.sync += s.rrow.eq(s.rrow + 1)
                    m.next = "OUT_EXP_F"
                with m.Else():
                    m.next = "CRC"
            if self._attn:
                self._row_scalars(m, s, words)
            self._scalar(m, s, "REC_N", rq.fill, 2, "REC_P_F")
            with m.State("REC_P_F"):
                # (entered after n and after each probability: without them, only after n)
                with m.If(rq.probs):
                    m.next = "REC_P_F2"
                with m.Else():
                    m.next = "CRC"
            with m.State("REC_P_F2"):
                m.next = "REC_P_F3"
            with m.State("REC_P_F3"):
                m.d.sync += s.elem.eq(words.pm)
                m.next = "REC_P"
            with m.State("REC_P"):
                m.d.comb += [s.send.eq(1), s.send_data.eq(Mux(s.rb, s.elem[8:16], s.elem[:8]))]
                with m.If(s.sent):
                    m.d.sync += s.rb.eq(~s.rb)
                    with m.If(s.rb):
                        m.d.sync += s.ri.eq(s.ri + 1)
                        with m.If(s.ri == rq.fill - 1):
                            m.next = "CRC"
                        with m.Else():
                            m.next = "REC_P_F"

            with m.State("CRC"):
                m.d.comb += [s.send.eq(1), s.send_data.eq(crc.crc), s.send_last.eq(1)]
                with m.If(s.sent):
                    m.d.comb += rq.done.eq(1)
                    m.next = "IDLE"
        return m

    def _reads(self, m, s):
        """The engine's read ports: addresses from the counters, the data registered. Returns
        the registered words and values."""
        L, rq, eng = self._layout, self.request, self.engine
        CB, AB, N = L.CB, L.AB, L.config.n_slots
        slot = rq.slot[:max(1, (N - 1).bit_length())]
        # (the M/K exponent tables read synchronously: the slot is fixed from the header on)
        m.d.comb += [eng.rd_mexp_addr.eq(slot), eng.rd_kexp_addr.eq(slot), eng.rd_oexp_addr.eq(s.rrow)]
        # Element k of a vector lives in word k // P, lane k % P: rk counts words, ri lanes.
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
        # (contract 2: READ_SLOT's second vector, K'_i, is in dat too, region kf; the base moves
        # there in SLOT_KBASE, two bytes -- at least four cycles -- before K'_i's first fetch)
        mbase = L.mem_base if L.contract == 1 else Mux(s.in_key, L.kf_base, L.mem_base)
        m.d.sync += [slot_cb.eq(slot * CB), slot_mbase.eq(mbase + slot_cb), slot_kbase.eq(slot * L.KB),
                     row_obase.eq(L.out_base + s.rrow * (2 * AB))]
        m.d.sync += [rd_dat_q.eq(Mux(rq.opcode == Opcode.READ_SLOT, slot_mbase + s.rk, row_obase + 2 * s.rk + s.rb)),
                     rd_key_q.eq(slot_kbase + L.key_word(s.rk, s.ri))]
        m.d.comb += [eng.rd_dat_addr.eq(rd_dat_q), eng.rd_key_addr.eq(rd_key_q), eng.rd_pm_addr.eq(s.ri)]

        # The exponents the response sends, read from their flip-flop memories and registered
        # (slot is fixed from the header on; rrow changes one state ahead, in HDR_O / OUT_NEXT,
        # and OUT_EXP_F waits a cycle for it)
        words = types.SimpleNamespace(**{name: Signal.like(getattr(eng, f"rd_{name}_data"), name=f"{name}_q")
                                         for name in ("mexp", "kexp", "oexp")})
        m.d.sync += [words.mexp.eq(eng.rd_mexp_data), words.kexp.eq(eng.rd_kexp_data),
                     words.oexp.eq(eng.rd_oexp_data)]
        # The block RAM words are registered here before the lane select, and the probability
        # before it goes anywhere (a DP16KD's clock to output is ~5.8 ns).
        if self._attn:
            # ATTN_PASS's row scalars of row rrow (changed two states before they are sent)
            words.rs = Signal.like(eng.rd_rs_data, name="rs_q")
            m.d.comb += eng.rd_rs_addr.eq(s.rrow)
            m.d.sync += words.rs.eq(eng.rd_rs_data)
        words.dat = Signal.like(eng.rd_dat_data, reset_less=True, name="dat_word")
        words.key = Signal.like(eng.rd_key_data, reset_less=True, name="key_word")
        words.pm = Signal.like(eng.rd_pm_data, reset_less=True, name="pm_q")
        m.d.sync += [words.dat.eq(eng.rd_dat_data), words.key.eq(eng.rd_key_data), words.pm.eq(eng.rd_pm_data)]
        return words

    def _row_scalars(self, m, s, words):
        """The states RS_F, RS_F2 and RS: ATTN_PASS's pass 1 answer (per query row m i32, E i8) or
        pass 2's (per row the sum, u32), from the engine's row scalars, row ``rrow`` at a time
        (rrow is 0 from HDR_O; the scalars arrive one cycle after their address, then our
        register)."""
        rq = self.request
        with m.State("RS_F"):
            m.next = "RS_F2"
        with m.State("RS_F2"):
            m.next = "RS"
        with m.State("RS"):
            rs = words.rs
            pass1 = rq.apass == 1
            with m.Switch(s.ri[:3]):
                for k in range(5):
                    with m.Case(k):
                        if k < 4:
                            m.d.comb += s.send_data.eq(Mux(pass1, Value.cast(rs.m)[8 * k:8 * k + 8],
                                                           rs.sum[8 * k:8 * k + 8]))
                        else:
                            m.d.comb += s.send_data.eq(Value.cast(rs.e))
            m.d.comb += s.send.eq(1)
            with m.If(s.sent):
                m.d.sync += s.ri.eq(s.ri + 1)
                with m.If(s.ri == Mux(pass1, 4, 3)):
                    m.d.sync += s.ri.eq(0)
                    with m.If(s.rrow + 1 < rq.n_q):
                        m.d.sync += s.rrow.eq(s.rrow + 1)
                        m.next = "RS_F"
                    with m.Else():
                        m.next = "CRC"

    def _fixed(self, m, s):
        """The state FIX: the fixed-size payloads of INFO, STATUS, CYCLES and WRITE_MEMORY."""
        c, P, rq = self._layout.config, self._layout.P, self.request
        version = self._version
        info = ([MAGIC[0], MAGIC[1], version[0], version[1], self._capabilities]
                + sum((_le(m, v, 2) for v in (c.d, c.d_h, c.n_slots, P, c.head_dim, c.max_queries,
                                              c.max_keys, MAX_BODY)), [])
                + [fixed.EXP_MIN & 0xFF, fixed.EXP_MAX, fixed.SCORE_FRAC, fixed.EXP2_BITS,
                   fixed.PROB_BITS, fixed.OUT_SHIFT, fixed.ALIGN_CUTOFF, SHIFT_MAX])
        status = Signal(STATUS_PAYLOAD)
        m.d.comb += [status.fill.eq(rq.fill), status.write_pointer.eq(rq.write_pointer),
                     status.loaded.eq(rq.loaded), status.next_row.eq(rq.next_row)]
        write = Signal(WRITE_PAYLOAD)
        m.d.comb += [write.slot.eq(rq.written_slot), write.fill.eq(rq.fill)]

        def payload_bytes(view):
            v = view.as_value()
            return [v[8 * k:8 * k + 8] for k in range(len(v) // 8)]
        tables = {Opcode.INFO: info, Opcode.STATUS: payload_bytes(status),
                  Opcode.CYCLES: payload_bytes(rq.cycles), Opcode.WRITE_MEMORY: payload_bytes(write)}
        # (the byte index's low bits only: ri counts from 0 in FIX and leaves it at the table's
        # end, and the upper bits' compares would sit on the way to the output register)
        index = s.ri[:max(len(table) for table in tables.values()).bit_length()]
        with m.State("FIX"):
            with m.Switch(rq.opcode):
                for op, table in tables.items():
                    with m.Case(op):
                        with m.Switch(index):
                            for k, v in enumerate(table):
                                with m.Case(k):
                                    m.d.comb += s.send_data.eq(v)
                        m.d.comb += s.send.eq(1)
                        with m.If(s.sent):
                            m.d.sync += s.ri.eq(s.ri + 1)
                            with m.If(s.ri == len(table) - 1):
                                m.next = "CRC"

    def _vector(self, m, s, state, n_elems, word, lane_bits, elem_bytes, next_state, fetch_state,
                split=False, lanes=None, pick=None):
        """Send elements 0..n-1 from a sync-read memory word (``word``: its raw bits, lanes of
        ``lane_bits``): per element an eight-cycle fetch (four address registers, block RAM
        read, word register, then the lane in two registered steps: the lane's place within
        every group of 8 lanes, then the group -- a P-lane word sits in block RAMs across the
        die, a lane group's in one region (hw/flow/floorplan.py), so the first step is local to
        each group and only one element per group travels to the second). ``split``: each byte
        of a 2-byte element is its own fetch (``rb`` selects the word). Element ``rk * P + ri``
        is lane ``pick`` (default ``ri``) of a word of ``lanes`` lanes (default P; the key
        words: ``Engine.key_place``)."""
        P = self._layout.P
        lanes = P if lanes is None else lanes
        pick = s.ri if pick is None else pick
        # the lane to pick, registered: ri is fixed from the fetch on, and the lane selects of
        # every group then start at a flip-flop
        pick_r = Signal(range(lanes), name=f"{state.lower()}_pick")
        m.d.sync += pick_r.eq(pick)
        gl = 8 if lanes % 8 == 0 else lanes
        groups = lanes // gl
        picks = Signal(groups * lane_bits, name=f"{state.lower()}_picks", reset_less=True)
        # the element, a register of this vector's own: one shared by every vector's group pick
        # had a multiplexer over all their states before it (the routed smollm build's worst
        # path ran from a lane pick through it, 10.21 ns)
        wide = elem_bytes == 2 and not split
        assert lane_bits == 16 or not wide
        elem = Signal(lane_bits, name=f"{state.lower()}_elem", reset_less=True)
        # wait while the word is in flight: our address register, the engine's read latency,
        # our word register
        waits = [fetch_state] + [f"{fetch_state}_wait{k}" for k in range(1, self._layout.READ_LATENCY + 2)]
        for cur, nxt in zip(waits, waits[1:] + [fetch_state + "_in_group"]):
            with m.State(cur):
                m.next = nxt
        # (case statements, not word_select: Yosys maps a variable word_select to a shifter
        # whose stages spread every input bit over many LUTs)
        with m.State(fetch_state + "_in_group"):
            with m.Switch(pick_r % gl):
                for j in range(gl):
                    with m.Case(j):
                        m.d.sync += picks.eq(Cat(word[(g * gl + j) * lane_bits:(g * gl + j + 1) * lane_bits]
                                                 for g in range(groups)))
            m.next = fetch_state + "_group"
        with m.State(fetch_state + "_group"):
            with m.Switch(pick_r // gl):
                for g in range(groups):
                    with m.Case(g):
                        m.d.sync += elem.eq(picks[g * lane_bits:(g + 1) * lane_bits])
            m.next = state
        with m.State(state):
            m.d.comb += [s.send.eq(1), s.send_data.eq(Mux(s.rb, elem[8:16], elem[:8]) if wide else elem[:8])]
            with m.If(s.sent):
                if elem_bytes == 2:
                    m.d.sync += s.rb.eq(~s.rb)
                    adv = s.rb
                    if split:
                        with m.If(~s.rb):
                            m.next = fetch_state
                else:
                    adv = 1
                with m.If(adv):
                    m.d.sync += [s.r_elem.eq(s.r_elem + 1), s.ri.eq(Mux(s.ri == P - 1, 0, s.ri + 1)),
                                 s.rk.eq(Mux(s.ri == P - 1, s.rk + 1, s.rk))]
                    with m.If(s.r_elem == n_elems - 1):
                        m.next = next_state
                    with m.Else():
                        m.next = fetch_state

    def _scalar(self, m, s, state, value, nbytes, next_state):
        """Send ``value`` as ``nbytes`` little-endian bytes, then start the next vector."""
        with m.State(state):
            bytes_ = _le(m, value, nbytes)
            m.d.comb += [s.send.eq(1), s.send_data.eq(bytes_[0] if nbytes == 1 else Mux(s.rb, bytes_[1], bytes_[0]))]
            with m.If(s.sent):
                if nbytes == 2:
                    m.d.sync += s.rb.eq(~s.rb)
                with m.If(s.rb if nbytes == 2 else 1):
                    m.d.sync += [s.ri.eq(0), s.rk.eq(0), s.r_elem.eq(0)]
                    m.next = next_state
