"""The compute engine: memories, the MAC lane array and the sequencer of WRITE, RECALL and
ATTENTION, bit-exact with ``hmtx.model.fixed``."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed
from hmtx.model.configs import EngineConfig

from .arith import Reciprocal, ShiftRoundSat
from .fanout import replicate, replicate_tree
from .mac import MacArray
from .regtable import RegisterTable

__all__ = ["Op", "Engine", "EngineLayout", "EngineSignature", "Region", "key_block_lanes"]

EXP_W = 12          # internal exponents (sums of a few 7-bit BFP exponents and a shift)
SHIFT_W = 5         # projection shifts 0..31 (protocol SHIFT_MAX)
MASK_W = 12         # score shifts before clamping: shift - 8 - qe - ke, |.| < 2^11


def ceil_div(a, b):
    return -(-a // b)


def delay(m, value, cycles, name, reset_less=True, reset_first=False):
    """``value`` through ``cycles`` registers; every register in order (the last is the output).

    ``reset_first``: only the first register resets (write enables: the later ones are flushed
    while the reset is held, and a reset net to every tap of a wide enable is a long path)."""
    taps = []
    for k in range(cycles):
        reg = Signal.like(value, reset_less=reset_less and not (reset_first and k == 0),
                          name=f"{name}_d{k + 1}")
        m.d.sync += reg.eq(value)
        taps.append(value := reg)
    return taps


def key_block_lanes(P: int) -> int:
    """KBL, the block of lanes in which key words interleave q's two halves (Engine.key_place):
    4, half a lane group of 8, when P is a multiple of 8; otherwise the whole half (P // 2, or P
    for odd P, whose key words are not halved)."""
    KP = P // 2 if P % 2 == 0 else P
    return 4 if (KP != P and P % 8 == 0) else KP


def lane_group_regions(G: int) -> list:
    """The region of each of ``G`` lane groups, for the two-level copies of the lane-group
    controls (fanout.replicate_tree). The LFE5U-85F floorplan (hw/flow/floorplan.py) puts groups
    ``2i`` and ``2i + 1`` at the two ends of block-RAM row ``i % 4``; a region is one end of
    two neighbouring rows, so a region's copy sits between the centre and its two groups."""
    return [g % 2 + 2 * ((g // 2) % 4 // 2) for g in range(G)]


class Region:
    """A window ``[base, base + depth)`` of a memory, indexed like the memory itself
    (``region.data[i]`` is ``memory.data[base + i]``), for testbenches that fill or read one
    logical buffer of a shared memory."""

    def __init__(self, memory, base, depth):
        self.memory, self.base, self.depth = memory, base, depth
        self.data = self

    def __getitem__(self, i):
        if not 0 <= i < self.depth:
            raise IndexError(f"region index {i} out of range 0..{self.depth - 1}")
        return self.memory.data[self.base + i]

    def __len__(self):
        return self.depth


class Rows:
    """One logical memory stored as several memories of ``row_depth`` words each (word ``i`` in
    ``rows[i // row_depth]``), indexed like a memory (``rows.data[i]``) for testbenches."""

    def __init__(self, rows, row_depth):
        self.rows, self.row_depth = rows, row_depth
        self.depth = sum(r.depth for r in rows)
        self.data = self

    def __getitem__(self, i):
        if not 0 <= i < self.depth:
            raise IndexError(f"word {i} out of range 0..{self.depth - 1}")
        return self.rows[i // self.row_depth].data[i % self.row_depth]

    def __len__(self):
        return self.depth


# Words per block-RAM row of ``w``: a DP16KD's depth at its widest (36-bit) port.
W_ROW_DEPTH = 512
# Read address registers before the block RAMs: one by the sequencer, one that hmtx.hw.flow.netlist
# copies once per region of the die, one it copies next to each cluster of block RAMs (the long
# way across the die is register to register, and no hop spans more than about half of it).
ADDR_REGS = 3


class Op:
    WRITE = 0
    RECALL = 1
    ATTENTION = 2


class EngineLayout:
    """What the command processor (hw/top.py) relies on in every engine: the sizes, the places of
    the buffers in ``dat`` and the key words' lane layout. :class:`Engine` and
    :class:`~hmtx.hw.serial_engine.SerialEngine` share it, so either serves the same top."""

    def _set_layout(self, c: EngineConfig):
        self.config = c
        P = self.P = c.lanes
        self.CB, self.HB, self.AB = ceil_div(c.d, P), ceil_div(c.d_h, P), ceil_div(c.head_dim, P)
        self.KP = P // 2 if P % 2 == 0 else P
        # The two halves of a q word are interleaved in blocks of KBL lanes (4 when P is a
        # multiple of 8: half a lane group): key lane k of half h is q lane
        # 2*KBL*(k // KBL) + KBL*h + k % KBL. Each key lane then feeds two MAC lanes of one lane
        # group (its first four lanes in one beat, the other four in the next), whose key block
        # the floorplan puts next to that group's other blocks (hw/flow/floorplan.py), and every MAC
        # lane multiplies its own q lane. KBL = KP is the plain layout (half h = lanes
        # h*KP..). Words per slot: two per q word (the last q word's halves as needed).
        self.KBL = key_block_lanes(P)
        self.KB = ceil_div(c.d_h, self.KP) if self.KBL == self.KP else 2 * ceil_div(c.d_h, P)
        self.KMAX = max(c.n_slots, c.max_keys)
        self.ROWS = c.max_queries + 2 * c.max_keys
        for name, v in (("d", c.d), ("d_h", c.d_h), ("head_dim", c.head_dim)):
            if v > fixed.D_MAX:
                raise ValueError(f"config {c.name!r}: {name}={v} exceeds fixed.D_MAX={fixed.D_MAX}")
        if self.KMAX > fixed.KEYS_MAX:
            raise ValueError(f"config {c.name!r}: {self.KMAX} keys exceed fixed.KEYS_MAX")
        self.vin_depth = max(self.CB, self.ROWS * self.AB)
        self.out_words = max(self.CB, c.max_queries * self.AB)
        self.out_base = self.vin_depth + (self.vin_depth & 1)   # even: a result's high-byte word is base | 1
        self.mem_base = self.vin_depth + 2 * self.out_words
        self.dat_depth = self.mem_base + c.n_slots * self.CB

    def _owner_ports(self, m):
        """Wire the owner's members to the engine's memory ports (made in ``__init__``:
        ``_vexp_o``, ``_pm_o``, ``_mexp_o``, ``_kexp_o``, ``_oexp_o``)."""
        m.d.comb += [self._vexp_o.addr.eq(self.wr_vexp_addr), self._vexp_o.data.eq(self.wr_vexp_data),
                     self._vexp_o.en.eq(self.wr_vexp_en)]
        for name in ("pm", "mexp", "kexp", "oexp"):
            port = getattr(self, f"_{name}_o")
            m.d.comb += [port.addr.eq(getattr(self, f"rd_{name}_addr")),
                         getattr(self, f"rd_{name}_data").eq(port.data)]

    def key_place(self, lane):
        """(half, key lane) that holds q lane ``lane`` (an int or an Amaranth value)."""
        if self.KP == self.P:
            return 0, lane
        B = self.KBL
        if B & (B - 1) == 0:
            s = B.bit_length() - 1
            return (lane >> s) & 1, ((lane >> (s + 1)) << s) | (lane & (B - 1))
        return (lane // B) % 2, B * (lane // (2 * B)) + lane % B

    def key_word(self, q_word, lane):
        """Key word (within a slot) that holds element ``q_word * P + lane``."""
        return q_word if self.KP == self.P else 2 * q_word + self.key_place(lane)[0]

    def key_element(self, word, k):
        """Element of K_i held by key lane ``k`` of key word ``word`` (within a slot); may be
        >= d_h in the last words (padding)."""
        if self.KP == self.P:
            return word * self.KP + k
        B = self.KBL
        return (word // 2) * self.P + 2 * B * (k // B) + B * (word % 2) + k % B


class EngineSignature(wiring.Signature):
    """The engine as the command processor (hw/top.py) sees it, either kind: the operation and
    its operands, busy/done, and -- while idle -- the owner's writes of the input buffer, the
    weights and the row exponents, and its reads of every result and of the cache.

    Reads: ``rd_dat_data``/``rd_key_data`` are the words at ``rd_dat_addr``/``rd_key_addr`` of
    the engine's ``READ_LATENCY`` cycles before (the block RAM's output itself, to be registered
    before any logic looks at it); ``rd_pm_data``, ``rd_mexp_data``, ``rd_kexp_data`` come one
    cycle after their address (synchronous reads); ``rd_oexp_data`` in the same cycle. (The
    owner reads ``dat`` and ``key`` through the engine's own read ports: a second read port
    would make Yosys duplicate these block RAMs.)"""

    def __init__(self, layout: "EngineLayout"):
        c, P = layout.config, layout.P
        word = data.ArrayLayout(signed(8), P)
        super().__init__({
            "start": In(1), "op": In(2),
            "slot": In(range(c.n_slots)),
            "n_keys": In(range(layout.KMAX + 1)),
            "n_q": In(range(c.max_queries + 1)),
            "causal": In(1),
            "wq_exp": In(signed(8)), "wk_exp": In(signed(8)),
            "wq_shift": In(SHIFT_W), "wk_shift": In(SHIFT_W),
            "busy": Out(1), "done": Out(1),
            "wr_dat_addr": In(range(layout.dat_depth)), "wr_dat_data": In(word), "wr_dat_en": In(P),
            "wr_w_addr": In(range(2 * c.d_h * layout.CB)), "wr_w_data": In(word), "wr_w_en": In(P),
            "wr_vexp_addr": In(range(layout.ROWS)), "wr_vexp_data": In(signed(8)), "wr_vexp_en": In(1),
            "rd_dat_addr": In(range(layout.dat_depth)), "rd_dat_data": Out(word),
            "rd_key_addr": In(range(c.n_slots * layout.KB)),
            "rd_key_data": Out(data.ArrayLayout(signed(16), layout.KP)),
            "rd_pm_addr": In(range(layout.KMAX)), "rd_pm_data": Out(unsigned(16)),
            "rd_mexp_addr": In(range(c.n_slots)), "rd_mexp_data": Out(signed(8)),
            "rd_kexp_addr": In(range(c.n_slots)), "rd_kexp_data": Out(signed(EXP_W)),
            "rd_oexp_addr": In(range(c.max_queries)), "rd_oexp_data": Out(signed(EXP_W)),
        })


class Engine(EngineLayout, wiring.Component):
    """All on-chip state of a recall/attention engine and the sequencer that computes with it.

    Memories (P-lane words; ``CB = ceil(d/P)``, ``HB = ceil(d_h/P)``, ``AB = ceil(head_dim/P)``).
    Block RAM is allocated by port width, not by bits (a 512-bit port takes 15-16 DP16KD
    whatever its depth), so the P x int8 buffers that are never read in the same cycle share
    one memory and one read port (docs/synthesis.md, "Block RAM"):

    * ``dat``: P x int8, three regions (:class:`Region` views ``vin``, ``mem``; ``out_base``):

      - ``vin`` (words ``0..VIN_D-1``): the validated input: vector S/M at words 0..CB-1, or the
        attention tile (Q rows at row 0, K rows at row ``max_queries``, V rows at
        ``max_queries + max_keys``, AB words per row);
      - the result rows (from ``out_base``): result word w (P x int16) as two words, the low
        bytes at ``out_base + 2w`` and the high bytes at ``out_base + 2w + 1``;
      - ``mem`` (from ``mem_base``): the ring of N memories M_i (word ``i*CB + cb``).
    * ``vexp``: one int8 exponent per vector/row (the vector uses entry 0); ``mexp``: M_i's
      (flip-flop tables, :class:`~hmtx.hw.regtable.RegisterTable`, read synchronously).
    * ``w``: P x int8, W_q then W_k (views ``wq``, ``wk``; W_k from word ``d_h*CB``): word
      ``j*CB + c//P`` lane ``c%P`` of a matrix holds W[c, j], so the P lanes read P
      consecutive input channels of one output column j.
    * ``key`` / ``kexp``: the keys K_i = W_k^T M_i in words of ``KP`` int16 lanes (``KP = P/2``
      for even P, else P; word ``i*KB + kb``). Half-width words fill a block RAM's depth
      instead of doubling its width (a 64-lane int16 word would take 32 DP16KD for a ring that
      fills 16), at the price of scores at KP MACs per beat. Key word ``2w + h`` holds half h
      of q's word w, the halves interleaved in blocks of ``KBL`` lanes (:meth:`key_place`,
      :meth:`key_element`; ``KB = 2 ceil(d_h/P)``, or ``ceil(d_h/KP)`` when KBL = KP), so each
      MAC lane multiplies its own q lane by a key lane of its own lane group.
    * ``qbuf``: q = W_q^T S, or the current attention query row (P x int16 words; a few words, so
      flip-flops per lane group rather than a memory); ``sc``: scores t
      then exp2 terms e; ``pm``: probabilities; ``wm``: exponent-aligned weights; ``oexp``:
      the result exponents.

    The owner (the command processor) reaches the memories only through the members of
    :class:`EngineSignature`, while the engine is idle.

    Sequencing (one MAC beat per cycle, P lanes): projection ``d_h x CB`` beats (dot mode,
    one output per column j), scores ``n x KB`` beats (dot mode; attention ``n_k x AB``), an exp2 pass over the n scores,
    one ~41-cycle reciprocal, a probability pass, and the weighted sum ``CB x n`` beats in lane
    mode (lane l accumulates ``w_i * M_i[cb*P + l]`` over the slots, so no transposed copy of M
    is needed). Between phases the sequencer waits until every result of the previous phase
    is written (``pending`` = 0).

    Members: :class:`EngineSignature`. ``start`` (a pulse) begins ``op`` (:class:`Op`) with
    the operands beside it, sampled then: ``slot`` (WRITE), ``n_keys`` (RECALL: the fill;
    ATTENTION: n_k), ``n_q`` and ``causal`` (ATTENTION), the weights' exponents and shifts.
    ``done`` pulses when the results are in memory.
    """

    def __init__(self, config: EngineConfig, w_row_depth: int = W_ROW_DEPTH):
        c = config
        if w_row_depth < 1 or w_row_depth & (w_row_depth - 1):
            raise ValueError(f"w_row_depth must be a power of two, got {w_row_depth}")
        self.w_row_depth = w_row_depth
        self._set_layout(c)
        P = self.P
        i8 = data.ArrayLayout(signed(8), P)
        # No read of these memories ever needs the data of a write to the same address in the
        # same cycle (each phase drains before the next reads what it wrote; the owner writes
        # only while the engine is idle). Without this Yosys wraps every block RAM in
        # collision-emulation logic (an address comparator and a bypass register per bit),
        # which sat on the critical path.
        NO_RW = {"no_rw_check": 1}
        i16 = data.ArrayLayout(signed(16), P)
        vin_d = self.vin_depth
        self.dat = memory.Memory(shape=i8, depth=self.dat_depth, init=[], attrs=NO_RW)
        self.vin = Region(self.dat, 0, vin_d)
        self.mem = Region(self.dat, self.mem_base, c.n_slots * self.CB)
        # the exponent tables are flip-flops read through a register inside their multiplexer
        # (hw/regtable.py): each is read at a new address every cycle of the exp2 and
        # probability passes
        self.vexp = RegisterTable(signed(8), self.ROWS, name="vexp")
        # ``w`` is one memory per block-RAM row (W_ROW_DEPTH words): every row is read at once and
        # registered, then the row is selected -- instead of Yosys's multiplexer straight after
        # the block RAMs of a deep memory, which had to reach nine DP16KD within the ~4 ns that
        # their clock-to-output leaves of a 10 ns cycle
        w_depth = 2 * c.d_h * self.CB
        rd = w_row_depth
        self.w_rows = [memory.Memory(shape=i8, depth=min(rd, w_depth - r * rd), init=[], attrs=NO_RW)
                       for r in range(ceil_div(w_depth, rd))]
        self.w = Rows(self.w_rows, rd)
        self.wq = Region(self.w, 0, c.d_h * self.CB)
        self.wk = Region(self.w, c.d_h * self.CB, c.d_h * self.CB)
        self.mexp = RegisterTable(signed(8), c.n_slots, name="mexp")
        self.key = memory.Memory(shape=data.ArrayLayout(signed(16), self.KP), depth=c.n_slots * self.KB,
                                 init=[], attrs=NO_RW)
        self.kexp = RegisterTable(signed(EXP_W), c.n_slots, name="kexp")
        self.sc = memory.Memory(shape=signed(fixed.SCORE_BITS), depth=self.KMAX, init=[], attrs=NO_RW)
        self.pm = memory.Memory(shape=unsigned(16), depth=self.KMAX, init=[], attrs=NO_RW)
        self.wm = memory.Memory(shape=unsigned(16), depth=self.KMAX, init=[], attrs=NO_RW)
        # (flip-flops, not a block RAM: its only read is the response generator's, into logic)
        self.oexp = memory.Memory(shape=signed(EXP_W), depth=c.max_queries, init=[], attrs={"ram_style": "logic"})
        self.lut = memory.Memory(shape=unsigned(fixed.EXP2_BITS + 1), depth=1 << fixed.SCORE_FRAC,
                                 init=fixed.exp2_lut())
        super().__init__(EngineSignature(self))
        self._dat_r = self.dat.read_port()
        self._dat_w = self.dat.write_port(granularity=1)
        # (each read covers only its part of vexp -- K rows, V rows, Q rows -- so it is a smaller
        # multiplexer with no adder in front; the value exponents' reads register their address
        # beside each bank of the table first)
        self._vexp_k = self.vexp.read_port(base=c.max_queries, size=c.max_keys)
        self._vexp_v = self.vexp.read_port(base=c.max_queries + c.max_keys, size=c.max_keys, latency=2)
        self._vexp_q = self.vexp.read_port(size=c.max_queries)
        self._w_r = [r.read_port() for r in self.w_rows]
        self._w_w = [r.write_port(granularity=1) for r in self.w_rows]
        self._mexp_r = self.mexp.read_port(latency=2)
        self._mexp_w = self.mexp.write_port()
        self._key_r = self.key.read_port()
        self._key_w = self.key.write_port(granularity=1)
        self._kexp_r = self.kexp.read_port()
        self._kexp_w = self.kexp.write_port()
        self._sc_r = self.sc.read_port()
        self._sc_w = self.sc.write_port()
        self._pm_w = self.pm.write_port()
        self._wm_r = self.wm.read_port()
        self._wm_w = self.wm.write_port()
        self._oexp_w = self.oexp.write_port()
        self._lut_r = self.lut.read_port(domain="comb")
        # the owner's ports (EngineSignature), after the engine's own
        self._vexp_o, self._pm_o = self.vexp.write_port(), self.pm.read_port()
        self._mexp_o, self._kexp_o = self.mexp.read_port(), self.kexp.read_port()
        self._oexp_o = self.oexp.read_port(domain="comb")
        self._dat_q = Signal.like(self._dat_r.data, reset_less=True, name="dat_q")
        self._key_q = Signal.like(self._key_r.data, reset_less=True, name="key_q")

    # cycles from ``rd_dat_addr``/``rd_key_addr`` to ``rd_dat_data``/``rd_key_data``
    READ_LATENCY = ADDR_REGS + 1

    def elaborate(self, platform):
        m = Module()
        c, P, CB, HB, AB = self.config, self.P, self.CB, self.HB, self.AB
        KP, KB = self.KP, self.KB
        MQ, MK = c.max_queries, c.max_keys
        MEM_BASE, OUT_BASE = self.mem_base, self.out_base
        W_K = c.d_h * CB          # W_k's first word in ``w``
        for name in ("dat", "vexp", "mexp", "key", "kexp", "sc", "pm",
                     "wm", "oexp", "lut"):
            m.submodules[name] = getattr(self, name)
        for r, mem in enumerate(self.w_rows):
            m.submodules[f"w{r}"] = mem
        self._owner_ports(m)
        m.d.comb += [self.rd_dat_data.eq(self._dat_r.data), self.rd_key_data.eq(self._key_r.data)]
        # lane groups: the lane array's controls are registered once per group of LG lanes
        # (hw/fanout.py), so no register drives all P lanes
        LG = min(P, 8)
        G = ceil_div(P, LG)
        m.submodules.mac = mac = MacArray(P, tag_bits=24, group_lanes=LG)
        m.submodules.proj_rq = proj_rq = ShiftRoundSat(fixed.ACC_BITS, fixed.PROJ_BITS, MASK_W, tag_bits=24)
        m.submodules.score_rq = score_rq = ShiftRoundSat(64, fixed.SCORE_BITS, MASK_W, tag_bits=24)
        m.submodules.recip = recip = Reciprocal(32)
        m.d.comb += [mac.o.ready.eq(1), proj_rq.o.ready.eq(1), score_rq.o.ready.eq(1),
                     recip.o.ready.eq(1)]

        # --- operands latched at start -----------------------------------------------------
        op = Signal(2)
        slot = Signal.like(self.slot)
        n_keys = Signal.like(self.n_keys)
        n_q = Signal.like(self.n_q)
        causal = Signal()
        attn = op == Op.ATTENTION
        q_exp = Signal(signed(EXP_W))       # exponent of q (recall) / Q row a (attention)
        kslot_base = Signal(range(c.n_slots * KB + 1))
        mslot_base = Signal(range(self.dat.depth + 1))
        a = Signal(range(MQ + 1))           # current query row (attention); 0 for recall
        a_more = Signal()                   # a + 1 < n_q (registered beside a)
        single = Signal()                   # n_keys == 1 (latched with it)
        keep_lim = Signal(signed(12))       # causal: key b is attended iff b <= a + n_k - n_q

        # --- sequencer state -----------------------------------------------------------------
        outer = Signal(16)
        inner = Signal(16)
        # the last outer/inner index of the current pass (its count less one, kept so that the
        # end-of-row test is a compare of two registers)
        outer_last = Signal(16)
        inner_last = Signal(16)
        issuing = Signal()
        pending = Signal(16)
        inc = Signal()
        dec = Signal(2)
        base_o = Signal(24)     # address base advanced per outer step
        base_i = Signal(24)     # address base advanced per inner step
        sub_w = Signal(16)      # PROJ: j // P
        sub_l = Signal(range(P))  # PROJ: j % P
        m.d.sync += pending.eq(pending + inc - dec)
        # pending == 0, registered: it is computed from this cycle's count and changes (inc, dec
        # are single results), so the phase ends' tests start at a flip-flop
        pending_zero = Signal(init=1)
        m.d.sync += pending_zero.eq(((pending == 0) & (inc == dec)) | ((pending == 1) & dec.bool() & ~inc))

        score_max = Signal(signed(fixed.SCORE_BITS))
        big_e = Signal(signed(EXP_W))
        exp_sum = Signal(32)
        rcp = Signal(26)        # floor(2^40 / sum) < 2^26 because sum >= LUT[0] = 2^15

        score_mult = [fixed.score_scale(c.d_h), fixed.score_scale(c.head_dim)]

        # --- stage-1 control (the beat whose memory reads are arriving) -------------------
        issue = Signal(data.StructLayout({
            "valid": 1, "first": 1, "last": 1, "lane_mode": 1, "copy": 1, "zero": 1, "qhi": 1,
            "qaddr": range(max(HB, AB, 2)),
            "lim": range(P + 1), "tag": 24, "phase": 3,
        }))
        issue_copy_addr = Signal(24)
        # The beat's control follows its memory reads: ADDR_REGS registers while the read
        # addresses travel to the block RAMs (the sequencer computes next cycle's addresses),
        # stage 1 while the block RAMs read, stage 2 at their output registers, stages 3 and 4 on
        # the way to the MAC. The stage registers carry no reset (a reset would fan out to all of
        # them); only their valid bits (sv) do, so a reset mid-operation issues no stray MAC beats.
        s_taps = delay(m, issue, ADDR_REGS + 4, "s")
        s1, s2, s3, s4 = s_taps[ADDR_REGS:]
        s1_copy_addr, s2_copy_addr = delay(m, issue_copy_addr, ADDR_REGS + 2, "copy_addr")[ADDR_REGS:]
        sv = delay(m, issue.valid, ADDR_REGS + 4, "s_valid", reset_less=False)
        s1_valid, s2_valid, s4_valid = sv[ADDR_REGS], sv[ADDR_REGS + 1], sv[ADDR_REGS + 3]
        dat_addr = Signal.like(self._dat_r.addr)
        w_addr = Signal(range(self.w.depth))
        key_addr = Signal.like(self._key_r.addr)
        wm_addr = Signal.like(self._wm_r.addr)
        addr_r = [delay(m, a, ADDR_REGS, a.name)[-1] for a in (dat_addr, w_addr, key_addr, wm_addr)]
        m.d.comb += [self._dat_r.addr.eq(addr_r[0]), self._key_r.addr.eq(addr_r[2]), self._wm_r.addr.eq(addr_r[3])]
        m.d.comb += [port.addr.eq(addr_r[1] % self.w_row_depth) for port in self._w_r]
        # stage 2: the block RAM outputs are registered before any logic looks at them
        # (a DP16KD's clock-to-output is 5.8 ns in nextpnr's model)
        dat_q, key_q = self._dat_q, self._key_q
        w_row_q = [Signal.like(port.data, reset_less=True, name=f"w_row{r}_q") for r, port in enumerate(self._w_r)]
        wm_q = Signal.like(self._wm_r.data, reset_less=True)
        m.d.sync += [dat_q.eq(self._dat_r.data), key_q.eq(self._key_r.data), wm_q.eq(self._wm_r.data)]
        m.d.sync += [q.eq(port.data) for q, port in zip(w_row_q, self._w_r)]
        # which row of ``w`` the word at stage 3 came from (the address's high bits, three cycles on)
        w_row_now = Signal(range(max(2, len(self.w_rows))))
        m.d.comb += w_row_now.eq(addr_r[1] // self.w_row_depth)
        w_row_sel = delay(m, w_row_now, 2, "w_row_sel")
        # stages 3 and 4: two more registers on the way from the block RAMs (all over the die) to
        # the MAC lanes (in the DSP columns): the first can sit at its block RAM (whose 5.8 ns
        # clock-to-output leaves little for the route), the next one where the placer likes.
        # ``w``'s row select sits between them (nine rows, nine places on the die).
        # the operand muxes' selects, one register per lane group (the same values as s4's)
        # (these per-group copies come in two levels, a copy per region and then per group:
        # one hop from the sequencer to a far group was 40-60 tiles)
        regions = lane_group_regions(G)
        s4_sel = replicate_tree(m, Cat(s2.phase, s2.lim, s2.qhi, s2.zero, attn), regions, "opsel")
        dat_q3, key_q3 = (delay(m, q, 2, name)[-1] for q, name in ((dat_q, "dat_q"), (key_q, "key_q")))
        # the weighted sum's weight goes to every lane: one copy per lane group
        wm_q3 = replicate_tree(m, wm_q, regions, "wm_q3")
        w_row_q2 = [delay(m, q, 1, f"w_row{r}_q")[-1] for r, q in enumerate(w_row_q)]
        w_q3 = Signal.like(w_row_q[0], reset_less=True)
        # the row select drives 512 nine-way multiplexers, one per bit: one copy per lane group
        w_rsel = replicate_tree(m, w_row_sel[-2], regions, "w_rsel")
        for g in range(G):
            with m.Switch(w_rsel[g]):
                for r, q in enumerate(w_row_q2):
                    with m.Case(r):
                        m.d.sync += [w_q3[l].eq(q[l]) for l in range(g * LG, min(P, (g + 1) * LG))]
        # qbuf: QD words of P int16 lanes in flip-flops. Each lane group reads with its own copy
        # of the word address, registered at s4 like the block RAM operands.
        QD = max(HB, AB)
        qbuf = [[Signal(signed(16), name=f"qbuf{w}_{l}", reset_less=True) for l in range(P)] for w in range(QD)]
        q_op = [Signal(signed(16), name=f"q_op{l}", reset_less=True) for l in range(P)]
        q_rd = replicate_tree(m, s1.qaddr, regions, "q_rd")
        for l in range(P):
            with m.Switch(q_rd[l // LG]):
                for w in range(QD):
                    with m.Case(w):
                        m.d.sync += q_op[l].eq(qbuf[w][l])

        # phases
        PROJ, SCORE, WSUM = 1, 2, 3

        # The write ports of ``dat`` and ``key`` are registered too (a write lands one cycle
        # later; nothing reads an address in the cycle after writing it: phases drain first).
        dat_w = Signal(data.StructLayout({"addr": len(self._dat_w.addr), "data": self._dat_w.data.shape(),
                                          "en": P}))
        key_w = Signal(data.StructLayout({"addr": len(self._key_w.addr), "data": self._key_w.data.shape(),
                                          "en": KP}))
        # (as many registers as the read addresses; addresses and data without reset, the lane
        # enables with it)
        dat_w_r, key_w_r = delay(m, dat_w, ADDR_REGS, "dat_w")[-1], delay(m, key_w, ADDR_REGS, "key_w")[-1]
        dat_en_taps = delay(m, dat_w.en, ADDR_REGS, "dat_w_en", reset_first=True)
        key_en_taps = delay(m, key_w.en, ADDR_REGS, "key_w_en", reset_first=True)
        dat_en_r, key_en_r = dat_en_taps[-1], key_en_taps[-1]
        # whether any of the engine's writes will still be on its way to ``dat``/``key`` next
        # cycle (an op is done once they land): the taps shift, so that is this cycle's enables
        # and every in-flight tap but the last
        coming = ([dat_w.en, key_w.en] if ADDR_REGS > 1 else []) + dat_en_taps[:-2] + key_en_taps[:-2]
        writes_in_flight_next = Cat(*(e.any() for e in coming)).any()
        # ``done`` comes from a flip-flop: set for the one cycle in DONE with no write in flight
        # (the command processor's state machine follows it, and its decode of our state was
        # the slowest path of the routed smollm build)
        done_r = Signal()
        m.d.comb += [self._dat_w.addr.eq(dat_w_r.addr), self._dat_w.data.eq(dat_w_r.data),
                     self._dat_w.en.eq(dat_en_r),
                     self._key_w.addr.eq(key_w_r.addr), self._key_w.data.eq(key_w_r.data),
                     self._key_w.en.eq(key_en_r)]
        # the owner's writes of ``w`` (weights while idle), registered, then into their row
        w_wr = delay(m, Cat(self.wr_w_addr, self.wr_w_data), ADDR_REGS, "w_wr")[-1]
        w_wr_addr, w_wr_data = w_wr[:len(self.wr_w_addr)], w_wr[len(self.wr_w_addr):]
        # (each row's byte enables are decoded before their registers, so that no logic sits
        # between the last register and the block RAMs of a row)
        # The first register of each row's enables is an explicit flip-flop (fanout.replicate):
        # as a plain register Yosys folds "row != r" into its synchronous reset, and that reset
        # LUT then drives 64 flip-flops across the row. No reset: the owner's request register
        # (hw/top.py) resets, and the chain flushes while reset is held.
        for r, port in enumerate(self._w_w):
            en_d1 = replicate(m, Mux(self.wr_w_addr // self.w_row_depth == r, self.wr_w_en, 0), 1,
                              f"w{r}_wr_en_d1")[0]
            en_r = delay(m, en_d1, ADDR_REGS - 1, f"w{r}_wr_en_d")[-1]
            m.d.comb += [port.addr.eq(w_wr_addr % self.w_row_depth), port.data.eq(w_wr_data),
                         port.en.eq(en_r)]
        # while idle the owner writes ``dat`` (the engine's own writes below take precedence)
        m.d.comb += [dat_w.addr.eq(self.wr_dat_addr), dat_w.data.eq(self.wr_dat_data),
                     dat_w.en.eq(self.wr_dat_en)]

        # last-block lane counts (padding lanes of a partial block are forced to zero)
        def lim(n_total, blk, nblk, width=P):
            rem = n_total - (nblk - 1) * width
            return Mux(blk == nblk - 1, rem, width)

        first_i = inner == 0
        last_i = inner == inner_last
        last_o = outer == outer_last

        def advance(outer_step_stmts, inner_step_stmts):
            """One beat issued: step inner, and outer at the end of a row."""
            with m.If(last_i):
                m.d.sync += inner.eq(0)
                m.d.sync += outer_step_stmts
                with m.If(last_o):
                    m.d.sync += issuing.eq(0)
                with m.Else():
                    m.d.sync += outer.eq(outer + 1)
            with m.Else():
                m.d.sync += inner.eq(inner + 1)
                m.d.sync += inner_step_stmts

        # --- the PROB/EXP pass pipelines (single loop over keys) ----------------------------
        ex1 = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1}))
        ex2 = Signal(data.StructLayout({"valid": 1, "idx": 16, "e": fixed.EXP2_BITS + 1}))
        pr1 = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1}))
        pr2 = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1, "align": 5, "prod": 42}))
        pr3 = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1, "align": 5, "p": 16}))
        ql_issue = Signal(data.StructLayout({"valid": 1, "idx": range(max(AB, 2))}))
        # (the Q row's words: addresses registered, read, registered -- as the MAC beats)
        ql_taps = delay(m, ql_issue, ADDR_REGS + 2, "ql", reset_less=False)
        ql1, ql2 = ql_taps[ADDR_REGS:]
        ex_issue = Signal.like(ex1)
        pr_issue = Signal.like(pr1)
        m.d.sync += [ex1.eq(ex_issue), pr1.eq(pr_issue)]

        # value exponent of key b: M_i's exponent (recall) or V row b's (attention), read at the
        # beat's issue and there at exA/prA: the reads register the key index beside each bank of
        # the tables first (latency 2), so ``inner``, whose compares steer the sequencer, is not
        # pulled towards the tables
        m.d.comb += [self._mexp_r.addr.eq(inner), self._vexp_v.addr.eq(inner)]
        ve2 = Mux(attn, self._vexp_v.data, self._mexp_r.data)
        keep_inner = ~(attn & causal) | (inner.as_signed() <= keep_lim)

        # the vector's exponent sums, registered every cycle (vexp[0] and the weight exponents
        # are stable for cycles before a start), so PROJ_START only copies registers
        vexp0_r = Signal(signed(8))
        kexp_pre = Signal(signed(EXP_W))
        qexp_pre = Signal(signed(EXP_W))
        vexp0 = self.vexp.data[0]
        m.d.sync += [vexp0_r.eq(vexp0),
                     kexp_pre.eq(vexp0 + self.wk_exp + self.wk_shift),
                     qexp_pre.eq(vexp0 + self.wq_exp + self.wq_shift)]
        phase = Signal(3)      # which MAC phase the in-flight results belong to
        # the row's output exponent is written from a register, a cycle after the row ends (its
        # enable decode would otherwise hang off the sequencer's state; the response reads it
        # only after done)
        oexp_wr = Signal(data.StructLayout({"addr": len(self._oexp_w.addr), "data": signed(EXP_W), "en": 1}))
        m.d.sync += oexp_wr.en.eq(0)
        m.d.comb += [self._oexp_w.addr.eq(oexp_wr.addr), self._oexp_w.data.eq(oexp_wr.data),
                     self._oexp_w.en.eq(oexp_wr.en)]
        # WRITE's M and K exponents go into their tables from a register too (the tables' enable
        # decode then starts at flip-flops, not at the sequencer's state)
        exp_wr = Signal(data.StructLayout({"slot": len(slot), "m": signed(8), "k": signed(EXP_W), "en": 1}))
        m.d.sync += exp_wr.en.eq(0)
        m.d.comb += [self._mexp_w.addr.eq(exp_wr.slot), self._mexp_w.data.eq(exp_wr.m),
                     self._mexp_w.en.eq(exp_wr.en),
                     self._kexp_w.addr.eq(exp_wr.slot), self._kexp_w.data.eq(exp_wr.k),
                     self._kexp_w.en.eq(exp_wr.en)]
        # attention: Q row a's exponent, there from the cycle after a changes (QLOAD takes it)
        m.d.comb += self._vexp_q.addr.eq(a)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += [dat_addr.eq(self.rd_dat_addr), key_addr.eq(self.rd_key_addr)]
                with m.If(self.start):
                    m.d.sync += [op.eq(self.op), slot.eq(self.slot), n_keys.eq(self.n_keys),
                                 n_q.eq(self.n_q), causal.eq(self.causal & (self.op == Op.ATTENTION)),
                                 a.eq(0), a_more.eq(self.n_q > 1), single.eq(self.n_keys == 1)]
                    with m.If(self.op == Op.ATTENTION):
                        m.next = "ROW"
                    with m.Else():
                        m.next = "PROJ_START"
            with m.State("PROJ_START"):
                # slot bases from the latched slot (not from the start operands: timing)
                m.d.sync += [kslot_base.eq(slot * KB), mslot_base.eq(MEM_BASE + slot * CB)]
                m.d.sync += [outer.eq(0), inner.eq(0), outer_last.eq(c.d_h - 1), inner_last.eq(CB - 1),
                             base_o.eq(Mux(op == Op.WRITE, W_K, 0)), base_i.eq(0), sub_w.eq(0), sub_l.eq(0), issuing.eq(1)]
                with m.If(op == Op.WRITE):
                    m.d.sync += [exp_wr.slot.eq(slot), exp_wr.m.eq(vexp0_r), exp_wr.k.eq(kexp_pre),
                                 exp_wr.en.eq(1)]
                with m.Else():
                    m.d.sync += q_exp.eq(qexp_pre)
                m.d.sync += phase.eq(PROJ)
                m.next = "PROJ"
            with m.State("PROJ"):
                # beat (j, cb): S/M block cb against W[., j] block cb
                with m.If(issuing):
                    m.d.comb += [dat_addr.eq(inner), w_addr.eq(base_o + inner),
                                 issue.valid.eq(1), issue.first.eq(first_i), issue.last.eq(last_i),
                                 issue.copy.eq((op == Op.WRITE) & (outer == 0)),
                                 issue.lim.eq(lim(c.d, inner, CB)), issue.phase.eq(PROJ),
                                 issue.tag.eq(sub_w | (sub_l << 16)),
                                 issue_copy_addr.eq(mslot_base + inner), inc.eq(last_i)]
                    # the tag is the result's (word, lane) in q's layout (K's place: key_place)
                    sub_wrap = sub_l == P - 1
                    advance([base_o.eq(base_o + CB),
                             sub_l.eq(Mux(sub_wrap, 0, sub_l + 1)),
                             sub_w.eq(Mux(sub_wrap, sub_w + 1, sub_w))], [])
                with m.Elif(pending_zero):
                    with m.If(op == Op.WRITE):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "SCORE_START"
            with m.State("ROW"):
                # attention: next query row a
                m.d.sync += [keep_lim.eq(a + n_keys - n_q),
                             base_o.eq(a * AB), inner.eq(0), issuing.eq(1)]
                m.next = "QLOAD"
            with m.State("QLOAD"):
                # Q row a into qbuf (AB words, sign-extended), so that the scores read K rows
                # through the one port of ``dat`` while Q comes from qbuf as in a recall
                m.d.sync += q_exp.eq(self._vexp_q.data)
                with m.If(issuing):
                    m.d.comb += [dat_addr.eq(base_o + inner), ql_issue.valid.eq(1), ql_issue.idx.eq(inner)]
                    with m.If(inner == AB - 1):
                        m.d.sync += issuing.eq(0)
                    m.d.sync += inner.eq(inner + 1)
                with m.Elif(~Cat(*(t.valid for t in ql_taps)).any()):
                    m.next = "SCORE_START"
            with m.State("SCORE_START"):
                m.d.sync += [outer.eq(0), inner.eq(0), outer_last.eq(n_keys - 1),
                             inner_last.eq(Mux(attn, AB - 1, KB - 1)),
                             base_o.eq(Mux(attn, MQ * AB, 0)), base_i.eq(0),
                             score_max.eq(-(1 << (fixed.SCORE_BITS - 1))), issuing.eq(1), phase.eq(SCORE)]
                m.next = "SCORE"
            with m.State("SCORE"):
                # beat (b, blk): q block blk against K_b block blk
                with m.If(issuing):
                    # recall: key word kb is half kb % 2 of q's word kb // 2 (key_place)
                    if KP == P:
                        m.d.comb += issue.qaddr.eq(inner)
                    else:
                        m.d.comb += [issue.qaddr.eq(Mux(attn, inner, inner >> 1)),
                                     issue.qhi.eq(~attn & inner[0])]
                    q_word = inner if KP == P else inner >> 1
                    m.d.comb += [key_addr.eq(base_o + inner),
                                 dat_addr.eq(base_o + inner),
                                 issue.valid.eq(1), issue.first.eq(first_i), issue.last.eq(last_i),
                                 issue.lim.eq(Mux(attn, lim(c.head_dim, inner, AB), lim(c.d_h, q_word, HB))),
                                 issue.phase.eq(SCORE), issue.tag.eq(outer), inc.eq(last_i)]
                    advance([base_o.eq(base_o + Mux(attn, AB, KB))], [])
                with m.Elif(pending_zero):
                    # (the EXP and PROB passes run over keys 0..n_keys-1)
                    m.d.sync += [inner.eq(0), inner_last.eq(n_keys - 1), exp_sum.eq(0),
                                 big_e.eq(-(1 << (EXP_W - 1))), issuing.eq(1)]
                    m.next = "EXP"
            with m.State("EXP"):
                # e_b = round_shift(LUT[v & 255], v >> 8) for v = max - t_b (0 past the cutoff)
                with m.If(issuing):
                    # the value exponent is registered (exB.ve) before E = max over kept keys
                    m.d.comb += [self._sc_r.addr.eq(inner), ex_issue.valid.eq(1),
                                 ex_issue.idx.eq(inner), ex_issue.keep.eq(keep_inner), inc.eq(1)]
                    with m.If(inner == inner_last):
                        m.d.sync += issuing.eq(0)
                    m.d.sync += inner.eq(inner + 1)
                with m.Elif(pending_zero):
                    m.d.comb += [recip.i.valid.eq(1), recip.i.payload.eq(exp_sum)]
                    m.next = "DIV"
            with m.State("DIV"):
                with m.If(recip.o.valid):
                    m.d.sync += [rcp.eq(recip.o.payload), inner.eq(0), issuing.eq(1)]
                    m.next = "PROB"
            with m.State("PROB"):
                with m.If(issuing):
                    m.d.comb += [self._sc_r.addr.eq(inner), pr_issue.valid.eq(1), pr_issue.idx.eq(inner),
                                 pr_issue.keep.eq(keep_inner), inc.eq(1)]
                    with m.If(inner == inner_last):
                        m.d.sync += issuing.eq(0)
                    m.d.sync += inner.eq(inner + 1)
                with m.Elif(pending_zero):
                    # a single key gets a second beat of weight 0: the two writes of a result word
                    # (low, high bytes) need results at least two cycles apart
                    m.d.sync += [outer.eq(0), inner.eq(0), outer_last.eq(Mux(attn, AB - 1, CB - 1)),
                                 inner_last.eq(Mux(single, 1, n_keys - 1)), base_o.eq(0),
                                 base_i.eq(Mux(attn, (MQ + MK) * AB, MEM_BASE)), issuing.eq(1), phase.eq(WSUM)]
                    m.next = "WSUM"
            with m.State("WSUM"):
                # beat (blk, b): lane l accumulates w_b * V_b[blk*P + l]
                with m.If(issuing):
                    m.d.comb += [wm_addr.eq(inner), dat_addr.eq(base_i + outer),
                                 issue.valid.eq(1), issue.first.eq(first_i), issue.last.eq(last_i),
                                 issue.lane_mode.eq(1), issue.lim.eq(P), issue.phase.eq(WSUM),
                                 issue.zero.eq(single & ~first_i),
                                 issue.tag.eq(a * AB + outer), inc.eq(last_i)]
                    advance([base_i.eq(Mux(attn, (MQ + MK) * AB, MEM_BASE))],
                            [base_i.eq(base_i + Mux(single, 0, Mux(attn, AB, CB)))])
                with m.Elif(pending_zero):
                    m.d.sync += [oexp_wr.addr.eq(a), oexp_wr.en.eq(1),
                                 oexp_wr.data.eq(big_e - (fixed.PROB_BITS - fixed.OUT_SHIFT))]
                    with m.If(attn & a_more):
                        m.d.sync += [a.eq(a + 1), a_more.eq(a + 2 < n_q)]
                        m.next = "ROW"
                    with m.Else():
                        m.next = "DONE"
            with m.State("DONE"):
                with m.If(done_r):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        m.d.sync += done_r.eq(fsm.ongoing("DONE") & ~done_r & ~writes_in_flight_next)
        m.d.comb += self.done.eq(done_r)

        # --- stage 4: operands into the MAC ---------------------------------------------------
        mi = mac.i.payload
        m.d.comb += [mac.i.valid.eq(s4_valid), mi.first.eq(s4.first), mi.last.eq(s4.last),
                     mi.lane_mode.eq(s4.lane_mode), mi.tag.eq(s4.tag)]
        for l in range(P):
            sel = s4_sel[l // LG]
            g_phase, g_lim = sel[:3], sel[3:3 + len(s2.lim)]
            g_qhi, g_zero, g_attn = sel[-3], sel[-2], sel[-1]
            on = l < g_lim
            with m.Switch(g_phase):
                with m.Case(PROJ):
                    m.d.comb += [mi.a[l].eq(Mux(on, dat_q3[l], 0)), mi.b[l].eq(w_q3[l])]
                with m.Case(SCORE):
                    # recall: lane l takes part in the beats of its half (g_qhi), with its key lane
                    half, k = self.key_place(l)
                    in_beat = g_attn | (g_qhi if half else ~g_qhi) if KP != P else 1
                    m.d.comb += [mi.a[l].eq(Mux(on & in_beat, q_op[l], 0)),
                                 mi.b[l].eq(Mux(g_attn, dat_q3[l], key_q3[k]))]
                with m.Case(WSUM):
                    m.d.comb += [mi.a[l].eq(Mux(g_zero, 0, wm_q3[l // LG].as_signed())),
                                 mi.b[l].eq(dat_q3[l])]
        # WRITE: M_i is copied into its slot while the first column of K_i is projected
        # (the data multiplexer of ``dat``'s write port selects per lane group, from copies of
        # the write's kind: M copy, result low bytes, result high bytes)
        copy_now = s2_valid & s2.copy
        with m.If(copy_now):
            m.d.comb += [dat_w.addr.eq(s2_copy_addr), dat_w.en.eq((1 << P) - 1)]

        # --- MAC results ---------------------------------------------------------------------
        # Every phase drains before the next starts, so `phase` names the owner of a result.
        mo = mac.o.payload
        dec_proj, dec_score, dec_wsum, dec_ex, dec_pr = (Signal(name=f"dec_{n}") for n in
                                                          ("proj", "score", "wsum", "ex", "pr"))
        m.d.comb += dec.eq(dec_proj | dec_score | dec_wsum | dec_ex | dec_pr)

        # projection: y = sat16(round_shift(acc, shift)) into lane j%P of word j//P
        m.d.comb += [proj_rq.i.valid.eq(mac.o.valid & (phase == PROJ)),
                     proj_rq.i.payload.x.eq(mo.dot),
                     proj_rq.i.payload.s.eq(Mux(op == Op.WRITE, self.wk_shift, self.wq_shift)),
                     proj_rq.i.payload.tag.eq(mo.tag)]
        pw, plane = proj_rq.o.payload.tag[:16], proj_rq.o.payload.tag[16:24]
        m.d.comb += [key_w.data[l].eq(proj_rq.o.payload.y) for l in range(KP)]
        k_lane = self.key_place(plane[:max(1, (P - 1).bit_length())])[1]
        with m.If(proj_rq.o.valid):
            m.d.comb += dec_proj.eq(1)
            with m.If(op == Op.WRITE):
                m.d.comb += [key_w.addr.eq(kslot_base + self.key_word(pw, plane)),
                             key_w.en.eq(Const(1, KP) << k_lane)]
        # q's element lands in qbuf a cycle later, from a copy per lane group of (write, word,
        # lane, value): the value would otherwise go to every one of the P x QD registers
        qa_bits = max(1, (QD - 1).bit_length())
        lane_bits = max(1, (P - 1).bit_length())
        q_wr = replicate(m, Cat(proj_rq.o.valid & (op != Op.WRITE), pw[:qa_bits], plane[:lane_bits],
                                proj_rq.o.payload.y), G, "q_wr", reset=True)
        # attention: the Q row's words, from dat_q, at ql2 (copies per group of ql1's valid, word)
        ql_wr = replicate(m, Cat(ql1.valid, ql1.idx), G, "ql_wr", reset=True)
        for l in range(P):
            g = l // LG
            qv, qw, ql, qy = (q_wr[g][0], q_wr[g][1:1 + qa_bits], q_wr[g][1 + qa_bits:1 + qa_bits + lane_bits],
                              q_wr[g][1 + qa_bits + lane_bits:])
            lv, lw = ql_wr[g][0], ql_wr[g][1:]
            for w in range(QD):
                with m.If(lv & (lw == w)):
                    m.d.sync += qbuf[w][l].eq(dat_q[l])
                with m.Elif(qv & (qw == w) & (ql == l)):
                    m.d.sync += qbuf[w][l].eq(qy.as_signed())

        # scores: t = shift_round_sat(acc * mult, shift - 8 - q_exp - k_exp[b], 32)
        b_res = mo.tag[:16]
        # k_exp of key b: read with the result's tag, there at sc0 (the tables' synchronous read)
        m.d.comb += [self._kexp_r.addr.eq(b_res), self._vexp_k.addr.eq(b_res)]
        ke0 = Mux(attn, self._vexp_k.data, self._kexp_r.data)
        # acc * mult (mult < 2^16) as three 17-bit slices of acc, one MULT18X18D each with a
        # register after it (sc0), summed in the next stage (sc1)
        assert max(sm[0] for sm in score_mult) < (1 << 17) and fixed.ACC_BITS <= 51
        sc0_valid = Signal()
        sc0_p = [Signal(signed(36), name=f"sc0_p{k}", reset_less=True) for k in range(3)]
        sc0_tag = Signal(24, reset_less=True)
        sc1_valid = Signal()
        sc1_x = Signal(signed(64), reset_less=True)
        sc1_s = Signal(signed(MASK_W), reset_less=True)
        sc1_tag = Signal(24, reset_less=True)
        mult = Mux(attn, score_mult[1][0], score_mult[0][0])
        sshift = Mux(attn, score_mult[1][1], score_mult[0][1])
        dot_sl = [mo.dot[0:17], mo.dot[17:34], mo.dot[34:].as_signed()]
        # shift - 8 - q_exp, registered (q_exp is fixed long before the first score)
        sc_base = Signal(signed(EXP_W + 8), reset_less=True)
        m.d.sync += sc_base.eq(sshift - fixed.SCORE_FRAC - q_exp)
        m.d.sync += [sc0_valid.eq(mac.o.valid & (phase == SCORE)), sc0_tag.eq(mo.tag)]
        m.d.sync += [sc0_p[k].eq(dot_sl[k] * mult) for k in range(3)]
        m.d.sync += [sc1_valid.eq(sc0_valid),
                     sc1_x.eq((sc0_p[2] << 34) + (sc0_p[1] << 17) + sc0_p[0]),
                     sc1_s.eq(sc_base - ke0), sc1_tag.eq(sc0_tag)]
        m.d.comb += [score_rq.i.valid.eq(sc1_valid), score_rq.i.payload.x.eq(sc1_x),
                     score_rq.i.payload.s.eq(sc1_s), score_rq.i.payload.tag.eq(sc1_tag)]
        t_b = score_rq.o.payload.y
        b_out = score_rq.o.payload.tag[:16]
        with m.If(score_rq.o.valid):
            m.d.comb += [dec_score.eq(1), self._sc_w.addr.eq(b_out), self._sc_w.data.eq(t_b),
                         self._sc_w.en.eq(1)]
        # the running maximum one cycle behind the scores: the kept score is registered first, so
        # the compare with score_max starts from flip-flops (the EXP pass reads score_max no
        # sooner than four cycles after the last score: pending, state change, issue, ex1)
        smax_ok = Signal()
        smax_t = Signal.like(t_b, reset_less=True)
        m.d.sync += [smax_ok.eq(score_rq.o.valid & (~(attn & causal) | (b_out.as_signed() <= keep_lim))),
                     smax_t.eq(t_b)]
        with m.If(smax_ok & (smax_t > score_max)):
            m.d.sync += score_max.eq(smax_t)

        # weighted sum: out = sat16(round_shift(acc, OUT_SHIFT)) per lane, a whole word at once,
        # written as its low bytes, then (next cycle, from a register) its high bytes
        hi, lo = (1 << (fixed.OUT_BITS - 1)) - 1, -(1 << (fixed.OUT_BITS - 1))
        # The rounded word is registered (res), its low bytes are written the cycle after and its
        # high bytes the cycle after that; results come >= 2 cycles apart, so res holds still.
        res = Signal(data.ArrayLayout(signed(16), P), reset_less=True)
        res_addr = Signal(range(self.dat.depth), reset_less=True)
        # ``res`` loads every cycle: the MAC's lane outputs hold still until its next result, which
        # comes two or more cycles later, so the word is unchanged for both writes (and no enable
        # fans out to its P x 16 registers).
        res_lo, res_hi = Signal(), Signal()
        res_now = mac.o.valid & (phase == WSUM)
        m.d.sync += [res_lo.eq(res_now), res_hi.eq(res_lo)]
        with m.If(res_now):
            m.d.sync += res_addr.eq(OUT_BASE + 2 * mo.tag[:16])
        for l in range(P):
            r = (mo.lanes[l] + (1 << (fixed.OUT_SHIFT - 1))) >> fixed.OUT_SHIFT
            m.d.sync += res[l].eq(Mux(r > hi, hi, Mux(r < lo, lo, r)))
        with m.If(res_lo):
            m.d.comb += [dat_w.addr.eq(res_addr), dat_w.en.eq((1 << P) - 1)]
        with m.If(res_hi):
            m.d.comb += [dec_wsum.eq(1), dat_w.addr.eq(res_addr | 1), dat_w.en.eq((1 << P) - 1)]
        wsel = replicate(m, Cat(res_now, res_lo, s1_valid & s1.copy), G, "dat_wsel")
        for l in range(P):
            g_lo, g_hi, g_copy = (wsel[l // LG][k] for k in range(3))
            with m.If(g_lo):
                m.d.comb += dat_w.data[l].eq(res[l][:8])
            with m.Elif(g_hi):
                m.d.comb += dat_w.data[l].eq(res[l][8:16])
            with m.Elif(g_copy):
                m.d.comb += dat_w.data[l].eq(dat_q[l])

        # --- exp2 pass: stage A registers t from the RAM, B forms v = max - t, C reads the LUT,
        # D registers it, then e = round_shift(LUT[v & 255], v >> 8) (0 past the cutoff or for a masked key)
        exA = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1, "t": signed(fixed.SCORE_BITS)}))
        exB = Signal(data.StructLayout({"valid": 1, "idx": 16, "live": 1, "r": fixed.SCORE_FRAC, "n": 4,
                                        "keep": 1, "ve": signed(8)}))
        exC = Signal(data.StructLayout({"valid": 1, "idx": 16, "live": 1, "lut": fixed.EXP2_BITS + 1, "n": 4}))
        v = Signal(signed(fixed.SCORE_BITS + 2))
        m.d.comb += v.eq(score_max - exA.t)
        n_int = v >> fixed.SCORE_FRAC
        m.d.comb += self._lut_r.addr.eq(exB.r)
        exD = Signal.like(exC)      # the table value registered (it maps to a block RAM)
        m.d.sync += exD.eq(exC)
        e_val = (exD.lut + ((Const(1, 16) << exD.n) >> 1)) >> exD.n
        with m.If(exB.valid & exB.keep & (exB.ve > big_e)):
            m.d.sync += big_e.eq(exB.ve)
        m.d.sync += [exA.valid.eq(ex1.valid), exA.idx.eq(ex1.idx), exA.keep.eq(ex1.keep),
                     exA.t.eq(self._sc_r.data),
                     exB.valid.eq(exA.valid), exB.idx.eq(exA.idx), exB.keep.eq(exA.keep), exB.ve.eq(ve2),
                     exB.live.eq(exA.keep & (n_int < fixed.EXP2_CUTOFF)),
                     exB.r.eq(v[:fixed.SCORE_FRAC]), exB.n.eq(n_int[:4]),
                     exC.valid.eq(exB.valid), exC.idx.eq(exB.idx), exC.live.eq(exB.live),
                     exC.lut.eq(self._lut_r.data), exC.n.eq(exB.n),
                     ex2.valid.eq(exD.valid), ex2.idx.eq(exD.idx), ex2.e.eq(Mux(exD.live, e_val, 0))]
        with m.If(ex2.valid):
            m.d.comb += [dec_ex.eq(1), self._sc_w.addr.eq(ex2.idx), self._sc_w.data.eq(ex2.e),
                         self._sc_w.en.eq(1)]
            m.d.sync += exp_sum.eq(exp_sum + ex2.e)

        # --- probability pass: p = min(round_shift(e * r, 25), 32767), w = round_shift(p, align)
        # (stage A registers e from the RAM so the multiplier starts from a flip-flop; stage M
        # the value exponent from its table, and the alignment follows in stage 2)
        prA = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1, "e": 16}))
        pshift = fixed.RECIP_BITS - fixed.PROB_BITS
        m.d.sync += [prA.valid.eq(pr1.valid), prA.idx.eq(pr1.idx), prA.keep.eq(pr1.keep),
                     prA.e.eq(self._sc_r.data[:16])]
        # e * r as two DSP products (r's low 17 bits, its high 9), each registered (prM), then
        # summed into pr2: a 16 x 26 multiply does not fit one MULT18X18D
        prM = Signal(data.StructLayout({"valid": 1, "idx": 16, "keep": 1, "ve": signed(8),
                                        "lo": 33, "hi": 25}))
        m.d.sync += [prM.valid.eq(prA.valid), prM.idx.eq(prA.idx), prM.keep.eq(prA.keep), prM.ve.eq(ve2),
                     prM.lo.eq(prA.e * rcp[:17]), prM.hi.eq(prA.e * rcp[17:])]
        ediff = big_e - prM.ve
        m.d.sync += [pr2.valid.eq(prM.valid), pr2.idx.eq(prM.idx), pr2.keep.eq(prM.keep),
                     pr2.align.eq(Mux(ediff > fixed.ALIGN_CUTOFF, fixed.ALIGN_CUTOFF, ediff)),
                     pr2.prod.eq((prM.hi << 17) + prM.lo)]
        p_val = (pr2.prod + (1 << (pshift - 1))) >> pshift
        m.d.sync += [pr3.valid.eq(pr2.valid), pr3.idx.eq(pr2.idx), pr3.keep.eq(pr2.keep),
                     pr3.align.eq(pr2.align),
                     pr3.p.eq(Mux(p_val > fixed.PROB_MAX, fixed.PROB_MAX, p_val))]
        w_val = (pr3.p + ((Const(1, 17) << pr3.align) >> 1)) >> pr3.align
        with m.If(pr3.valid):
            m.d.comb += [dec_pr.eq(1),
                         self._pm_w.addr.eq(pr3.idx), self._pm_w.data.eq(pr3.p), self._pm_w.en.eq(1)]
        # the weight goes into wm from a register (the rounding shift reached wm's block RAM
        # late); WSUM's first read of wm is several cycles after pending drops to 0
        wm_wr = Signal(data.StructLayout({"addr": len(self._wm_w.addr), "data": 16, "en": 1}))
        m.d.sync += [wm_wr.addr.eq(pr3.idx), wm_wr.data.eq(Mux(pr3.keep, w_val, 0)), wm_wr.en.eq(pr3.valid)]
        m.d.comb += [self._wm_w.addr.eq(wm_wr.addr), self._wm_w.data.eq(wm_wr.data), self._wm_w.en.eq(wm_wr.en)]

        return m
