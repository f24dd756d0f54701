"""What every part of an engine shares: the sizes and places of the buffers
(:class:`EngineLayout`), the operation codes (:class:`Op`), the key words' lane layout, the
lane-group regions of the die, and :func:`delay`, the register chain that every pipeline of
the lane engine is built from.

Both engines (:class:`~hmtx.hw.engine.Engine`, :class:`~hmtx.hw.serial_engine.SerialEngine`)
and every unit of the lane engine (``hw/engine_*.py``) import from here, so that the units need
not import the engine that instantiates them; ``hmtx.hw.engine`` re-exports it all.
"""

from amaranth.hdl import Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed
from hmtx.model.configs import EngineConfig

__all__ = ["EXP_W", "SHIFT_W", "MASK_W", "TAG_BITS", "PROJ_TAG", "SCORE_TAG", "LANE_TAG", "W_ROW_DEPTH", "ADDR_REGS", "ceil_div",
           "delay", "block_lanes", "key_block_lanes", "lane_group_regions", "lane_group_chain", "Region", "Rows", "Op", "Phase", "EngineLayout",
           "EngineSignature", "CONTROL_MEMBERS", "row_scalars_layout", "ROW_SCALAR_BYTES"]

EXP_W = 12          # internal exponents (sums of a few 7-bit BFP exponents and a shift)
SHIFT_W = 5         # projection shifts 0..31 (protocol SHIFT_MAX)
MASK_W = 12         # score shifts before clamping: shift - 8 - qe - ke, |.| < 2^11
TAG_BITS = 24       # a MAC beat's tag: its result's place (hw/engine_sequencer.py)

# Words per block-RAM row of ``w``: a DP16KD's depth at its widest (36-bit) port.
W_ROW_DEPTH = 512
# Read address registers before the block RAMs: one by the sequencer, one that hmtx.hw.flow.netlist
# copies once per region of the die, one it copies next to each cluster of block RAMs (the long
# way across the die is register to register, and no hop spans more than about half of it).
ADDR_REGS = 3

# a projection beat's tag: the result's word and lane in q's layout (K's place follows from it)
PROJ_TAG = data.StructLayout({"word": 16, "lane": TAG_BITS - 16})
# a score beat's tag: the key; whether the row keeps it (the causal mask); the row's bank of
# ``sc`` (attention rows alternate, so that one row's scores are written while the row before
# is in the softmax); the row's last key. A weighted-sum beat's tag: the result word, and
# ``LANE_TAG`` set (score and weighted-sum beats of different rows share the pipeline: the tag,
# not the sequencer's phase, says whose a result is).
SCORE_TAG = data.StructLayout({"key": 16, "keep": 1, "bank": 1, "last": 1})
LANE_TAG = TAG_BITS - 1


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


def block_lanes(n_total, blk, nblk, width):
    """The lanes of block ``blk`` (of ``nblk`` blocks of ``width`` lanes over ``n_total``
    elements) that hold elements: the rest of a partial last block are forced to zero."""
    rem = n_total - (nblk - 1) * width
    return Mux(blk == nblk - 1, rem, width)


def key_block_lanes(P: int) -> int:
    """KBL, the block of lanes in which key words interleave q's two halves (EngineLayout.key_place):
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


def lane_group_chain(G: int) -> list:
    """The ``G`` lane groups in an order in which each sits next to the one before on the
    LFE5U-85F floorplan (:func:`lane_group_regions`): the even groups (one end of the block-RAM
    rows) row by row, then the odd ones (the other end) back. A chain of registers through the
    groups in this order (hw/engine_fold.py) crosses the die once, not at every step."""
    def place(g):
        row, stack = (g // 2) % 4, g // 8
        return (g % 2, row, stack) if g % 2 == 0 else (g % 2, -row, -stack)
    return sorted(range(G), key=place)


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


class Op(enum.IntEnum, shape=2):
    """The engine's operations (``EngineSignature.op``). Plain integers too (an ``IntEnum``), as
    the command processor and the testbenches use them."""
    WRITE = 0
    RECALL = 1
    ATTENTION = 2
    ATTN_PASS = 3       # one pass of long attention rows over a key tile (protocol 1.3 / 2.2)


class Phase(enum.Enum, shape=3):
    """Which MAC phase a beat belongs to: the operand fetch picks the lanes' operands by it, and
    the MAC's results go to the unit that owns the phase (every phase drains before the next
    begins, so the sequencer's phase register names the owner of every result in flight)."""
    NONE = 0
    PROJ = 1        # projections: q = W_q^T S (RECALL), K_i = W_k^T M_i (WRITE)
    SCORE = 2       # scores q . K_b (RECALL) or Q_a . K_b (ATTENTION)
    WSUM = 3        # the weighted sum of the values, lane mode
    FOLD = 4        # contract 2's WRITE: K'_i = W_q K_i, lane mode (hw/engine_fold.py)


class EngineLayout:
    """What the command processor (hw/top.py) relies on in every engine: the sizes, the places of
    the buffers in ``dat`` and the key words' lane layout. :class:`~hmtx.hw.engine.Engine` and
    :class:`~hmtx.hw.serial_engine.SerialEngine` share it, so either serves the same top."""

    def _set_layout(self, c: EngineConfig, contract: int = 1, attn_pass: bool = True):
        if contract not in (1, 2):
            raise ValueError(f"contract must be 1 or 2, got {contract!r}")
        self.config, self.contract = c, contract
        P = self.P = c.lanes
        self.CB, self.HB, self.AB = ceil_div(c.d, P), ceil_div(c.d_h, P), ceil_div(c.head_dim, P)
        self.KP = P // 2 if P % 2 == 0 else P
        # lane groups: the lane array's controls are registered once per group of LG lanes
        # (hw/fanout.py), so that no register drives all P lanes
        self.LG = min(P, 8)
        self.G = ceil_div(P, self.LG)
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
        # ``wm``'s depth: the weights; contract 2's fold beats also take K_i's elements from there
        self.WMD = max(self.KMAX, c.d_h if contract == 2 else 1)
        self.ROWS = c.max_queries + 2 * c.max_keys
        for name, v in (("d", c.d), ("d_h", c.d_h), ("head_dim", c.head_dim)):
            if v > fixed.D_MAX:
                raise ValueError(f"config {c.name!r}: {name}={v} exceeds fixed.D_MAX={fixed.D_MAX}")
        if self.KMAX > fixed.KEYS_MAX:
            raise ValueError(f"config {c.name!r}: {self.KMAX} keys exceed fixed.KEYS_MAX")
        self.vin_depth = max(self.CB, self.ROWS * self.AB)
        self.out_words = max(self.CB, c.max_queries * self.AB)
        self.out_base = self.vin_depth + (self.vin_depth & 1)   # even: a result's high-byte word is base | 1
        # ATTN_PASS's pass 3 carries each row's accumulators between key tiles as three int8
        # words per block (fixed.carry_digits): word part_base + 3*(row*AB + blk) + k (an engine
        # without ATTN_PASS, ``attn_pass=False``, has no such region)
        self.attn_pass = attn_pass
        self.part_base = self.out_base + 2 * self.out_words
        self.mem_base = self.part_base + (3 * c.max_queries * self.AB if attn_pass else 0)
        # contract 2: the folded keys K'_i (BFP8 like M_i, word kf_base + i*CB + cb) after the M ring
        self.kf_base = self.mem_base + c.n_slots * self.CB
        self.dat_depth = self.kf_base + (c.n_slots * self.CB if contract == 2 else 0)
        # qbuf's words: q (HB) or a Q row (AB, one QLOAD); contract 2's recall has S (CB) there
        # instead of q, copied in as the owner writes it (hw/engine_fetch.py)
        self.QD = max(self.HB, self.AB) if contract == 1 else max(self.AB, self.CB)

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


# ATTN_PASS's per-row scalars as the frame carries them (pass 2: m; pass 3: m, E, sum), bytes
# 0..3 m (little-endian), 4 E, 5..8 sum (docs/protocol.md section 10)
ROW_SCALAR_BYTES = 9


def row_scalars_layout():
    """One query row's scalars of ATTN_PASS: what the host sends (pass 2: m; pass 3: m, E, sum)
    and what the engine answers (pass 1: m, E; pass 2: sum)."""
    return data.StructLayout({"m": signed(32), "e": signed(8), "sum": unsigned(32)})


class EngineSignature(wiring.Signature):
    """The engine as the command processor (hw/top.py) sees it, either kind: the operation and
    its operands, busy/done, and -- while idle -- the owner's writes of the input buffer, the
    weights and the row exponents, and its reads of every result and of the cache.

    Reads: ``rd_dat_data``/``rd_key_data`` are the words at ``rd_dat_addr``/``rd_key_addr`` of
    the engine's ``READ_LATENCY`` cycles before (the block RAM's output itself, to be registered
    before any logic looks at it); ``rd_pm_data``, ``rd_mexp_data``, ``rd_kexp_data`` come one
    cycle after their address (synchronous reads); ``rd_oexp_data`` in the same cycle. (The
    owner reads ``dat`` and ``key`` through the engine's own read ports: a second read port
    would make Yosys duplicate these block RAMs.)

    ATTN_PASS (``op`` = :attr:`Op.ATTN_PASS`; an engine without it leaves these unconnected and
    the top never starts it): ``apass`` the pass (1..3), ``afirst``/``alast`` pass 3's flags,
    ``diag`` (with ``causal``: query a keeps key b iff ``b <= a + diag``), ``n_q``/``n_keys`` as
    for ATTENTION. The per-row scalars are written by the owner a byte at a time as the frame
    carries them (``wr_rs_*``: row, byte 0..8 of :data:`ROW_SCALAR_BYTES`) and read back one cycle
    after ``rd_rs_addr`` (``rd_rs_data``, :func:`row_scalars_layout`): pass 1 leaves each row's m
    and E there, pass 2 its sum; pass 3 with ``alast`` leaves the output rows where ATTENTION
    does."""

    def __init__(self, layout: EngineLayout):
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
            "apass": In(2), "afirst": In(1), "alast": In(1), "diag": In(signed(16)),
            "wr_rs_addr": In(range(c.max_queries)), "wr_rs_byte": In(range(ROW_SCALAR_BYTES)),
            "wr_rs_data": In(8), "wr_rs_en": In(1),
            "rd_rs_addr": In(range(c.max_queries)), "rd_rs_data": Out(row_scalars_layout()),
        })


# The members of EngineSignature that the lane engine's sequencer serves itself (the rest reach the
# memories' owners: the write-back, the exponent tables, the softmax).
CONTROL_MEMBERS = ("start", "op", "slot", "n_keys", "n_q", "causal", "busy", "done", "rd_dat_addr",
                   "rd_key_addr", "apass", "afirst", "alast", "diag")
