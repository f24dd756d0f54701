"""The sequential engine: the same operations, memories and ports as :class:`~hmtx.hw.engine.Engine`,
computed one element at a time with one multiplier, for the iCE40 UP5K (``up5k`` on the
iCEBreaker, 5,280 logic cells at 24 MHz).

The lane engine is shaped for an LFE5U-85F at 100 MHz: P multipliers, an adder tree, two
pipelined barrel shifters, staged copies of every control and exponent tables in flip-flops.
On the UP5K that is four times the device (docs/synthesis.md, "up5k"), and none of it is needed
for 24 MHz. This engine keeps what the command processor (hw/top.py) sees -- the memories in the
same layout (:class:`~hmtx.hw.engine.EngineLayout`), the ports, the read latency -- and computes
with:

* one 16 x 16 signed multiplier and a 48-bit accumulator (an SB_MAC16 with ``synth_ice40
  -dsp``), fed one element per cycle: a lane of a ``dat``/``w``/``key`` word picked by a
  multiplexer, or a ``qbuf``/``wm`` entry;
* one :class:`~hmtx.hw.arith.SerialMulShiftRoundSat` for every requantization: projections,
  scores (with the score scale), exp2 terms, probabilities (with the reciprocal), weight
  alignment and results, one at a time, a bit per cycle;
* the restoring divider of the lane engine (:class:`~hmtx.hw.arith.Reciprocal`);
* block RAM for every table (exponents, scores, probabilities, weights, q, the exp2 table).

Every step waits for the one before it, so the cost is cycles, and they depend on the data (the
requantizer shifts one place per cycle): a RECALL over 16 slots at ``up5k`` takes 6,000-7,000
cycles (``python bench/cycles.py --engine serial``, docs/hardware.md), about 250 µs at 27 MHz,
against ~2.4 ms for its frames on a 1 Mbaud UART.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed
from hmtx.model.configs import EngineConfig

from .arith import Reciprocal, SerialMulShiftRoundSat
from .engine import EXP_W, EngineLayout, EngineSignature, Op, Region

__all__ = ["SerialEngine"]

# multiplier operand sources
A_DAT, A_QBUF, A_WM = 0, 1, 2
B_W, B_KEY, B_DAT = 0, 1, 2


class SerialEngine(EngineLayout, wiring.Component):
    """All on-chip state of a recall/attention engine and a sequencer that computes with one
    multiplier; a drop-in for :class:`~hmtx.hw.engine.Engine` behind
    :class:`~hmtx.hw.top.HmtxTop` (same members, same memory layout, bit-exact with
    ``hmtx.model.fixed``).

    Memories: ``dat`` (P x int8 words: input, results, the M ring), ``w`` (W_q then W_k), ``key``
    (KP x int16 words), ``vexp``/``mexp``/``kexp``/``pm``/``oexp`` as in the lane engine; its own
    ``qbuf`` (q or the current Q row, one int16 per element), ``sc`` (scores, then exp2 terms),
    ``wm`` (aligned weights) and ``lut`` (the exp2 table).

    Order of work: WRITE copies M_i into its slot, then projects K_i column by column; RECALL
    projects q into ``qbuf``; ATTENTION copies Q row a into ``qbuf``. Then per key a score, the
    exp2 pass, the reciprocal, the probability pass and per output element a weighted sum over
    the keys.
    """

    # cycles from ``rd_dat_addr``/``rd_key_addr`` to ``rd_dat_data``/``rd_key_data``: the
    # address register, then the block RAM's read
    READ_LATENCY = 2

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise ValueError(f"SerialEngine needs an EngineConfig, got {type(config).__name__}")
        self._set_layout(config)
        c, P = config, self.P
        i8 = data.ArrayLayout(signed(8), P)
        # (no read needs a write's data in the same cycle: see Engine)
        NO_RW = {"no_rw_check": 1}
        self.dat = memory.Memory(shape=i8, depth=self.dat_depth, init=[], attrs=NO_RW)
        self.vin = Region(self.dat, 0, self.vin_depth)
        self.mem = Region(self.dat, self.mem_base, c.n_slots * self.CB)
        self.w = memory.Memory(shape=i8, depth=2 * c.d_h * self.CB, init=[], attrs=NO_RW)
        self.wq = Region(self.w, 0, c.d_h * self.CB)
        self.wk = Region(self.w, c.d_h * self.CB, c.d_h * self.CB)
        self.key = memory.Memory(shape=data.ArrayLayout(signed(16), self.KP), depth=c.n_slots * self.KB,
                                 init=[], attrs=NO_RW)
        self.vexp = memory.Memory(shape=signed(8), depth=self.ROWS, init=[], attrs=NO_RW)
        # (in block RAM too: Yosys puts a 16-entry table with two read ports into flip-flops)
        self.mexp = memory.Memory(shape=signed(8), depth=c.n_slots, init=[], attrs=NO_RW | {"ram_style": "block"})
        self.kexp = memory.Memory(shape=signed(EXP_W), depth=c.n_slots, init=[], attrs=NO_RW)
        self.pm = memory.Memory(shape=unsigned(16), depth=self.KMAX, init=[], attrs=NO_RW)
        # (read by the response generator through a combinational port: flip-flops)
        self.oexp = memory.Memory(shape=signed(EXP_W), depth=c.max_queries, init=[], attrs={"ram_style": "logic"})
        self.QD = max(c.d_h, c.head_dim)
        self.qbuf = memory.Memory(shape=signed(16), depth=self.QD, init=[], attrs=NO_RW)
        self.sc = memory.Memory(shape=signed(fixed.SCORE_BITS), depth=self.KMAX, init=[], attrs=NO_RW)
        self.wm = memory.Memory(shape=unsigned(16), depth=self.KMAX, init=[], attrs=NO_RW)
        self.lut = memory.Memory(shape=unsigned(fixed.EXP2_BITS + 1), depth=1 << fixed.SCORE_FRAC,
                                 init=fixed.exp2_lut())
        super().__init__(EngineSignature(self))
        # the engine's own ports, made before the owner's
        self._dat_r = self.dat.read_port()
        self._dat_w = self.dat.write_port(granularity=1)
        self._w_r = self.w.read_port()
        self._w_w = self.w.write_port(granularity=1)
        self._key_r = self.key.read_port()
        self._key_w = self.key.write_port(granularity=1)
        self._vexp_r = self.vexp.read_port()
        self._mexp_r = self.mexp.read_port()
        self._mexp_w = self.mexp.write_port()
        self._kexp_r = self.kexp.read_port()
        self._kexp_w = self.kexp.write_port()
        self._pm_w = self.pm.write_port()
        self._oexp_w = self.oexp.write_port()
        self._qbuf_r = self.qbuf.read_port()
        self._qbuf_w = self.qbuf.write_port()
        self._sc_r = self.sc.read_port()
        self._sc_w = self.sc.write_port()
        self._wm_r = self.wm.read_port()
        self._wm_w = self.wm.write_port()
        self._lut_r = self.lut.read_port()
        # the owner's ports (EngineSignature)
        self._vexp_o, self._pm_o = self.vexp.write_port(), self.pm.read_port()
        self._mexp_o, self._kexp_o = self.mexp.read_port(), self.kexp.read_port()
        self._oexp_o = self.oexp.read_port(domain="comb")

    def elaborate(self, platform):
        m = Module()
        c, P, CB, AB, KB = self.config, self.P, self.CB, self.AB, self.KB
        MQ, MK = c.max_queries, c.max_keys
        for name in ("dat", "w", "key", "vexp", "mexp", "kexp", "pm", "oexp", "qbuf", "sc", "wm", "lut"):
            m.submodules[name] = getattr(self, name)
        self._owner_ports(m)
        m.d.comb += [self.rd_dat_data.eq(self._dat_r.data), self.rd_key_data.eq(self._key_r.data)]
        m.submodules.ppu = ppu = SerialMulShiftRoundSat()
        m.submodules.recip = recip = Reciprocal(32)
        m.d.comb += recip.o.ready.eq(1)
        lane_bits = max(1, (P - 1).bit_length())
        klane_bits = max(1, (self.KP - 1).bit_length())

        # --- operands latched at start ---------------------------------------------------------
        op = Signal(2)
        attn = op == Op.ATTENTION
        slot = Signal.like(self.slot)
        n_keys = Signal.like(self.n_keys)
        n_q = Signal.like(self.n_q)
        causal = Signal()
        a = Signal(range(MQ + 1))               # query row (attention); 0 for recall
        keep_lim = Signal(signed(12))           # causal: key b is attended iff b <= a + n_k - n_q
        q_exp = Signal(signed(EXP_W))
        vexp0 = Signal(signed(8))               # the input vector's exponent (vexp[0])

        # --- loop state --------------------------------------------------------------------------
        elems = max(c.d, c.d_h, c.head_dim, self.KMAX)
        outer = Signal(range(elems + 1))   # j (projection), b (scores, exp2, probabilities), element (sums)
        inner = Signal(range(elems + 1))   # the beat within one dot product
        o_word = Signal(range(elems // P + 2))     # outer's word (outer // P) and lane (outer % P)
        o_lane = Signal(lane_bits)
        i_word = Signal(range(elems // P + 2))     # inner's word and lane, for beats that walk a vector
        i_lane = Signal(lane_bits)
        ptr = Signal(range(max(self.w.depth, self.dat.depth, self.key.depth) + 1))   # a dot product's base address
        vptr = Signal(range(self.dat.depth + max(CB, AB) + 1))   # weighted sum: this beat's V word
        score_max = Signal(signed(fixed.SCORE_BITS))
        big_e = Signal(signed(EXP_W))
        exp_sum = Signal(32)
        rcp = Signal(26)          # floor(2^40 / sum) < 2^26 because sum >= LUT[0] = 2^15
        keep = Signal()           # key ``outer`` is attended
        ve = Signal(signed(8))    # its value exponent
        live = Signal()           # exp2 pass: its term is not cut off
        shift_n = Signal(4)
        res = Signal(signed(16))  # a result element between its low and high byte writes

        def step_lane(word, lane):
            """Advance an element index kept as (word, lane)."""
            return [lane.eq(Mux(lane == P - 1, 0, lane + 1)), word.eq(Mux(lane == P - 1, word + 1, word))]

        # --- the multiplier pipeline -------------------------------------------------------------
        # issue (addresses to the block RAMs) -> s1 (words out, lanes picked, operands
        # registered) -> s2 (product registered) -> s3 (accumulated); ``acc`` holds a dot product
        # the cycle after its last beat's s3
        beat = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1, "a_sel": 2, "b_sel": 2,
                                         "lane": lane_bits, "klane": klane_bits}))
        s1 = Signal.like(beat)
        m.d.sync += s1.eq(beat)
        dat_lane = Signal(signed(8))
        w_lane = Signal(signed(8))
        key_lane = Signal(signed(16))
        # (case statements: a variable word_select becomes a shifter)
        with m.Switch(s1.lane):
            for l in range(P):
                with m.Case(l):
                    m.d.comb += [dat_lane.eq(self._dat_r.data[l]), w_lane.eq(self._w_r.data[l])]
        with m.Switch(s1.klane):
            for k in range(self.KP):
                with m.Case(k):
                    m.d.comb += key_lane.eq(self._key_r.data[k])
        op_a = Signal(signed(16))
        op_b = Signal(signed(16))
        m.d.sync += [op_a.eq(Mux(s1.a_sel == A_DAT, dat_lane,
                                 Mux(s1.a_sel == A_QBUF, self._qbuf_r.data, self._wm_r.data.as_signed()))),
                     op_b.eq(Mux(s1.b_sel == B_W, w_lane, Mux(s1.b_sel == B_KEY, key_lane, dat_lane)))]
        s2 = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1}))
        m.d.sync += [s2.valid.eq(s1.valid), s2.first.eq(s1.first), s2.last.eq(s1.last)]
        prod = Signal(signed(32))
        m.d.sync += prod.eq(op_a * op_b)
        s3 = Signal.like(s2)
        m.d.sync += [s3.valid.eq(s2.valid), s3.first.eq(s2.first), s3.last.eq(s2.last)]
        acc = Signal(signed(fixed.ACC_BITS))
        acc_ready = Signal()      # acc holds a finished dot product (one cycle)
        with m.If(s3.valid):
            m.d.sync += acc.eq(Mux(s3.first, prod, acc + prod))
        m.d.sync += acc_ready.eq(s3.valid & s3.last)

        # --- memory port defaults ----------------------------------------------------------------
        dat_addr = Signal.like(self._dat_r.addr)
        rd_dat_r = Signal.like(self.rd_dat_addr)
        rd_key_r = Signal.like(self.rd_key_addr)
        m.d.sync += [rd_dat_r.eq(self.rd_dat_addr), rd_key_r.eq(self.rd_key_addr)]
        key_addr = Signal.like(self._key_r.addr)
        m.d.comb += [self._dat_r.addr.eq(dat_addr), self._key_r.addr.eq(key_addr)]
        # the owner's writes (while idle; a copy or a result of ours otherwise)
        m.d.comb += [self._dat_w.addr.eq(self.wr_dat_addr), self._dat_w.data.eq(self.wr_dat_data),
                     self._dat_w.en.eq(self.wr_dat_en),
                     self._w_w.addr.eq(self.wr_w_addr), self._w_w.data.eq(self.wr_w_data),
                     self._w_w.en.eq(self.wr_w_en)]

        # the WRITE's copy of M_i: a vin word read in one cycle is written to its slot in the next
        copy = Signal(data.StructLayout({"valid": 1, "addr": range(self.dat.depth)}))
        m.d.sync += copy.valid.eq(0)
        with m.If(copy.valid):
            m.d.comb += [self._dat_w.addr.eq(copy.addr), self._dat_w.data.eq(self._dat_r.data),
                         self._dat_w.en.eq((1 << P) - 1)]
        # attention: the Q row's element read in one cycle goes into qbuf in the next (its lane
        # picked by the multiplier's lane select, s1.lane)
        qload = Signal(data.StructLayout({"valid": 1, "idx": range(self.QD)}))
        m.d.sync += qload.valid.eq(0)
        with m.If(qload.valid):
            m.d.comb += [self._qbuf_w.addr.eq(qload.idx), self._qbuf_w.data.eq(dat_lane), self._qbuf_w.en.eq(1)]

        score_mult = [fixed.score_scale(c.d_h), fixed.score_scale(c.head_dim)]
        mult = Mux(attn, score_mult[1][0], score_mult[0][0])
        sshift = Mux(attn, score_mult[1][1], score_mult[0][1])
        # the key's exponent: K_b's (recall) or K row b's (attention), read at ``outer``
        m.d.comb += [self._kexp_r.addr.eq(outer), self._mexp_r.addr.eq(outer)]
        k_exp = Mux(attn, self._vexp_r.data, self._kexp_r.data)
        v_exp = Mux(attn, self._vexp_r.data, self._mexp_r.data)
        keep_outer = ~(attn & causal) | (outer.as_signed() <= keep_lim)
        pi = ppu.i.payload
        y = ppu.o.payload

        def requantize(x, s, wide, m_val=None):
            """Start the unit: shift_round_sat(x [* m_val], s, 32 if wide else 16)."""
            return [ppu.i.valid.eq(1), pi.x.eq(x), pi.s.eq(s), pi.wide.eq(wide),
                    pi.use_m.eq(m_val is not None), pi.m.eq(0 if m_val is None else m_val)]

        def next_key(this_state, next_state):
            """The per-key passes: on to key outer + 1, or the next pass after the last."""
            m.d.sync += outer.eq(outer + 1)
            with m.If(outer == n_keys - 1):
                m.d.sync += outer.eq(0)
                m.next = next_state
            with m.Else():
                m.next = this_state

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += [dat_addr.eq(rd_dat_r), key_addr.eq(rd_key_r), self._vexp_r.addr.eq(0)]
                # (vexp[0], two cycles old: the owner's last write is >= 4 cycles before a start)
                m.d.sync += vexp0.eq(self._vexp_r.data)
                with m.If(self.start):
                    m.d.sync += [op.eq(self.op), slot.eq(self.slot), n_keys.eq(self.n_keys), n_q.eq(self.n_q),
                                 causal.eq(self.causal & (self.op == Op.ATTENTION)), a.eq(0),
                                 outer.eq(0), inner.eq(0), ptr.eq(0)]
                    with m.Switch(self.op):
                        with m.Case(Op.WRITE):
                            m.next = "COPY"
                        with m.Case(Op.RECALL):
                            m.next = "PROJ_START"
                        with m.Default():
                            m.next = "ROW"

            # --- WRITE: M_i into its slot (CB words), its exponents, then K_i = W_k^T M_i ------
            with m.State("COPY"):
                m.d.comb += dat_addr.eq(inner)
                m.d.sync += [copy.valid.eq(1), copy.addr.eq(self.mem_base + slot * CB + inner), inner.eq(inner + 1)]
                with m.If(inner == CB - 1):
                    m.next = "PROJ_START"
            with m.State("PROJ_START"):
                with m.If(op == Op.WRITE):
                    m.d.comb += [self._mexp_w.addr.eq(slot), self._mexp_w.data.eq(vexp0), self._mexp_w.en.eq(1),
                                 self._kexp_w.addr.eq(slot), self._kexp_w.data.eq(vexp0 + self.wk_exp + self.wk_shift),
                                 self._kexp_w.en.eq(1)]
                m.d.sync += [q_exp.eq(vexp0 + self.wq_exp + self.wq_shift),
                             outer.eq(0), o_word.eq(0), o_lane.eq(0), inner.eq(0), i_word.eq(0), i_lane.eq(0),
                             ptr.eq(Mux(op == Op.WRITE, c.d_h * CB, 0))]
                m.next = "PROJ_BEATS"
            with m.State("PROJ_BEATS"):
                # column ``outer`` of W (words ptr..ptr+CB-1) against the vector in vin
                m.d.comb += [dat_addr.eq(i_word), self._w_r.addr.eq(ptr + i_word),
                             beat.valid.eq(1), beat.first.eq(inner == 0), beat.last.eq(inner == c.d - 1),
                             beat.a_sel.eq(A_DAT), beat.b_sel.eq(B_W), beat.lane.eq(i_lane)]
                m.d.sync += [inner.eq(inner + 1)] + step_lane(i_word, i_lane)
                with m.If(inner == c.d - 1):
                    m.next = "PROJ_ACC"
            with m.State("PROJ_ACC"):
                with m.If(acc_ready):
                    m.d.comb += requantize(acc, Mux(op == Op.WRITE, self.wk_shift, self.wq_shift), 0)
                    m.next = "PROJ_STORE"
            with m.State("PROJ_STORE"):
                with m.If(ppu.o.valid):
                    half, k_lane = self.key_place(o_lane)
                    with m.If(op == Op.WRITE):
                        m.d.comb += [self._key_w.addr.eq(slot * KB + self.key_word(o_word, o_lane)),
                                     self._key_w.en.eq(Const(1, self.KP) << k_lane)]
                        m.d.comb += [self._key_w.data[k].eq(y) for k in range(self.KP)]
                    with m.Else():
                        m.d.comb += [self._qbuf_w.addr.eq(outer), self._qbuf_w.data.eq(y), self._qbuf_w.en.eq(1)]
                    m.d.sync += [outer.eq(outer + 1), inner.eq(0), i_word.eq(0), i_lane.eq(0), ptr.eq(ptr + CB)]
                    m.d.sync += step_lane(o_word, o_lane)
                    with m.If(outer == c.d_h - 1):
                        with m.If(op == Op.WRITE):
                            m.next = "DONE"
                        with m.Else():
                            m.next = "SCORE_START"
                    with m.Else():
                        m.next = "PROJ_BEATS"

            # --- ATTENTION: Q row a into qbuf ----------------------------------------------------
            with m.State("ROW"):
                m.d.sync += [keep_lim.eq(a + n_keys - n_q), inner.eq(0), i_word.eq(0), i_lane.eq(0)]
                m.next = "QLOAD"
            with m.State("QLOAD"):
                m.d.comb += [dat_addr.eq(ptr + i_word), self._vexp_r.addr.eq(a), beat.lane.eq(i_lane)]
                m.d.sync += [qload.valid.eq(1), qload.idx.eq(inner), inner.eq(inner + 1)]
                m.d.sync += step_lane(i_word, i_lane)
                with m.If(inner == c.head_dim - 1):
                    m.next = "QLOAD_EXP"
            with m.State("QLOAD_EXP"):
                # (vexp[a], read in QLOAD; the last qbuf write lands now)
                m.d.sync += q_exp.eq(self._vexp_r.data)
                m.next = "SCORE_START"

            # --- scores: t_b = shift_round_sat(q . K_b * mult, shift - 8 - q_exp - k_exp_b, 32) ---
            with m.State("SCORE_START"):
                m.d.sync += [outer.eq(0), inner.eq(0), i_word.eq(0), i_lane.eq(0),
                             ptr.eq(Mux(attn, MQ * AB, 0)), score_max.eq(-(1 << (fixed.SCORE_BITS - 1)))]
                m.next = "SCORE_BEATS"
            with m.State("SCORE_BEATS"):
                # (the key's exponent is read at ``outer`` meanwhile)
                m.d.comb += [self._vexp_r.addr.eq(MQ + outer), self._qbuf_r.addr.eq(inner),
                             beat.valid.eq(1), beat.first.eq(inner == 0),
                             beat.last.eq(inner == Mux(attn, c.head_dim - 1, c.d_h - 1)),
                             beat.a_sel.eq(A_QBUF), beat.lane.eq(i_lane)]
                with m.If(attn):
                    m.d.comb += [dat_addr.eq(ptr + i_word), beat.b_sel.eq(B_DAT)]
                with m.Else():
                    m.d.comb += [key_addr.eq(ptr + self.key_word(i_word, i_lane)), beat.b_sel.eq(B_KEY),
                                 beat.klane.eq(self.key_place(i_lane)[1])]
                m.d.sync += [inner.eq(inner + 1)] + step_lane(i_word, i_lane)
                with m.If(beat.last):
                    m.next = "SCORE_ACC"
            with m.State("SCORE_ACC"):
                m.d.comb += self._vexp_r.addr.eq(MQ + outer)
                with m.If(acc_ready):
                    m.d.comb += requantize(acc, sshift - fixed.SCORE_FRAC - q_exp - k_exp, 1, mult)
                    m.next = "SCORE_STORE"
            with m.State("SCORE_STORE"):
                with m.If(ppu.o.valid):
                    m.d.comb += [self._sc_w.addr.eq(outer), self._sc_w.data.eq(y), self._sc_w.en.eq(1)]
                    with m.If(keep_outer & (y > score_max)):
                        m.d.sync += score_max.eq(y)
                    m.d.sync += [inner.eq(0), i_word.eq(0), i_lane.eq(0), ptr.eq(ptr + Mux(attn, AB, KB))]
                    with m.If(outer == n_keys - 1):
                        m.d.sync += [outer.eq(0), exp_sum.eq(0), big_e.eq(-(1 << (EXP_W - 1)))]
                        m.next = "EXP_READ"
                    with m.Else():
                        m.d.sync += outer.eq(outer + 1)
                        m.next = "SCORE_BEATS"

            # --- exp2 pass: e_b = round_shift(LUT[v & 255], v >> 8), v = max - t_b ------------------
            with m.State("EXP_READ"):
                m.d.comb += [self._sc_r.addr.eq(outer), self._vexp_r.addr.eq(MQ + MK + outer)]
                m.next = "EXP_LUT"
            with m.State("EXP_LUT"):
                v = Signal(signed(fixed.SCORE_BITS + 2))
                m.d.comb += [v.eq(score_max - self._sc_r.data), self._lut_r.addr.eq(v[:fixed.SCORE_FRAC])]
                n_int = v >> fixed.SCORE_FRAC
                m.d.sync += [keep.eq(keep_outer), live.eq(keep_outer & (n_int < fixed.EXP2_CUTOFF)),
                             shift_n.eq(n_int[:4])]
                with m.If(keep_outer & (v_exp > big_e)):
                    m.d.sync += big_e.eq(v_exp)
                m.next = "EXP_TERM"
            with m.State("EXP_TERM"):
                with m.If(live):
                    m.d.comb += requantize(self._lut_r.data, shift_n, 1)
                    m.next = "EXP_STORE"
                with m.Else():
                    m.d.comb += [self._sc_w.addr.eq(outer), self._sc_w.data.eq(0), self._sc_w.en.eq(1)]
                    next_key("EXP_READ", "DIV_START")
            with m.State("EXP_STORE"):
                with m.If(ppu.o.valid):
                    m.d.comb += [self._sc_w.addr.eq(outer), self._sc_w.data.eq(y), self._sc_w.en.eq(1)]
                    m.d.sync += exp_sum.eq(exp_sum + y)
                    next_key("EXP_READ", "DIV_START")

            # --- the reciprocal of the sum ------------------------------------------------------
            with m.State("DIV_START"):
                m.d.comb += [recip.i.valid.eq(1), recip.i.payload.eq(exp_sum)]
                with m.If(recip.i.ready):
                    m.next = "DIV"
            with m.State("DIV"):
                with m.If(recip.o.valid):
                    m.d.sync += rcp.eq(recip.o.payload)
                    m.next = "PROB_READ"

            # --- probabilities p_b = min(round_shift(e_b * r, 25), 32767), weights
            #     w_b = round_shift(p_b, min(E - v_exp_b, 16)) (0 for a key not attended) -------------
            with m.State("PROB_READ"):
                m.d.comb += [self._sc_r.addr.eq(outer), self._vexp_r.addr.eq(MQ + MK + outer)]
                m.next = "PROB_MUL"
            with m.State("PROB_MUL"):
                m.d.comb += requantize(rcp, fixed.RECIP_BITS - fixed.PROB_BITS, 0, self._sc_r.data[:16])
                m.d.sync += [keep.eq(keep_outer), ve.eq(v_exp)]
                m.next = "PROB_P"
            with m.State("PROB_P"):
                with m.If(ppu.o.valid):
                    m.d.comb += [self._pm_w.addr.eq(outer), self._pm_w.data.eq(y), self._pm_w.en.eq(1)]
                    ediff = big_e - ve
                    m.d.comb += requantize(y, Mux(ediff > fixed.ALIGN_CUTOFF, fixed.ALIGN_CUTOFF, ediff), 0)
                    m.next = "PROB_W"
            with m.State("PROB_W"):
                with m.If(ppu.o.valid):
                    m.d.comb += [self._wm_w.addr.eq(outer), self._wm_w.data.eq(Mux(keep, y, 0)), self._wm_w.en.eq(1)]
                    with m.If(outer == n_keys - 1):
                        m.d.sync += [outer.eq(0), o_word.eq(0), o_lane.eq(0), inner.eq(0),
                                     vptr.eq(Mux(attn, (MQ + MK) * AB, self.mem_base))]
                        m.next = "SUM_BEATS"
                    with m.Else():
                        m.d.sync += outer.eq(outer + 1)
                        m.next = "PROB_READ"

            # --- weighted sums: out[e] = sat16(round_shift(sum_b w_b V_b[e], 7)) per element e ------
            with m.State("SUM_BEATS"):
                m.d.comb += [self._wm_r.addr.eq(inner), dat_addr.eq(vptr),
                             beat.valid.eq(1), beat.first.eq(inner == 0), beat.last.eq(inner == n_keys - 1),
                             beat.a_sel.eq(A_WM), beat.b_sel.eq(B_DAT), beat.lane.eq(o_lane)]
                m.d.sync += [inner.eq(inner + 1), vptr.eq(vptr + Mux(attn, AB, CB))]
                with m.If(inner == n_keys - 1):
                    m.next = "SUM_ACC"
            with m.State("SUM_ACC"):
                with m.If(acc_ready):
                    m.d.comb += requantize(acc, fixed.OUT_SHIFT, 0)
                    m.next = "SUM_LO"
            # the result word w of row a: low bytes at out_base + 2*(a*AB + w), high bytes next
            out_addr = self.out_base + 2 * (a * AB + o_word)
            lane_en = Const(1, P) << o_lane
            with m.State("SUM_LO"):
                with m.If(ppu.o.valid):
                    m.d.comb += [self._dat_w.addr.eq(out_addr), self._dat_w.en.eq(lane_en)]
                    m.d.comb += [self._dat_w.data[l].eq(y[:8]) for l in range(P)]
                    m.d.sync += res.eq(y)
                    m.next = "SUM_HI"
            with m.State("SUM_HI"):
                m.d.comb += [self._dat_w.addr.eq(out_addr | 1), self._dat_w.en.eq(lane_en)]
                m.d.comb += [self._dat_w.data[l].eq(res[8:]) for l in range(P)]
                m.d.sync += [inner.eq(0), outer.eq(outer + 1),
                             vptr.eq(Mux(attn, (MQ + MK) * AB, self.mem_base) + o_word + (o_lane == P - 1))]
                m.d.sync += step_lane(o_word, o_lane)
                with m.If(outer == Mux(attn, c.head_dim - 1, c.d - 1)):
                    m.next = "ROW_END"
                with m.Else():
                    m.next = "SUM_BEATS"
            with m.State("ROW_END"):
                m.d.comb += [self._oexp_w.addr.eq(a), self._oexp_w.data.eq(big_e - (fixed.PROB_BITS - fixed.OUT_SHIFT)),
                             self._oexp_w.en.eq(1)]
                with m.If(attn & (a + 1 < n_q)):
                    m.d.sync += [a.eq(a + 1), ptr.eq((a + 1) * AB), outer.eq(0)]
                    m.next = "ROW"
                with m.Else():
                    m.next = "DONE"
            with m.State("DONE"):
                m.next = "IDLE"
        m.d.comb += [self.busy.eq(~fsm.ongoing("IDLE")), self.done.eq(fsm.ongoing("DONE"))]
        return m
