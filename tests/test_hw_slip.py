"""SlipDecoder/SlipEncoder vs model.protocol's SLIP, and Crc8 vs model.protocol.crc8."""

from amaranth.sim import Simulator

from hmtx.hw.slip import END, Crc8, SlipDecoder, SlipEncoder
from hmtx.model.protocol import crc8, slip_escape
from hwsim import rng, run_stream


def test_crc8_matches_host_one_byte_per_cycle():
    # Crc8 (lib.crc's CRC-8/SMBUS): a byte taken in one cycle is in ``crc`` the next, bytes may
    # come back to back, and ``clear`` starts over
    r = rng(5)
    data = bytes(r.randrange(256) for _ in range(40)) + b"123456789"
    dut = Crc8()
    got, zero = [], []

    async def tb(ctx):
        for n, b in enumerate(data):
            ctx.set(dut.valid, 1)
            ctx.set(dut.data, b)
            await ctx.tick()
            got.append(ctx.get(dut.crc))
        ctx.set(dut.valid, 0)
        ctx.set(dut.data, crc8(data))            # the body's own CRC byte: the residue is 0
        await ctx.tick()
        ctx.set(dut.valid, 1)
        await ctx.tick()
        ctx.set(dut.valid, 0)
        zero.append((ctx.get(dut.crc), ctx.get(dut.zero)))
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        zero.append((ctx.get(dut.crc), ctx.get(dut.zero)))
        ctx.set(dut.valid, 1)
        ctx.set(dut.data, 0x31)
        await ctx.tick()
        got.append(ctx.get(dut.crc))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert got == [crc8(data[:n + 1]) for n in range(len(data))] + [crc8(b"1")]
    assert zero == [(0, 1), (0, 1)]
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
