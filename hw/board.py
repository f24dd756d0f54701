"""Board top: the accelerator core behind a UART, for the ULX3S 85F and the iCEBreaker.

A core is any `wiring.Component` with exactly ``cmd: In(stream.Signature(8))`` (command bytes
in) and ``rsp: Out(stream.Signature(8))`` (response bytes out) in the ``sync`` domain; the
board code takes a *core factory* ``factory(config) -> core``. The real one is
``hmtx.hw.top.HmtxTop``; :class:`EchoCore` is a small stand-in with the same ports.

Layers, each usable alone:

- :class:`UartBridge` — core + UART RX/TX + FIFOs, with plain ``rx``/``tx`` ports and no
  platform, so it converts to Verilog for cocotb (:func:`bridge_verilog`).
- :class:`BoardTop` — the bridge on a board's pins, with a PLL making the system clock and a
  power-on reset held until the PLL locks.
"""

from amaranth.back import verilog
from amaranth.hdl import ClockDomain, ClockSignal, Module, ResetSignal, Signal, signed
from amaranth.lib import fifo, io, stream, wiring
from amaranth.lib.wiring import In, Out

from .pll import ecp5_pll, ecp5_pll_params, ice40_pll_pad, ice40_pll_params
from .uart import UARTRx, UARTTx, baud_divisor

__all__ = ["DEFAULT_BAUD", "EchoCore", "echo_core_reference", "UartBridge", "bridge_verilog",
           "BoardTop"]

# The host runtime's default (hmtx.host.backends.DEFAULT_BAUD), so `hmtx run --device
# serial:PORT` talks to a fresh bitstream without options. 3 Mbaud is the fastest rate of the
# ULX3S's FT231X (3 MHz / 1, exact on its side; the iCEBreaker's FT2232H goes to 12 Mbaud). It
# divides 24 MHz exactly (8) and 100 MHz to 33 clocks per bit, 3.03 Mbaud: +1.0 %, half the
# 2 % hw.uart.baud_divisor allows (bench/link.py tabulates the candidates); `--baud 115200`
# for a plain terminal.
DEFAULT_BAUD = 3_000_000


class EchoCore(wiring.Component):
    """Stand-in core: answers each command byte with one byte that mixes in P int8 products.

    It keeps the last 2P command bytes as a window of signed int8 values ``x[0..P-1]`` (the P
    most recent) and ``w[0..P-1]`` (the P before them). For each new byte ``b`` it answers
    ``(b + fold(sum(x[i] * w[i]))) mod 256`` over the window *before* ``b`` enters it, where
    ``fold`` XORs the three bytes of the sum's 24-bit two's complement; with an all-zero window
    the core echoes. The products are registered (int8 × int8 in one DSP on
    ECP5, with a register on each side as TOOLCHAIN.md advises) and summed by a registered
    adder tree; the window is reset-less (initial value zero) to keep the reset net off the
    datapath. :func:`echo_core_reference` is the bit-exact Python model.

    Parameters
    ----------
    config : EngineConfig or None
        Only ``config.lanes`` (P) is used.
    lanes : int
        P when no config is given.

    Members
    -------
    cmd : In(stream.Signature(8))
    rsp : Out(stream.Signature(8))
    """

    cmd: In(stream.Signature(8))
    rsp: Out(stream.Signature(8))

    def __init__(self, config=None, *, lanes=None):
        lanes = config.lanes if config is not None else lanes
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"EchoCore needs a positive number of lanes, got {lanes!r}")
        self.lanes = lanes
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        P = self.lanes
        window = [Signal(signed(8), name=f"win{i}", reset_less=True) for i in range(2 * P)]
        x, w = window[:P], window[P:]
        cmd_byte = Signal(8)  # not "byte": a SystemVerilog keyword

        prods = [Signal(signed(16), name=f"prod{i}", reset_less=True) for i in range(P)]
        level, depth = prods, 0
        # Free-running registered adder tree: once the products stop changing its output
        # settles after `depth` cycles, which the FSM waits out.
        while len(level) > 1:
            nxt = []
            for j in range(0, len(level), 2):
                pair = level[j:j + 2]
                acc = Signal(signed(len(pair[0]) + 1), name=f"sum{depth}_{j // 2}", reset_less=True)
                m.d.sync += acc.eq(pair[0] + pair[1] if len(pair) == 2 else pair[0])
                nxt.append(acc)
            level, depth = nxt, depth + 1
        total = level[0]
        # Fold every bit of the dot product into the answer byte; answering with only its low
        # byte would let Yosys trim the multipliers to 8-bit results (and off the DSPs).
        total24 = Signal(signed(24))
        fold = Signal(8)
        m.d.comb += [total24.eq(total), fold.eq(total24[0:8] ^ total24[8:16] ^ total24[16:24])]

        wait = Signal(range(depth + 1))
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += cmd_byte.eq(self.cmd.payload)
                    # Products of the old window; the byte shifts in at the same edge.
                    m.d.sync += [p.eq(a * b) for p, a, b in zip(prods, x, w)]
                    m.d.sync += window[0].eq(self.cmd.payload)
                    m.d.sync += [window[i].eq(window[i - 1]) for i in range(1, 2 * P)]
                    m.d.sync += wait.eq(depth)
                    m.next = "SUM"
            with m.State("SUM"):
                with m.If(wait == 0):
                    m.next = "SEND"
                with m.Else():
                    m.d.sync += wait.eq(wait - 1)
            with m.State("SEND"):
                m.d.comb += [self.rsp.valid.eq(1), self.rsp.payload.eq(cmd_byte + fold)]
                with m.If(self.rsp.ready):
                    m.next = "IDLE"
        return m


def echo_core_reference(data, lanes):
    """Bytes :class:`EchoCore` answers to the command bytes ``data`` (from an all-zero window)."""
    window = [0] * (2 * lanes)
    out = bytearray()
    for b in data:
        dot = sum(window[i] * window[lanes + i] for i in range(lanes)) & 0xFFFFFF
        out.append((b + (dot ^ (dot >> 8) ^ (dot >> 16))) & 0xFF)
        window = [b - 256 if b >= 128 else b] + window[:-1]
    return bytes(out)


def _check_core(core):
    sig = getattr(core, "signature", None)
    members = dict(sig.members) if sig is not None else {}
    expected = {"cmd": In(stream.Signature(8)), "rsp": Out(stream.Signature(8))}
    if members != expected:
        raise ValueError(f"core {type(core).__name__} must have exactly the ports "
                         f"cmd: In(stream.Signature(8)) and rsp: Out(stream.Signature(8)); "
                         f"it has {sig!r}")


class FlopFIFO(fifo.SyncFIFO):
    """``lib.fifo.SyncFIFO`` with its storage in flip-flops (``ram_style = "logic"``).

    As a block RAM (SyncFIFOBuffered, or SyncFIFO whose asynchronous read Yosys merges with the
    register after it into a synchronous block-RAM port) a byte FIFO puts the DP16KD's 5.8 ns
    clock-to-output in front of the SLIP decoder's or the transmitter's logic: the slowest paths
    of the routed smollm build. 32 bytes of flip-flops and a 32:1 multiplexer cost little."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.submodules.storage.attrs["ram_style"] = "logic"
        return m


class UartBridge(wiring.Component):
    """A core on a UART: bytes received on ``rx`` go to ``core.cmd``, ``core.rsp`` goes out ``tx``.

    A FIFO on each side decouples the core from the line, so a core that is busy for a while
    (or answers in bursts) loses nothing: the receiver cannot wait for the core, and the
    transmitter drains responses at line rate. The command FIFO must hold what the host sends
    while the core is busy; the host protocol's flow control is what bounds that.

    Parameters
    ----------
    core : wiring.Component
        With ``cmd: In(stream.Signature(8))`` and ``rsp: Out(stream.Signature(8))``.
    clk_freq : float
        Frequency of the ``sync`` clock in Hz.
    baud : int
        Line rate in bit/s (8N1).
    fifo_depth : int
        Bytes each FIFO holds.
    fifo_ram : "logic" or "block"
        Where the FIFOs keep their bytes: flip-flops (:class:`FlopFIFO`, the ECP5 builds) or a
        block RAM (``lib.fifo.SyncFIFOBuffered``: on the iCE40 UP5K 32 bytes of flip-flops and
        their multiplexer are ~570 of the 5,280 logic cells per FIFO, and at 24 MHz the block
        RAM's output is no timing concern).

    Members
    -------
    rx : In(1)
        Serial input, idle high.
    tx : Out(1)
        Serial output, idle high.
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)

    def __init__(self, core, clk_freq, baud=DEFAULT_BAUD, *, fifo_depth=32, fifo_ram="logic"):
        _check_core(core)
        if fifo_depth < 2:
            raise ValueError(f"UART bridge FIFO depth must be at least 2, got {fifo_depth}")
        if fifo_ram not in ("logic", "block"):
            raise ValueError(f"UART bridge fifo_ram must be 'logic' or 'block', got {fifo_ram!r}")
        self.fifo_ram = fifo_ram
        self.core = core
        self.clk_freq = clk_freq
        self.baud = baud
        self.divisor = baud_divisor(clk_freq, baud)
        self.fifo_depth = fifo_depth
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.uart_rx = uart_rx = UARTRx(self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(self.divisor)
        fifo_cls = FlopFIFO if self.fifo_ram == "logic" else fifo.SyncFIFOBuffered
        m.submodules.cmd_fifo = cmd_fifo = fifo_cls(width=8, depth=self.fifo_depth)
        m.submodules.rsp_fifo = rsp_fifo = fifo_cls(width=8, depth=self.fifo_depth)

        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        wiring.connect(m, uart_rx.data, cmd_fifo.w_stream)
        wiring.connect(m, cmd_fifo.r_stream, core.cmd)
        wiring.connect(m, core.rsp, rsp_fifo.w_stream)
        wiring.connect(m, rsp_fifo.r_stream, uart_tx.data)
        return m


def bridge_verilog(core, clk_freq, baud=DEFAULT_BAUD, *, name="uart_bridge", fifo_depth=32, fifo_ram="logic"):
    """Verilog of :class:`UartBridge` around ``core``: ports ``clk``, ``rst``, ``rx``, ``tx``."""
    bridge = UartBridge(core, clk_freq, baud, fifo_depth=fifo_depth, fifo_ram=fifo_ram)
    return verilog.convert(bridge, name=name)


class BoardTop(wiring.Component):
    """:class:`UartBridge` on a board's UART pins, clocked by a PLL at ``sync_mhz``.

    The PLL (EHXPLLL on ECP5, SB_PLL40_PAD on iCE40) multiplies the board oscillator up to the
    requested frequency; when that equals the oscillator, the pin drives the clock directly.
    ``sync`` stays in reset until the PLL locks and 15 µs more have passed (iCE40 block RAM
    reads zero for ~3 µs after configuration). LED 0 lights once the design runs.

    Parameters
    ----------
    core : wiring.Component
        The accelerator (see :class:`UartBridge`).
    family : "ecp5" or "ice40"
    ref_mhz : float
        Board oscillator frequency.
    sync_mhz : float
        Requested system clock; :attr:`sync_mhz` afterwards holds what the PLL achieves.
    baud : int
    """

    def __init__(self, core, *, family, ref_mhz, sync_mhz, baud=DEFAULT_BAUD, fifo_depth=32):
        if family not in ("ecp5", "ice40"):
            raise ValueError(f"unknown FPGA family {family!r}; expected 'ecp5' or 'ice40'")
        self.family = family
        self.ref_mhz = ref_mhz
        if abs(sync_mhz - ref_mhz) < 1e-9:
            self.pll = None
            self.sync_mhz = ref_mhz
        elif family == "ecp5":
            self.pll = ecp5_pll_params(ref_mhz, sync_mhz)
            self.sync_mhz = self.pll.fout_mhz
        else:
            self.pll = ice40_pll_params(ref_mhz, sync_mhz)
            self.sync_mhz = self.pll.fout_mhz
        # clocks `sync` stays in reset after the PLL locks (15 us)
        self.reset_cycles = max(1, int(15e-6 * self.sync_mhz * 1e6))
        # (the UP5K's logic cells are what a build runs out of, its block RAM is not)
        self.bridge = UartBridge(core, self.sync_mhz * 1e6, baud, fifo_depth=fifo_depth,
                                 fifo_ram="block" if family == "ice40" else "logic")
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        clk_io = platform.request(platform.default_clk, dir="-")
        clk = Signal()
        locked = Signal()
        if self.pll is None:
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_io)
            m.d.comb += [clk.eq(clk_buf.i), locked.eq(1)]
        elif self.family == "ecp5":
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_io)
            # nextpnr constrains the PLL output from the instance's FREQUENCY_PIN_CLKOP.
            m.submodules.pll = ecp5_pll(self.pll, clk_buf.i, clk, locked)
        else:
            # nextpnr-ice40 derives the output constraint from the PLL's dividers.
            m.submodules.pll = ice40_pll_pad(self.pll, clk_io, clk, locked)

        # Power-on reset, counted in a reset-less domain on the same clock: a counter that
        # starts at zero from configuration, restarts whenever the PLL loses lock.
        # The reset is a flip-flop, active high, straight into every register's LSR: no
        # compare logic and no inverter between it and the far end of the die (an inverted
        # `running` cost a LUT and a second routing hop on the worst path of the smollm build).
        delay = self.reset_cycles
        por_count = Signal(range(delay + 1))
        rst = Signal(init=1)
        m.domains.por = ClockDomain(reset_less=True, local=True)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += [ClockSignal("por").eq(clk), ClockSignal("sync").eq(clk), ResetSignal("sync").eq(rst)]
        with m.If(~locked):
            m.d.por += [por_count.eq(0), rst.eq(1)]
        with m.Elif(por_count != delay):
            m.d.por += por_count.eq(por_count + 1)
        with m.Else():
            m.d.por += rst.eq(0)

        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.submodules.bridge = bridge = self.bridge
        m.d.comb += [bridge.rx.eq(rx_buf.i), tx_buf.o.eq(bridge.tx)]
        # The LED (on: running) has a flip-flop of its own: driven by the reset register itself,
        # the pin pulled the design's reset source to the die's edge.
        led = Signal()
        m.d.por += led.eq(~rst)
        m.submodules.led_buf = led_buf = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.comb += led_buf.o.eq(led)
        return m

