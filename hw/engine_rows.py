"""ATTN_PASS's per-row scalars in the lane engine: what the host sends for each query row (m, E,
the sum) and what the engine answers (pass 1: m, E; pass 2: the sum)."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .engine_layout import EXP_W, ROW_SCALAR_BYTES, EngineSignature, row_scalars_layout

__all__ = ["RowControlSignature", "RowScalarsSignature", "RowScalars"]


class RowControlSignature(wiring.Signature):
    """The sequencer's side of the row scalars.

    Members
    -------
    row : Out(range(max_queries + 1))
        The query row of the operation; its scalars are at ``cur`` two cycles after it changes.
    store_max : Out(1)
        Pass 1: write the row's m (the score unit's maximum) and E (the softmax's, -128 if the
        row kept no key).
    store_sum : Out(1)
        Pass 2: write the row's sum of exp2 terms.
    """

    def __init__(self, layout):
        super().__init__({"row": Out(range(layout.config.max_queries + 1)), "store_max": Out(1),
                          "store_sum": Out(1)})


class RowScalarsSignature(wiring.Signature):
    """Members of :class:`RowScalars`.

    Members
    -------
    ctl : In(RowControlSignature(layout))
    busy : In(1)
        The engine is busy: its own reads and writes, else the owner's.
    score_max, big_e, exp_sum : In(...)
        The values that pass 1 and 2 store: the score unit's maximum, the softmax's E and sum.
    cur : Out(row_scalars_layout())
        The scalars of ``ctl.row``, registered.
    wr_rs_addr, wr_rs_byte, wr_rs_data, wr_rs_en, rd_rs_addr, rd_rs_data : ...
        The owner's (:class:`~hmtx.hw.engine_layout.EngineSignature`), while the engine is idle.
    """

    def __init__(self, layout):
        members = EngineSignature(layout).members
        owner = {name: members[name] for name in ("wr_rs_addr", "wr_rs_byte", "wr_rs_data", "wr_rs_en",
                                                  "rd_rs_addr", "rd_rs_data")}
        super().__init__({
            "ctl": In(RowControlSignature(layout)), "busy": In(1),
            "score_max": In(signed(32)), "big_e": In(signed(EXP_W)), "exp_sum": In(32),
            "cur": Out(row_scalars_layout()),
            **owner,
        })


class RowScalars(wiring.Component):
    """One 72-bit word per query row in a memory with byte writes (the frame's 9-byte record:
    m little-endian, E, sum little-endian) and one read and one write port, shared: the owner
    uses them while the engine is idle (it writes what the frame carries, reads the answers),
    the engine while it is busy (it reads the row's scalars into ``cur`` and writes pass 1's m
    and E or pass 2's sum). A memory rather than registers: at smollm its 16 rows are two
    block RAMs instead of ~1,150 flip-flops and their read multiplexers.

    Members: :class:`RowScalarsSignature`."""

    def __init__(self, layout):
        self.layout = layout
        self.mem = memory.Memory(shape=unsigned(8 * ROW_SCALAR_BYTES), depth=layout.config.max_queries,
                                 init=[], attrs={"no_rw_check": 1})
        self._r = self.mem.read_port()
        self._w = self.mem.write_port(granularity=8)
        super().__init__(RowScalarsSignature(layout))

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = self.mem
        ctl = self.ctl
        m.d.comb += [self._r.addr.eq(Mux(self.busy, ctl.row, self.rd_rs_addr)),
                     self.rd_rs_data.eq(self._r.data)]      # (the record's layout is the word's)
        m.d.sync += self.cur.eq(self._r.data)
        # the engine's stores (pass 1: bytes 0..4, pass 2: bytes 5..8), else the owner's byte,
        # registered on the way (the block RAM sits away from the sequencer and the units whose
        # values it stores; nothing reads a row in the cycles after its store)
        e_kept = Mux(self.big_e < -128, -128, self.big_e)[:8]
        wr = Signal(data.StructLayout({"addr": len(self._w.addr), "data": len(self._w.data),
                                       "en": ROW_SCALAR_BYTES}))
        m.d.sync += wr.en.eq(0)
        with m.If(ctl.store_max | ctl.store_sum):
            m.d.sync += [wr.addr.eq(ctl.row), wr.data.eq(Cat(self.score_max, e_kept, self.exp_sum)),
                         wr.en.eq(Mux(ctl.store_max, 0b000011111, 0b111100000))]
        with m.Elif(~self.busy & self.wr_rs_en):
            m.d.sync += [wr.addr.eq(self.wr_rs_addr), wr.data.eq(Cat(*[self.wr_rs_data] * ROW_SCALAR_BYTES)),
                         wr.en.eq(Const(1, ROW_SCALAR_BYTES) << self.wr_rs_byte)]
        m.d.comb += [self._w.addr.eq(wr.addr), self._w.data.eq(wr.data), self._w.en.eq(wr.en)]
        return m
