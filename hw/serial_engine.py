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

The work is split into units, each a component: the :class:`~hmtx.hw.serial_sequencer.Sequencer`
runs the stages of an operation one after the other -- :class:`~hmtx.hw.serial_stages.Projection`,
:class:`~hmtx.hw.serial_stages.QueryRow`, :class:`~hmtx.hw.serial_stages.Scores`,
:class:`~hmtx.hw.serial_softmax.Softmax`, :class:`~hmtx.hw.serial_stages.WeightedSum` -- which take
turns on the one :class:`~hmtx.hw.serial_mac.SerialMac` and on the shared memory ports
(:func:`~hmtx.hw.serial_signatures.merge`).

Every step waits for the one before it, so the cost is cycles, and they depend on the data (the
requantizer shifts one place per cycle): a RECALL over 16 slots at ``up5k`` takes 6,000-7,000
cycles (``python bench/cycles.py --engine serial``, docs/hardware.md), about 250 µs at 27 MHz,
against ~2.4 ms for its frames on a 1 Mbaud UART.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring

from hmtx.model.configs import EngineConfig

from .engine import EXP_W, EngineLayout, EngineSignature, Region
from .serial_mac import SerialMac
from .serial_fold import Fold
from .serial_sequencer import Sequencer
from .serial_signatures import merge, read_port, write_port
from .serial_softmax import Softmax
from .serial_stages import Projection, QueryRow, Scores, WeightedSum

__all__ = ["SerialEngine"]


class SerialEngine(EngineLayout, wiring.Component):
    """All on-chip state of a recall/attention engine and the units that compute with one
    multiplier; a drop-in for :class:`~hmtx.hw.engine.Engine` behind
    :class:`~hmtx.hw.top.HmtxTop` (same members, same memory layout, bit-exact with
    ``hmtx.model.fixed``).

    Memories: ``dat`` (P x int8 words: input, results, the M ring), ``w`` (W_q then W_k), ``key``
    (KP x int16 words), ``vexp``/``mexp``/``kexp``/``pm``/``oexp`` as in the lane engine, all
    shared with the owner and held here; the units' own: ``qbuf`` (q or the current Q row) and
    ``wm`` (aligned weights) in the multiplier unit, ``sc`` (scores, then exp2 terms) and ``lut``
    (the exp2 table) in the softmax (attributes here too, for testbenches).

    Order of work: WRITE copies M_i into its slot, then projects K_i column by column; RECALL
    projects q into ``qbuf``; ATTENTION copies Q row a into ``qbuf``. Then per key a score, the
    exp2 pass, the reciprocal, the probability pass and per output element a weighted sum over
    the keys. While idle the owner reads ``dat`` and ``key`` through the units' read ports; its
    writes to ``dat`` go through whenever no unit writes.

    ``contract`` (1 or 2) is the arithmetic contract (docs/arithmetic.md section 10), in the
    lane engine's memory layout so that one command processor serves both: contract 2 adds the
    region ``kf`` of ``dat`` after the M ring (K'_i at word ``kf_base + i*CB + cb``, int8 like
    M_i), keeps K'_i's exponent in ``kexp`` and has no ``key`` ring (``key`` is None,
    ``rd_key_data`` reads 0). Its WRITE copies M_i and projects K_i as contract 1 does, but into
    ``qbuf``, then folds (:class:`~hmtx.hw.serial_fold.Fold`, two passes of ``d x d_h`` beats);
    its RECALL loads S into ``qbuf`` as ATTENTION loads a Q row and scores it against the folded
    keys in ``dat`` (``n x d`` beats, the score scale of d_h); it never reads ``W_q``. ``qbuf``
    is ``max(d_h, head_dim, d)`` deep for it.

    Members
    -------
    As :class:`~hmtx.hw.engine.EngineSignature`.
    """

    # cycles from ``rd_dat_addr``/``rd_key_addr`` to ``rd_dat_data``/``rd_key_data``: the
    # address register, then the block RAM's read
    READ_LATENCY = 2

    def __init__(self, config: EngineConfig, contract: int = 1):
        if not isinstance(config, EngineConfig):
            raise ValueError(f"SerialEngine needs an EngineConfig, got {type(config).__name__}")
        self._set_layout(config, contract, attn_pass=False)     # (no ATTN_PASS: up5k has no room)
        c, P = config, self.P
        i8 = data.ArrayLayout(signed(8), P)
        # (no read needs a write's data in the same cycle: see Engine)
        NO_RW = {"no_rw_check": 1}
        self.dat = memory.Memory(shape=i8, depth=self.dat_depth, init=[], attrs=NO_RW)
        self.vin = Region(self.dat, 0, self.vin_depth)
        self.mem = Region(self.dat, self.mem_base, c.n_slots * self.CB)
        if contract == 2:
            self.kf = Region(self.dat, self.kf_base, c.n_slots * self.CB)
        self.w = memory.Memory(shape=i8, depth=2 * c.d_h * self.CB, init=[], attrs=NO_RW)
        self.wq = Region(self.w, 0, c.d_h * self.CB)
        self.wk = Region(self.w, c.d_h * self.CB, c.d_h * self.CB)
        # (contract 2's recall never reads K_i: no key ring)
        self.key = (memory.Memory(shape=data.ArrayLayout(signed(16), self.KP), depth=c.n_slots * self.KB,
                                  init=[], attrs=NO_RW) if contract == 1 else None)
        self.vexp = memory.Memory(shape=signed(8), depth=self.ROWS, init=[], attrs=NO_RW)
        # (in block RAM too: Yosys puts a 16-entry table with two read ports into flip-flops)
        self.mexp = memory.Memory(shape=signed(8), depth=c.n_slots, init=[], attrs=NO_RW | {"ram_style": "block"})
        self.kexp = memory.Memory(shape=signed(EXP_W), depth=c.n_slots, init=[], attrs=NO_RW)
        self.pm = memory.Memory(shape=unsigned(16), depth=self.KMAX, init=[], attrs=NO_RW)
        # (read by the response generator through a combinational port: flip-flops)
        self.oexp = memory.Memory(shape=signed(EXP_W), depth=c.max_queries, init=[], attrs={"ram_style": "logic"})
        # qbuf's depth in elements (the layout's QD counts the lane engine's words): q or a Q row;
        # contract 2: K_i (d_h) or S (d)
        self.QD = max(c.d_h, c.head_dim, c.d if contract == 2 else 0)
        super().__init__(EngineSignature(self))
        self.sequencer = Sequencer(self)
        self.mac = SerialMac(self)
        self.projection = Projection(self)
        self.query_row = QueryRow(self)
        self.scores = Scores(self)
        self.softmax = Softmax(self)
        self.wsum = WeightedSum(self)
        if contract == 2:
            self.fold = Fold(self)
        # the units' ports, made before the owner's
        self._dat_r = self.dat.read_port()
        self._dat_w = self.dat.write_port(granularity=1)
        self._w_r = self.w.read_port()
        self._w_w = self.w.write_port(granularity=1)
        if contract == 1:
            self._key_r = self.key.read_port()
            self._key_w = self.key.write_port(granularity=1)
        self._vexp_r = self.vexp.read_port()
        self._mexp_r = self.mexp.read_port()
        self._mexp_w = self.mexp.write_port()
        self._kexp_r = self.kexp.read_port()
        self._kexp_w = self.kexp.write_port()
        self._pm_w = self.pm.write_port()
        self._oexp_w = self.oexp.write_port()
        # the owner's ports (EngineSignature)
        self._vexp_o, self._pm_o = self.vexp.write_port(), self.pm.read_port()
        self._mexp_o, self._kexp_o = self.mexp.read_port(), self.kexp.read_port()
        self._oexp_o = self.oexp.read_port(domain="comb")

    # the units' memories
    qbuf = property(lambda self: self.mac.qbuf)
    wm = property(lambda self: self.mac.wm)
    sc = property(lambda self: self.softmax.sc)
    lut = property(lambda self: self.softmax.lut)

    def elaborate(self, platform):
        m = Module()
        c1 = self.contract == 1
        for name in ("dat", "w", "key", "vexp", "mexp", "kexp", "pm", "oexp"):
            if getattr(self, name) is not None:
                m.submodules[name] = getattr(self, name)
        seq, mac, proj, qrow = self.sequencer, self.mac, self.projection, self.query_row
        scores, softmax, wsum = self.scores, self.softmax, self.wsum
        stages = (proj, qrow, scores, softmax, wsum)
        names = ("proj", "qrow", "scores", "softmax", "wsum")
        m.submodules.sequencer, m.submodules.mac = seq, mac
        m.submodules.projection, m.submodules.query_row = proj, qrow
        m.submodules.scores, m.submodules.softmax, m.submodules.wsum = scores, softmax, wsum
        if not c1:
            m.submodules.fold = fold = self.fold
            stages, names = stages + (fold,), names + ("fold",)
            m.d.comb += [getattr(fold, name).eq(getattr(self, name)) for name in ("wq_exp", "wk_exp", "wk_shift")]

        # the operation, and which stage runs
        m.d.comb += [getattr(seq, name).eq(getattr(self, name))
                     for name in ("start", "op", "slot", "n_keys", "n_q", "causal")]
        m.d.comb += [self.busy.eq(seq.busy), self.done.eq(seq.done)]
        m.d.comb += [stage.job.eq(seq.job) for stage in stages]
        for name, stage in zip(names, stages):
            wiring.connect(m, getattr(seq, name), stage.ctl)
        m.d.comb += [getattr(proj, name).eq(getattr(self, name))
                     for name in ("wq_exp", "wk_exp", "wq_shift", "wk_shift")]

        # between the stages: the multiplier, q and its exponent, the scores, the weights, E
        merge(m, mac.port, *(stage.mac for stage in stages))
        merge(m, mac.qbuf_w, proj.qbuf_w, qrow.qbuf_w)
        merge(m, scores.q_exp, *((proj.q_exp,) if c1 else ()), qrow.q_exp)
        wiring.connect(m, scores.score, softmax.score)
        wiring.connect(m, softmax.wm_w, mac.wm_w)
        m.d.comb += seq.big_e.eq(softmax.big_e)

        # dat and key: the owner reads while idle (READ_LATENCY: its address registered, then the
        # block RAM), the units while busy; the owner's writes to dat go through unless a unit writes
        word = data.ArrayLayout(signed(8), self.P)
        rd_dat_r = Signal.like(self.rd_dat_addr)
        rd_key_r = Signal.like(self.rd_key_addr)
        m.d.sync += [rd_dat_r.eq(self.rd_dat_addr), rd_key_r.eq(self.rd_key_addr)]
        dat_r = read_port(self.dat_depth, word).create(path=("dat_r",))
        merge(m, dat_r, seq.dat, proj.dat, qrow.dat, scores.dat, wsum.dat)
        # (contract 2: no key ring; rd_key_data and the multiplier's key word read 0)
        key_r = [self._key_r.addr.eq(Mux(seq.busy, scores.key.addr, rd_key_r)),
                 scores.key.data.eq(self._key_r.data)] if c1 else []
        m.d.comb += [self._dat_r.addr.eq(Mux(seq.busy, dat_r.addr, rd_dat_r)), dat_r.data.eq(self._dat_r.data),
                     *key_r, self.rd_dat_data.eq(self._dat_r.data),
                     *([self.rd_key_data.eq(self._key_r.data)] if c1 else []),
                     mac.dat.eq(self._dat_r.data), mac.w.eq(self._w_r.data),
                     *([mac.key.eq(self._key_r.data)] if c1 else [])]
        dat_w = write_port(self.dat_depth, word, granularity=1).create(path=("dat_w",))
        merge(m, dat_w, seq.dat_w, wsum.dat_w, *(() if c1 else (fold.dat_w,)))
        with m.If(dat_w.en.any()):
            m.d.comb += [self._dat_w.addr.eq(dat_w.addr), self._dat_w.data.eq(dat_w.data), self._dat_w.en.eq(dat_w.en)]
        with m.Else():
            m.d.comb += [self._dat_w.addr.eq(self.wr_dat_addr), self._dat_w.data.eq(self.wr_dat_data),
                         self._dat_w.en.eq(self.wr_dat_en)]
        m.d.comb += [self._w_w.addr.eq(self.wr_w_addr), self._w_w.data.eq(self.wr_w_data),
                     self._w_w.en.eq(self.wr_w_en)]

        # the units' other ports
        if c1:
            wiring.connect(m, proj.w, self._w_r)
            wiring.connect(m, proj.key_w, self._key_w)
        else:
            merge(m, self._w_r, proj.w, fold.w)
        wiring.connect(m, proj.mexp_w, self._mexp_w)
        # (K_i's exponent, or contract 2's K'_i's once the fold has its shift)
        wiring.connect(m, proj.kexp_w if c1 else fold.kexp_w, self._kexp_w)
        merge(m, self._vexp_r, seq.vexp, qrow.vexp, scores.vexp, softmax.vexp)
        wiring.connect(m, scores.kexp, self._kexp_r)
        wiring.connect(m, softmax.mexp, self._mexp_r)
        wiring.connect(m, softmax.pm_w, self._pm_w)
        wiring.connect(m, seq.oexp_w, self._oexp_w)

        # the owner's ports
        m.d.comb += [self._vexp_o.addr.eq(self.wr_vexp_addr), self._vexp_o.data.eq(self.wr_vexp_data),
                     self._vexp_o.en.eq(self.wr_vexp_en)]
        for name in ("pm", "mexp", "kexp", "oexp"):
            port = getattr(self, f"_{name}_o")
            m.d.comb += [port.addr.eq(getattr(self, f"rd_{name}_addr")), getattr(self, f"rd_{name}_data").eq(port.data)]
        return m
