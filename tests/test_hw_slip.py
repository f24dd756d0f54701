"""SlipDecoder/SlipEncoder vs model.protocol's SLIP, and the CRC-8 step vs model.protocol.crc8."""

from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hmtx.hw.slip import END, SlipDecoder, SlipEncoder, crc8_next
from hmtx.model.protocol import crc8, slip_escape
from hwsim import rng, run_stream


def test_crc8_step_matches_host():
    r = rng(5)
    crc, byte = Signal(8), Signal(8)
    nxt = crc8_next(crc, byte)
    data = bytes(r.randrange(256) for _ in range(40)) + b"123456789"
    got = []

    async def tb(ctx):
        c = 0
        for b in data:
            ctx.set(crc, c)
            ctx.set(byte, b)
            c = ctx.get(nxt)
            got.append(c)

    m = Module()
    m.d.comb += Signal().eq(nxt)
    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    assert got == [crc8(data[:n + 1]) for n in range(len(data))]
    assert crc8(b"123456789") == 0xF4


def test_slip_encoder_matches_host_escape():
    r = rng(6)
    bodies = [bytes(r.choice([0xC0, 0xDB, 0x00, 0x41, 0xDC]) for _ in range(r.randint(1, 6))) for _ in range(6)]
    items = [{"data": b, "last": k == len(body) - 1} for body in bodies for k, b in enumerate(body)]
    wire = b"".join(slip_escape(body) for body in bodies)   # escape + END
    dut = SlipEncoder()
    out = run_stream(dut, dut.i, dut.o, items, len(wire), r, convert=int)
    assert bytes(out) == wire


def test_slip_decoder_bodies_and_errors():
    r = rng(7)
    body = bytes([1, 0xC0, 0xDB, 7])
    wire = (slip_escape(body)                          # good frame (ends in END)
            + bytes([END])                          # empty frame
            + bytes([5, 0xDB, 0x11, 6, 0xDB]) + bytes([END])  # escape error, dropped to END
            + bytes([9, 0xDB, END])                 # ESC then END: escape error
            + bytes([3, END]))
    dut = SlipDecoder()
    beats = [(b, 0, 0) for b in body] + [(0, 1, 0), (0, 1, 0), (5, 0, 0), (0, 1, 1), (9, 0, 0), (0, 1, 1),
                                         (3, 0, 0), (0, 1, 0)]
    out = run_stream(dut, dut.i, dut.o, list(wire), len(beats), r,
                     convert=lambda p: (0 if p.end else p.data, p.end, p.err))
    assert out == beats
