"""UART TX/RX and the UART bridge in Amaranth's simulator, checked against byte lists."""

import os
import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from hmtx.hw.board import EchoCore, UartBridge, bridge_verilog, echo_core_reference
from hmtx.hw.uart import UARTRx, UARTTx, baud_divisor

# Objects built only to check that a constructor refuses them are never elaborated; Amaranth
# warns about that when they are garbage-collected, possibly during a later test.
pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")

SEED = int(os.environ.get("HMTX_SEED", "1234"))


def _rng(test_name):
    seed = SEED
    print(f"{test_name}: seed {seed} (set HMTX_SEED to change)")
    return random.Random(seed), seed


async def _send_stream(ctx, port, data):
    for b in data:
        ctx.set(port.payload, b)
        ctx.set(port.valid, 1)
        await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


async def _recv_stream(ctx, port, count, ready_prob=1.0, rng=None):
    out = []
    while len(out) < count:
        ready = rng is None or rng.random() < ready_prob
        ctx.set(port.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
        if ready and valid:
            out.append(payload)
    ctx.set(port.ready, 0)
    return out


async def _drive_pin(ctx, pin, byte, cycles_per_bit, stop=1):
    """Send one 8N1 frame on a pin, bit times rounded from a fractional cycles_per_bit."""
    bits = [0] + [(byte >> i) & 1 for i in range(8)] + [stop]
    t = 0.0
    for bit in bits:
        ctx.set(pin, bit)
        nxt = t + cycles_per_bit
        await ctx.tick().repeat(round(nxt) - round(t))
        t = nxt
    ctx.set(pin, 1)


async def _read_pin(ctx, pin, cycles_per_bit):
    """Wait for a start bit on a pin and sample one 8N1 frame mid-bit."""
    await ctx.tick().until(pin == 0)
    await ctx.tick().repeat(cycles_per_bit + cycles_per_bit // 2)
    byte = 0
    for i in range(8):
        byte |= ctx.get(pin) << i
        await ctx.tick().repeat(cycles_per_bit)
    assert ctx.get(pin) == 1, "stop bit is low"
    return byte


def test_baud_divisor():
    assert baud_divisor(25e6, 115200) == 217
    assert baud_divisor(100e6, 1_000_000) == 100
    assert baud_divisor(12e6, 1_000_000) == 12
    with pytest.raises(ValueError, match="too fast"):
        baud_divisor(12e6, 4_000_000)
    with pytest.raises(ValueError, match="off by"):
        baud_divisor(10e6, 1_500_000)   # 6.67 clocks per bit -> 7 is 4.8 % slow
    with pytest.raises(ValueError, match="positive"):
        baud_divisor(0, 115200)


@pytest.mark.parametrize("divisor", [4, 8, 13])
def test_tx_rx_loopback_random_bytes(divisor):
    rng, seed = _rng(f"loopback divisor={divisor}")
    data = [rng.randrange(256) for _ in range(40)] + [0x00, 0xFF, 0x55, 0xAA]

    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    errors = []

    async def sender(ctx):
        await _send_stream(ctx, tx.data, data)

    async def receiver(ctx):
        got = await _recv_stream(ctx, rx.data, len(data))
        assert got == data, f"seed {seed}: sent {data}, received {got}"

    async def monitor(ctx):
        async for _, _, fe, ov in ctx.tick().sample(rx.frame_error, rx.overrun):
            if fe or ov:
                errors.append((fe, ov))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(sender)
    sim.add_testbench(receiver)
    sim.add_testbench(monitor, background=True)
    sim.run_until(1e-6 * divisor * 10 * (len(data) + 4))
    assert not errors, f"seed {seed}: frame/overrun errors {errors}"


def test_rx_tolerates_clock_mismatch_and_flags_bad_stop_bit():
    divisor = 16
    rx = UARTRx(divisor)
    got, flags = [], []

    async def line(ctx):
        # The far end runs 3 % fast and then 3 % slow; the receiver samples mid-bit, so both
        # still decode. A frame with a low stop bit must be dropped, not delivered.
        for b in (0x3C, 0xA5):
            await _drive_pin(ctx, rx.rx, b, divisor * 0.97)
            await ctx.tick().repeat(divisor)
        await _drive_pin(ctx, rx.rx, 0x81, divisor * 1.03)
        await ctx.tick().repeat(divisor)
        await _drive_pin(ctx, rx.rx, 0x42, divisor, stop=0)
        await ctx.tick().repeat(3 * divisor)
        await _drive_pin(ctx, rx.rx, 0x99, divisor)
        await ctx.tick().repeat(2 * divisor)

    async def sink(ctx):
        ctx.set(rx.data.ready, 1)
        async for _, _, valid, payload, fe in ctx.tick().sample(rx.data.valid, rx.data.payload,
                                                                 rx.frame_error):
            if valid:
                got.append(payload)
            if fe:
                flags.append(len(got))

    sim = Simulator(rx)
    sim.add_clock(1e-6)
    sim.add_testbench(line)
    sim.add_testbench(sink, background=True)
    sim.run()
    assert got == [0x3C, 0xA5, 0x81, 0x99]
    assert flags == [3], "the bad frame (after three good ones) must raise frame_error once"


@pytest.mark.parametrize("fifo_ram", ["logic", "block"])
def test_bridge_echo_core_through_pins(fifo_ram):
    """Bytes in at the rx pin, answers out of the tx pin, against the EchoCore reference, with the
    FIFOs in flip-flops (ECP5 builds) and in block RAM (iCE40 builds)."""
    rng, seed = _rng("bridge")
    lanes, divisor = 4, 8
    data = bytes(rng.randrange(256) for _ in range(24))
    expected = echo_core_reference(data, lanes)
    assert expected != data   # the MAC lanes really change the answers
    bridge = UartBridge(EchoCore(lanes=lanes), clk_freq=8e6, baud=1_000_000, fifo_depth=4, fifo_ram=fifo_ram)
    assert bridge.divisor == divisor

    async def host_tx(ctx):
        ctx.set(bridge.rx, 1)
        await ctx.tick().repeat(5)
        for b in data:
            await _drive_pin(ctx, bridge.rx, b, divisor)

    async def host_rx(ctx):
        got = bytes([await _read_pin(ctx, bridge.tx, divisor) for _ in data])
        assert got == expected, f"seed {seed}: sent {data.hex()}, got {got.hex()}, " \
                                f"expected {expected.hex()}"

    sim = Simulator(bridge)
    sim.add_clock(1 / 8e6)
    sim.add_testbench(host_tx)
    sim.add_testbench(host_rx)
    sim.run()


def test_echo_core_reference_is_echo_from_zero_window():
    assert echo_core_reference(b"\x01\x02", lanes=4) == b"\x01\x02"
    # lanes=1: window [x, w] = [prev, prev-prev]; third byte adds 2*1.
    assert echo_core_reference(b"\x01\x02\x10", lanes=1) == bytes([1, 2, 0x10 + 2])
    assert echo_core_reference(b"\xff\xff\x00", lanes=1) == bytes([0xFF, 0xFF, 1])   # (-1)*(-1)
    # 0x7f * 0x40 = 0x1fc0: folded 0xc0 ^ 0x1f = 0xdf. (-128)*127 = -0x3f80 = 0xffc080: 0x80^0xc0^0xff
    assert echo_core_reference(b"\x40\x7f\x00", lanes=1)[2] == 0xDF
    assert echo_core_reference(b"\x7f\x80\x00", lanes=1)[2] == 0x80 ^ 0xC0 ^ 0xFF


def test_bridge_rejects_core_with_wrong_ports():
    with pytest.raises(ValueError, match="exactly the ports"):
        UartBridge(UARTTx(8), clk_freq=8e6, baud=1_000_000)
    with pytest.raises(ValueError, match="fifo_ram must be 'logic' or 'block'"):
        UartBridge(EchoCore(lanes=2), clk_freq=8e6, baud=1_000_000, fifo_ram="lut")


def test_bridge_converts_to_verilog_with_pin_ports():
    text = bridge_verilog(EchoCore(lanes=2), 12e6, 1_000_000, name="bridge")
    assert "module bridge(" in text.replace(" (", "(")
    for port in ("input clk;", "input rst;", "input rx;", "output tx;"):
        assert port in text


@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_echo_core_streams_match_reference(lanes):
    """EchoCore alone on its byte streams, odd lane counts included (unpaired adder-tree
    inputs), with a consumer that is randomly not ready."""
    rng, seed = _rng(f"echo core lanes={lanes}")
    data = [rng.randrange(256) for _ in range(3 * lanes + 8)]
    expected = list(echo_core_reference(bytes(data), lanes))
    core = EchoCore(lanes=lanes)

    async def sender(ctx):
        await _send_stream(ctx, core.cmd, data)

    async def receiver(ctx):
        got = await _recv_stream(ctx, core.rsp, len(data), ready_prob=0.6, rng=rng)
        assert got == expected, f"seed {seed}: lanes {lanes}: got {got}, expected {expected}"

    sim = Simulator(core)
    sim.add_clock(1e-6)
    sim.add_testbench(sender)
    sim.add_testbench(receiver)
    sim.run()
