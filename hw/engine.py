"""The lane engine: memories, the MAC lane array and the units that compute with them (WRITE,
RECALL and ATTENTION), bit-exact with ``hmtx.model.fixed``.

:class:`Engine` instantiates the units and connects them; each is a component of its own file:

* :class:`~hmtx.hw.engine_sequencer.Sequencer` -- the state machine, counters and beat issue;
* :class:`~hmtx.hw.engine_fetch.OperandFetch` -- the block RAMs' read side, the pipeline stages
  to the MAC, ``qbuf`` and the lanes' operand multiplexers;
* :class:`~hmtx.hw.mac.MacArray` -- the P multipliers, adder tree and accumulators;
* :class:`~hmtx.hw.engine_score.ScoreUnit` -- score scale, requantization, running maximum;
* :class:`~hmtx.hw.engine_softmax.Softmax` -- exp2 pass, reciprocal, probability pass
  (owns ``sc``, ``pm``, ``wm``, ``lut``);
* :class:`~hmtx.hw.engine_writeback.WriteBack` -- projection and weighted-sum results into
  ``key``/``qbuf``/``dat``, WRITE's copy of M_i, the owner's writes of ``dat``;
* :class:`~hmtx.hw.engine_exponents.ExponentTables` -- ``vexp``, ``mexp``, ``kexp``, ``oexp``;
* :class:`~hmtx.hw.engine_fold.FoldUnit` -- contract 2 only: the folded keys K'_i = W_q K_i;
* :class:`~hmtx.hw.engine_rows.RowScalars` -- ATTN_PASS's per-row m, E and sum.

The layout every engine shares (:class:`EngineLayout`, :class:`Op`, :func:`delay`, ...) is in
``hw/engine_layout.py`` and re-exported here.
"""

from amaranth.hdl import Module, signed
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In

from hmtx.model import fixed
from hmtx.model.configs import EngineConfig

from .engine_exponents import ExponentTables
from .engine_fetch import OperandFetch
from .engine_fold import FoldUnit
from .engine_rows import RowScalars
from .engine_layout import (ADDR_REGS, CONTROL_MEMBERS, LANE_TAG, EXP_W, MASK_W, SHIFT_W, TAG_BITS, W_ROW_DEPTH,
                            EngineLayout, EngineSignature, Op, Phase, Region, Rows, ceil_div, delay,
                            key_block_lanes, lane_group_regions)
from .engine_score import ScoreUnit
from .engine_sequencer import Sequencer
from .engine_softmax import Softmax
from .engine_writeback import WriteBack
from .mac import LANE_ACC_BITS, MacArray

__all__ = ["Op", "Phase", "Engine", "EngineLayout", "EngineSignature", "Region", "Rows", "key_block_lanes",
           "lane_group_regions", "delay", "ceil_div", "EXP_W", "SHIFT_W", "MASK_W", "TAG_BITS",
           "W_ROW_DEPTH", "ADDR_REGS"]


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
      (flip-flop tables, :class:`~hmtx.hw.regtable.RegisterTable`, read synchronously; the
      exponent tables' unit's, :class:`~hmtx.hw.engine_exponents.ExponentTables`).
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
    * ``qbuf`` (the operand fetch's): q = W_q^T S, or the current attention query row (P x int16
      words; a few words, so flip-flops per lane group rather than a memory); ``sc``: scores t
      then exp2 terms e; ``pm``: probabilities; ``wm``: exponent-aligned weights (the softmax's:
      :class:`~hmtx.hw.engine_softmax.Softmax`); ``oexp``: the result exponents.

    ``dat``, ``key`` and the rows of ``w`` are the engine's own, handed to the units as memory
    ports: the floorplan (hw/flow/floorplan.py) finds their block RAMs by name as ``engine.dat``,
    ``engine.key``, ``engine.w<r>``, and ``dat`` and ``key`` are shared by the operand fetch,
    the write-back and the owner. Every other memory is its unit's; the engine keeps
    attributes of the same names (``vexp``, ``sc``, ``pm`` ...) for testbenches.

    The owner (the command processor) reaches the memories only through the members of
    :class:`EngineSignature`, while the engine is idle.

    ``contract`` (1 or 2) is the arithmetic contract (docs/arithmetic.md section 10). Contract 2
    adds a region ``kf`` to ``dat`` after the M ring (K'_i at word ``kf_base + i*CB + cb``, int8
    like M_i), keeps K'_i's exponent in ``kexp``, deepens ``wm`` to ``max(KMAX, d_h)`` (the fold
    beats' scalar K_i[j]) and ``qbuf`` to ``max(HB, AB, CB)`` words (S, for the recall's scores,
    copied there as the owner writes it).
    It has no ``key`` ring (``key`` is None, ``rd_key_data`` reads 0): no contract-2 recall
    reads K_i, and the ring's block RAM pays for K' in ``dat``. A WRITE computes K_i as in
    contract 1 (into ``wm`` only), then K'_i in two passes of ``CB x d_h`` lane-mode beats
    (:meth:`~hmtx.hw.engine_sequencer.Sequencer._fold`, :class:`~hmtx.hw.engine_fold.FoldUnit`):
    about ``3 x d_h x CB`` beats in all. A RECALL finds S in ``qbuf``, scores it
    against the n folded keys in ``dat`` (``n x CB`` dot beats, the score scale of d_h, exponents
    S's and K'_i's) and runs the softmax and weighted sum as in contract 1: it never reads W_q.

    Sequencing (:class:`~hmtx.hw.engine_sequencer.Sequencer`; one MAC beat per cycle, P lanes):
    projection ``d_h x CB`` beats (dot mode, one output per column j), scores ``n x KB`` beats
    (dot mode; attention ``n_k x AB``), an exp2 pass over the n scores, one ~41-cycle
    reciprocal, a probability pass, and the weighted sum ``CB x n`` beats in lane mode.
    Between phases the sequencer waits until every result of the previous phase is written.

    The data flow between the units is valid-only (``lib.stream`` signatures with
    ``always_ready``, or plain members): nothing in the pipeline stalls, so nothing has a
    ``ready``. The MAC's stream input keeps its ``ready``, which is always high (its output
    is always taken); the MAC's results go to the unit whose phase is in flight.

    Members: :class:`EngineSignature`. ``start`` (a pulse) begins ``op`` (:class:`Op`) with
    the operands beside it, sampled then: ``slot`` (WRITE), ``n_keys`` (RECALL: the fill;
    ATTENTION: n_k), ``n_q`` and ``causal`` (ATTENTION), the weights' exponents and shifts.
    ``done`` pulses when the results are in memory.
    """

    # the owner's members (EngineSignature) that each unit takes, by the same names
    _OWNER = {
        "sequencer": CONTROL_MEMBERS,
        "fetch": ("wr_w_addr", "wr_w_data", "wr_w_en"),
        "writeback": ("wr_dat_addr", "wr_dat_data", "wr_dat_en", "wq_shift", "wk_shift"),
        "exps": ("wq_exp", "wk_exp", "wq_shift", "wk_shift", "wr_vexp_addr", "wr_vexp_data", "wr_vexp_en",
                 "rd_mexp_addr", "rd_mexp_data", "rd_kexp_addr", "rd_kexp_data",
                 "rd_oexp_addr", "rd_oexp_data"),
        "rows": ("wr_rs_addr", "wr_rs_byte", "wr_rs_data", "wr_rs_en", "rd_rs_addr", "rd_rs_data"),
    }

    def __init__(self, config: EngineConfig, w_row_depth: int = W_ROW_DEPTH, contract: int = 1):
        c = config
        if w_row_depth < 1 or w_row_depth & (w_row_depth - 1):
            raise ValueError(f"w_row_depth must be a power of two, got {w_row_depth}")
        self.w_row_depth = w_row_depth
        self._set_layout(c, contract)
        if contract == 2:
            # the fold accumulates int8 x int16 products over d_h terms in the 32-bit lane
            # accumulators, and walks a block one lane group a cycle while the MAC holds it
            if fixed.MANT_MAX * (1 << 15) * c.d_h >= 1 << (LANE_ACC_BITS - 1):
                raise ValueError(f"config {c.name!r}: contract 2 needs d_h <= 515 (lane accumulators), got {c.d_h}")
            if self.G > c.d_h:
                raise ValueError(f"config {c.name!r}: contract 2 needs d_h >= {self.G} lane groups")
        P = self.P
        i8 = data.ArrayLayout(signed(8), P)
        # No read of these memories ever needs the data of a write to the same address in the
        # same cycle (each phase drains before the next reads what it wrote; the owner writes
        # only while the engine is idle). Without this Yosys wraps every block RAM in
        # collision-emulation logic (an address comparator and a bypass register per bit),
        # which sat on the critical path.
        NO_RW = {"no_rw_check": 1}
        # (the lane memories, the engine's own: the floorplan finds them by these names)
        self.dat = memory.Memory(shape=i8, depth=self.dat_depth, init=[], attrs=NO_RW)
        self.vin = Region(self.dat, 0, self.vin_depth)
        self.mem = Region(self.dat, self.mem_base, c.n_slots * self.CB)
        if contract == 2:
            self.kf = Region(self.dat, self.kf_base, c.n_slots * self.CB)
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
        # (contract 2's recall never reads K_i: no key ring, its block RAM goes to K' in ``dat``)
        self.key = (memory.Memory(shape=data.ArrayLayout(signed(16), self.KP), depth=c.n_slots * self.KB,
                                  init=[], attrs=NO_RW) if contract == 1 else None)
        super().__init__(EngineSignature(self))
        self._dat_r = self.dat.read_port()
        self._dat_w = self.dat.write_port(granularity=1)
        self._w_r = [r.read_port() for r in self.w_rows]
        self._w_w = [r.write_port(granularity=1) for r in self.w_rows]
        self._key_r = self.key.read_port() if self.key is not None else None
        self._key_w = self.key.write_port(granularity=1) if self.key is not None else None
        sig = lambda port: None if port is None else port.signature    # noqa: E731

        self.sequencer = Sequencer(self, w_depth)
        self.exps = ExponentTables(self)
        self.softmax = Softmax(self)
        self.fetch = OperandFetch(self, dat_rd=self._dat_r.signature, key_rd=sig(self._key_r),
                                  wm_rd=self.softmax.wm_r.signature, w_rd=[p.signature for p in self._w_r],
                                  w_wr=[p.signature for p in self._w_w], w_row_depth=w_row_depth)
        self.score = ScoreUnit(self)
        self.writeback = WriteBack(self, dat_wr=self._dat_w.signature, key_wr=sig(self._key_w))
        self.rows = RowScalars(self)
        if contract == 2:
            self.fold = FoldUnit(self)
        # the units' memories, for testbenches
        self.vexp, self.mexp, self.kexp, self.oexp = (self.exps.vexp, self.exps.mexp, self.exps.kexp,
                                                      self.exps.oexp)
        self.sc, self.pm, self.wm, self.lut = self.softmax.sc, self.softmax.pm, self.softmax.wm, self.softmax.lut

    # cycles from ``rd_dat_addr``/``rd_key_addr`` to ``rd_dat_data``/``rd_key_data``
    READ_LATENCY = ADDR_REGS + 1

    def elaborate(self, platform):
        m = Module()
        m.submodules.dat = self.dat
        if self.key is not None:
            m.submodules.key = self.key
        for r, mem in enumerate(self.w_rows):
            m.submodules[f"w{r}"] = mem
        m.submodules.mac = mac = MacArray(self.P, tag_bits=TAG_BITS, group_lanes=self.LG)
        seq, fetch, score, softmax, wb, exps = (self.sequencer, self.fetch, self.score, self.softmax,
                                                 self.writeback, self.exps)
        units = ("sequencer", "exps", "fetch", "score", "softmax", "writeback", "rows")
        for name in units + (("fold",) if self.contract == 2 else ()):
            m.submodules[name] = getattr(self, name)
        self._forward_owner(m)
        # the owner reads ``dat`` and ``key`` through the fetch's read ports (the sequencer
        # gives it the owner's addresses while idle)
        # (contract 2: no key ring, rd_key_data reads 0)
        m.d.comb += self.rd_dat_data.eq(self._dat_r.data)
        if self.key is not None:
            m.d.comb += self.rd_key_data.eq(self._key_r.data)

        wiring.connect(m, seq.fetch, fetch.ctl)
        wiring.connect(m, seq.writeback, wb.ctl)
        wiring.connect(m, seq.score, score.ctl)
        wiring.connect(m, seq.softmax, softmax.ctl)
        wiring.connect(m, seq.exps, exps.ctl)
        wiring.connect(m, seq.rows, self.rows.ctl)
        # ATTN_PASS: pass 1 and 2 store the row's maximum, E, sum; passes 2 and 3 take the host's
        m.d.comb += [self.rows.busy.eq(seq.busy), self.rows.score_max.eq(score.scores.max[seq.softmax.ebank]),
                     self.rows.big_e.eq(softmax.big_e), self.rows.exp_sum.eq(softmax.exp_sum),
                     softmax.row.eq(self.rows.cur)]

        wiring.connect(m, fetch.dat_rd, self._dat_r)
        if self.key is not None:
            wiring.connect(m, fetch.key_rd, self._key_r)
            wiring.connect(m, wb.key_wr, self._key_w)
        for r in range(len(self.w_rows)):
            wiring.connect(m, fetch.w_rd[r], self._w_r[r])
            wiring.connect(m, fetch.w_wr[r], self._w_w[r])
        wiring.connect(m, fetch.wm_rd, softmax.wm_rd)
        wiring.connect(m, wb.dat_wr, self._dat_w)

        # The MAC never stalls: every unit takes its results as they come (valid-only), so its
        # output is always ready, and so its input is too (the fetch does not look at it).
        wiring.connect(m, fetch.mac, mac.i)
        m.d.comb += mac.o.ready.eq(1)
        # A projection's and a fold's results are owned by the phase (each drains before the next
        # starts); score and weighted-sum results by the tag (attention rows overlap them)
        lane = mac.o.payload.tag[LANE_TAG]
        rows = (seq.phase == Phase.SCORE) | (seq.phase == Phase.WSUM)
        sinks = [(wb.proj, seq.phase == Phase.PROJ), (score.dot, rows & ~lane), (wb.wsum, rows & lane)]
        if self.contract == 2:
            sinks.append((self.fold.lanes, seq.phase == Phase.FOLD))
            self._connect_fold(m)
        for sink, owner in sinks:
            m.d.comb += [sink.valid.eq(mac.o.valid & owner), sink.payload.eq(mac.o.payload)]

        wiring.connect(m, wb.q, fetch.q)
        wiring.connect(m, fetch.copy, wb.copy)
        wiring.connect(m, score.scores, softmax.scores)
        wiring.connect(m, exps.score, score.exps)
        wiring.connect(m, exps.softmax, softmax.exps)
        return m

    def _connect_fold(self, m):
        """Contract 2: K_i's elements into ``wm`` (the fold beats' scalars), the fold unit's
        control, its K' words into ``dat`` and its shift into K'_i's exponent."""
        wiring.connect(m, self.writeback.k, self.softmax.k)
        wiring.connect(m, self.sequencer.fold, self.fold.ctl)
        wiring.connect(m, self.fold.write, self.writeback.fold)
        m.d.comb += self.exps.fold_shift.eq(self.fold.shift)

    def _forward_owner(self, m):
        """The owner's members (EngineSignature) to and from the units that serve them (contract
        2: the owner's writes of ``dat`` also reach the fetch, which copies S into ``qbuf``)."""
        owner = dict(self._OWNER)
        if self.contract == 2:
            owner["fetch"] = owner["fetch"] + ("wr_dat_addr", "wr_dat_data", "wr_dat_en")
        for unit, names in owner.items():
            unit = getattr(self, unit)
            for name in names:
                if self.signature.members[name].flow == In:
                    m.d.comb += getattr(unit, name).eq(getattr(self, name))
                else:
                    m.d.comb += getattr(self, name).eq(getattr(unit, name))
        m.d.comb += [self.softmax.pm_rd.addr.eq(self.rd_pm_addr), self.rd_pm_data.eq(self.softmax.pm_rd.data)]
