"""The sequential engine's one multiplier, its accumulator and its requantizer."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .arith import SerialMulShiftRoundSat
from .serial_signatures import MacPort, OperandA, OperandB, write_port

__all__ = ["SerialMac"]


class SerialMac(wiring.Component):
    """Operand selection, one 16 x 16 signed multiplier (an SB_MAC16 with ``synth_ice40 -dsp``),
    a 48-bit accumulator and the requantizer (:class:`~hmtx.hw.arith.SerialMulShiftRoundSat`),
    shared by every stage of the engine; and the two memories that only feed the multiplier:
    ``qbuf`` (q, or the current Q row; contract 2: K_i while a WRITE folds, S during a RECALL:
    one int16 per element) and ``wm`` (the aligned softmax
    weights).

    A beat (``port.fetch.mul``) goes through four registers: the cycle it is asked, its units
    address the memories (``qbuf``/``wm`` here at ``fetch.idx``, ``dat``/``w``/``key`` outside,
    whose words come in as ``dat``/``w``/``key``); a cycle later the words are out, the lanes
    picked and the operands registered; then the product is registered; then accumulated
    (``first`` starts a sum). ``port.acc`` holds a dot product the cycle after its last beat is
    accumulated. A requantization (``port.rq``) of the accumulator or of a unit's operand
    takes ``3 + 16 * use_m + |shift|`` cycles to ``port.y``.

    Members
    -------
    port : In(MacPort)
        Shared by the stages (:func:`~hmtx.hw.serial_signatures.merge`).
    dat, w : In(ArrayLayout(signed(8), P))
        The ``dat``/``w`` words addressed a cycle before.
    key : In(ArrayLayout(signed(16), KP))
        The ``key`` word addressed a cycle before.
    qbuf_w : Out(memory.WritePort.Signature)
        ``qbuf``'s write port.
    wm_w : Out(memory.WritePort.Signature)
        ``wm``'s write port.
    """

    def __init__(self, e):
        self._e = e
        # (no read needs a write's data in the same cycle: see Engine)
        NO_RW = {"no_rw_check": 1}
        self.qbuf = memory.Memory(shape=signed(16), depth=e.QD, init=[], attrs=NO_RW)
        self.wm = memory.Memory(shape=unsigned(16), depth=e.KMAX, init=[], attrs=NO_RW)
        super().__init__({
            "port": In(MacPort(e)),
            "dat": In(data.ArrayLayout(signed(8), e.P)),
            "w": In(data.ArrayLayout(signed(8), e.P)),
            "key": In(data.ArrayLayout(signed(16), e.KP)),
            "qbuf_w": Out(write_port(self.qbuf.depth, self.qbuf.shape)),
            "wm_w": Out(write_port(self.wm.depth, self.wm.shape)),
        })
        self._qbuf_r, self._qbuf_w = self.qbuf.read_port(), self.qbuf.write_port()
        self._wm_r, self._wm_w = self.wm.read_port(), self.wm.write_port()

    def elaborate(self, platform):
        m = Module()
        e, port = self._e, self.port
        m.submodules.qbuf, m.submodules.wm = self.qbuf, self.wm
        m.submodules.ppu = ppu = SerialMulShiftRoundSat()
        wiring.connect(m, wiring.flipped(self.qbuf_w), self._qbuf_w)
        wiring.connect(m, wiring.flipped(self.wm_w), self._wm_w)
        fetch = port.fetch
        m.d.comb += [self._qbuf_r.addr.eq(fetch.idx), self._wm_r.addr.eq(fetch.idx)]

        # s1: the words are out; pick the lanes, register the operands
        s1 = Signal(data.StructLayout({"mul": 1, "first": 1, "last": 1, "a": OperandA, "b": OperandB,
                                       "lane": len(fetch.lane), "klane": len(fetch.klane)}))
        m.d.sync += [s1.mul.eq(fetch.mul), s1.first.eq(fetch.first), s1.last.eq(fetch.last), s1.a.eq(fetch.a),
                     s1.b.eq(fetch.b), s1.lane.eq(fetch.lane), s1.klane.eq(fetch.klane)]
        dat_lane = Signal(signed(8))
        w_lane = Signal(signed(8))
        key_lane = Signal(signed(16))
        # (case statements: a variable word_select becomes a shifter)
        with m.Switch(s1.lane):
            for lane in range(e.P):
                with m.Case(lane):
                    m.d.comb += [dat_lane.eq(self.dat[lane]), w_lane.eq(self.w[lane])]
        with m.Switch(s1.klane):
            for k in range(e.KP):
                with m.Case(k):
                    m.d.comb += key_lane.eq(self.key[k])
        m.d.comb += port.dat_lane.eq(dat_lane)
        op_a = Signal(signed(16))
        op_b = Signal(signed(16))
        m.d.sync += [op_a.eq(Mux(s1.a == OperandA.DAT, dat_lane,
                                 Mux(s1.a == OperandA.QBUF, self._qbuf_r.data, self._wm_r.data.as_signed()))),
                     op_b.eq(Mux(s1.b == OperandB.W, w_lane, Mux(s1.b == OperandB.KEY, key_lane, dat_lane)))]

        # s2: the product; s3: the sum
        s2 = Signal(data.StructLayout({"mul": 1, "first": 1, "last": 1}))
        m.d.sync += [s2.mul.eq(s1.mul), s2.first.eq(s1.first), s2.last.eq(s1.last)]
        prod = Signal(signed(32))
        m.d.sync += prod.eq(op_a * op_b)
        s3 = Signal.like(s2)
        m.d.sync += [s3.mul.eq(s2.mul), s3.first.eq(s2.first), s3.last.eq(s2.last)]
        acc = port.acc.payload
        with m.If(s3.mul):
            m.d.sync += acc.eq(Mux(s3.first, prod, acc + prod))
        m.d.sync += port.acc.valid.eq(s3.mul & s3.last)

        # the requantizer: of the accumulator or of the unit's operand
        rq, pi = port.rq, ppu.i.payload
        m.d.comb += [ppu.i.valid.eq(rq.valid), rq.ready.eq(ppu.i.ready),
                     pi.x.eq(Mux(rq.payload.from_acc, acc, rq.payload.x)), pi.m.eq(rq.payload.m),
                     pi.use_m.eq(rq.payload.use_m), pi.s.eq(rq.payload.s), pi.wide.eq(rq.payload.wide),
                     port.y.valid.eq(ppu.o.valid), port.y.payload.eq(ppu.o.payload)]
        return m
