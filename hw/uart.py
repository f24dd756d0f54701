"""8N1 UART transmitter and receiver with `amaranth.lib.stream` byte ports.

Both blocks count system clocks per bit with a fixed divisor (``round(clk_freq / baud)``), so
the bit rate error is at most half a clock per bit; :func:`baud_divisor` refuses clock/baud
pairs whose error would eat into the ±5 % an 8N1 frame tolerates between two ends.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["baud_divisor", "UARTTx", "UARTRx"]

# Half of the 5 % budget of a 10-bit frame, leaving the other half to the far end's clock.
MAX_BAUD_ERROR = 0.02


def baud_divisor(clk_freq, baud):
    """System clocks per UART bit for ``clk_freq`` Hz and ``baud`` bit/s.

    Raises ValueError if the divisor is below 4 (the receiver samples mid-bit, so it needs a few
    clocks per bit) or if rounding leaves a bit-rate error above 2 %.
    """
    if clk_freq <= 0 or baud <= 0:
        raise ValueError(f"clock {clk_freq!r} Hz and baud {baud!r} must both be positive")
    divisor = round(clk_freq / baud)
    if divisor < 4:
        raise ValueError(f"baud {baud} is too fast for a {clk_freq / 1e6:g} MHz clock "
                         f"(divisor {clk_freq / baud:.2f}; need at least 4 clocks per bit)")
    error = abs(clk_freq / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"baud {baud} from a {clk_freq / 1e6:g} MHz clock is off by "
                         f"{error:.1%} (divisor {divisor}); pick another baud or clock")
    return divisor


class UARTTx(wiring.Component):
    """Serialises bytes as 8N1 frames: start bit (0), 8 data bits LSB first, stop bit (1).

    A byte is accepted (``data.ready``) only while the line is idle, so back-to-back bytes go
    out with no gap beyond the stop bit.

    Parameters
    ----------
    divisor : int
        System clocks per bit (see :func:`baud_divisor`).

    Members
    -------
    data : In(stream.Signature(8))
        Bytes to send.
    tx : Out(1)
        Serial line, idle high.
    """

    data: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor):
        if divisor < 1:
            raise ValueError(f"UART divisor must be at least 1, got {divisor}")
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        # Frame shifted out LSB first; the stop bit is the last bit, so an empty frame leaves
        # the line high.
        shreg = Signal(10, init=0x3FF)
        bits_left = Signal(range(11))
        timer = Signal(range(self.divisor))

        m.d.comb += [
            self.tx.eq(shreg[0]),
            self.data.ready.eq(bits_left == 0),
        ]
        with m.If(bits_left == 0):
            with m.If(self.data.valid):
                m.d.sync += [
                    shreg.eq((1 << 9) | (self.data.payload << 1)),
                    bits_left.eq(10),
                    timer.eq(self.divisor - 1),
                ]
        with m.Elif(timer == 0):
            m.d.sync += [
                shreg.eq((1 << 9) | (shreg >> 1)),
                bits_left.eq(bits_left - 1),
                timer.eq(self.divisor - 1),
            ]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m


class UARTRx(wiring.Component):
    """Deserialises 8N1 frames into bytes.

    The line goes through a two-flop synchroniser; a falling edge starts a frame, the start bit
    is re-checked half a bit later (a glitch shorter than that is ignored), and every following
    bit is sampled in its middle. A frame whose stop bit is low is dropped and pulses
    ``frame_error``. The receiver does not wait for the consumer: a byte that is still not taken
    when the next one completes is lost and pulses ``overrun`` — put a FIFO behind it.

    Parameters
    ----------
    divisor : int
        System clocks per bit (see :func:`baud_divisor`); at least 4.

    Members
    -------
    rx : In(1)
        Serial line, idle high.
    data : Out(stream.Signature(8))
        Received bytes.
    frame_error : Out(1)
        One-cycle pulse: a frame had a low stop bit and was dropped.
    overrun : Out(1)
        One-cycle pulse: a received byte replaced one the consumer had not taken.
    """

    rx: In(1, init=1)
    data: Out(stream.Signature(8))
    frame_error: Out(1)
    overrun: Out(1)

    def __init__(self, divisor):
        if divisor < 4:
            raise ValueError(f"UART receiver divisor must be at least 4, got {divisor}")
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(self.divisor))
        shreg = Signal(8)
        bit = Signal(range(9))

        # The output register holds a byte until the consumer takes it.
        with m.If(self.data.ready):
            m.d.sync += self.data.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.next = "IDLE"  # glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [
                        shreg.eq((rx << 7) | (shreg >> 1)),
                        bit.eq(bit + 1),
                        timer.eq(self.divisor - 1),
                    ]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    with m.If(rx):
                        m.d.sync += [self.data.payload.eq(shreg), self.data.valid.eq(1)]
                        m.d.comb += self.overrun.eq(self.data.valid & ~self.data.ready)
                    with m.Else():
                        m.d.comb += self.frame_error.eq(1)
                    # Sampled mid stop bit: back to IDLE now so the next start edge is not missed.
                    m.next = "IDLE"
        return m
