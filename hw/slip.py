"""SLIP framing (RFC 1055) of the host byte streams, and the CRC-8 of docs/protocol.md."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model.protocol import END, ESC, ESC_END, ESC_ESC

__all__ = ["END", "ESC", "ESC_END", "ESC_ESC", "crc8_next", "SlipDecoder", "SlipEncoder"]

CRC_POLY = 0x07     # CRC-8/SMBUS, docs/protocol.md section 2


def crc8_next(crc, byte):
    """Combinational CRC-8/SMBUS step (poly 0x07, MSB first) of one byte: an 8-bit Value."""
    c = [crc[i] ^ byte[i] for i in range(8)]
    for _ in range(8):
        msb = c[7]
        c = [c[i - 1] if i else 0 for i in range(8)]          # shift left
        c = [c[i] ^ msb if (CRC_POLY >> i) & 1 else c[i] for i in range(8)]
    return Cat(*c)


class SlipDecoder(wiring.Component):
    """Un-escapes a SLIP byte stream into body bytes and end-of-frame markers.

    Every END produces one ``end`` beat; its ``err`` is set when the frame had an escape error
    (ESC followed by anything but 0xDC/0xDD, or by END), after which the rest of the frame up
    to END was dropped. Empty frames are passed on as an ``end`` beat too; the command
    processor ignores them. Combinational: a byte is taken when its beat is taken.

    Members
    -------
    i : In(stream.Signature(8))
    o : Out(stream.Signature({data: 8, end: 1, err: 1}))
    """

    i: In(stream.Signature(8))
    o: Out(stream.Signature(data.StructLayout({"data": 8, "end": 1, "err": 1})))

    def elaborate(self, platform):
        m = Module()
        esc = Signal()
        bad = Signal()
        b = self.i.payload
        is_end = b == END
        emit = Signal()
        with m.If(is_end):
            m.d.comb += emit.eq(1)
        with m.Elif(bad):
            m.d.comb += emit.eq(0)
        with m.Elif(esc):
            m.d.comb += emit.eq((b == ESC_END) | (b == ESC_ESC))
        with m.Else():
            m.d.comb += emit.eq(b != ESC)
        m.d.comb += [
            self.o.valid.eq(self.i.valid & emit),
            self.i.ready.eq(self.o.ready | ~emit),
            self.o.payload.end.eq(is_end),
            self.o.payload.err.eq(is_end & (bad | esc)),
            self.o.payload.data.eq(Mux(esc, Mux(b == ESC_END, END, ESC), b)),
        ]
        with m.If(self.i.valid & self.i.ready):
            with m.If(is_end):
                m.d.sync += [esc.eq(0), bad.eq(0)]
            with m.Elif(~bad):
                with m.If(esc):
                    m.d.sync += [esc.eq(0), bad.eq((b != ESC_END) & (b != ESC_ESC))]
                with m.Else():
                    m.d.sync += esc.eq(b == ESC)
        return m


class SlipEncoder(wiring.Component):
    """Escapes body bytes and appends END after the byte marked ``last``.

    Members
    -------
    i : In(stream.Signature({data: 8, last: 1}))
    o : Out(stream.Signature(8))
    """

    i: In(stream.Signature(data.StructLayout({"data": 8, "last": 1})))
    o: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        # phase 0: first byte of this input (the byte itself or ESC), 1: the escaped code,
        # 2: the END after a last byte
        phase = Signal(2)
        b = self.i.payload.data
        special = (b == END) | (b == ESC)
        with m.Switch(phase):
            with m.Case(0):
                m.d.comb += self.o.payload.eq(Mux(special, ESC, b))
            with m.Case(1):
                m.d.comb += self.o.payload.eq(Mux(b == END, ESC_END, ESC_ESC))
            with m.Default():
                m.d.comb += self.o.payload.eq(END)
        m.d.comb += self.o.valid.eq(self.i.valid)
        with m.If(self.o.valid & self.o.ready):
            with m.If((phase == 0) & special):
                m.d.sync += phase.eq(1)
            with m.Elif((phase != 2) & self.i.payload.last):
                m.d.sync += phase.eq(2)
            with m.Else():
                m.d.comb += self.i.ready.eq(1)
                m.d.sync += phase.eq(0)
        return m
