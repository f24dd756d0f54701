"""Socket bridge: the simulated engine's ``cmd``/``rsp`` byte streams on a Unix socket.

This is a cocotb test module that never ends by itself: it listens on the Unix socket named by
``HMTX_BRIDGE_SOCKET`` (never a network address), accepts one host connection, and then moves
bytes — host → ``cmd`` port, ``rsp`` port → host — until the host closes the connection. The
host side (``hmtx.host.backends_sim.SimTransport``) starts and stops the simulator process.

Speed: the bridge carries whole weight matrices (2 · d · d_h bytes), and a cocotb trigger costs
tens of microseconds, so driving the byte streams from Python one clock at a time would make a
SmolLM2-sized run take minutes in transfers alone. The simulated toplevel is therefore
:class:`BlockBridge`, a thin wrapper around the engine (which it instantiates unchanged): Python
loads up to ``BLOCK`` command bytes at once into a shift register that feeds ``cmd`` one byte
per ``ready``, and the wrapper collects ``rsp`` bytes into another shift register that Python
empties when it is full or holds a frame's END. Python wakes only on those events (or every
``POLL_CYCLES`` to look at the socket). When no command is being sent and no response is owed,
the simulation does not advance at all: the bridge blocks on the socket.

The bridge knows only the framing (docs/protocol.md section 1): every non-empty frame sent to
the device is owed exactly one response frame, which ends with END. That is how it tells a
device that is computing (keep clocking) from one that is idle (wait for the host).

:class:`Loopback` is a trivial design with the engine's ports (a FIFO from ``cmd`` to ``rsp``)
for testing the bridge and the host transport without the engine.
"""

import os
import select
import socket

from amaranth.hdl import Module, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model.protocol import END

__all__ = ["Loopback", "BlockBridge", "BLOCK", "bridge"]

BLOCK = 64                 # bytes per Python wake-up in each direction
POLL_CYCLES = 4096         # while the device computes, look at the socket this often
CONNECT_TIMEOUT_S = 120
PERIOD_NS = 10


class Loopback(wiring.Component):
    """Echoes every ``cmd`` byte on ``rsp`` through a 16-byte FIFO (a stand-in for bridge tests)."""

    cmd: In(stream.Signature(8))
    rsp: Out(stream.Signature(8))

    def __init__(self, config=None):
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=8, depth=16)
        m.d.comb += [
            q.w_data.eq(self.cmd.payload), q.w_en.eq(self.cmd.valid), self.cmd.ready.eq(q.w_rdy),
            self.rsp.payload.eq(q.r_data), self.rsp.valid.eq(q.r_rdy), q.r_en.eq(self.rsp.ready),
        ]
        return m


class BlockBridge(wiring.Component):
    """Simulation-only wrapper: block transfers between cocotb and a core's byte streams.

    Parameters
    ----------
    core : wiring.Component
        The design under test, with ``cmd: In(stream.Signature(8))`` and ``rsp: Out(...)``.
    block : int
        Bytes per block.

    Members
    -------
    in_data : In(8 * block)
        Command bytes, the first in the low byte.
    in_count : In(range(block + 1))
        How many of them are valid.
    in_load : In(1)
        Load ``in_data``/``in_count`` at this clock edge; honoured only while ``in_empty``.
    in_empty : Out(1)
        Every loaded byte has been accepted by the core.
    out_data : Out(8 * block)
        Response bytes collected so far: the ``out_count`` most significant bytes, oldest lowest.
    out_count : Out(range(block + 1))
    out_full : Out(1)
        Collection stopped: the block is full or its last byte is END. ``rsp.ready`` is low.
    out_ack : In(1)
        Empties the collected block (at this clock edge).
    """

    def __init__(self, core, block: int = BLOCK):
        self.core = core
        self.block = block
        super().__init__({
            "in_data": In(8 * block), "in_count": In(range(block + 1)), "in_load": In(1), "in_empty": Out(1),
            "out_data": Out(8 * block), "out_count": Out(range(block + 1)), "out_full": Out(1), "out_ack": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        n = self.block
        ibuf, icnt = Signal(8 * n), Signal(range(n + 1))
        m.d.comb += [self.in_empty.eq(icnt == 0), core.cmd.payload.eq(ibuf[:8]), core.cmd.valid.eq(icnt != 0)]
        with m.If(self.in_load & (icnt == 0)):
            m.d.sync += [ibuf.eq(self.in_data), icnt.eq(self.in_count)]
        with m.Elif(core.cmd.valid & core.cmd.ready):
            m.d.sync += [ibuf.eq(ibuf >> 8), icnt.eq(icnt - 1)]

        obuf, ocnt, got_end = Signal(8 * n), Signal(range(n + 1)), Signal()
        full = got_end | (ocnt == n)
        m.d.comb += [core.rsp.ready.eq(~full), self.out_full.eq(full),
                     self.out_data.eq(obuf), self.out_count.eq(ocnt)]
        with m.If(self.out_ack):
            m.d.sync += [ocnt.eq(0), got_end.eq(0)]
        with m.Elif(core.rsp.valid & ~full):
            # Shift in from the top: after k bytes they are the k most significant, oldest lowest.
            m.d.sync += [obuf.eq((obuf >> 8) | (core.rsp.payload << (8 * (n - 1)))), ocnt.eq(ocnt + 1),
                         got_end.eq(core.rsp.payload == END)]
        return m


try:
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles, FallingEdge, First, RisingEdge, Timer
except ImportError:        # imported outside a simulator (for the Amaranth classes)
    cocotb = None


class _Owed:
    """Counts the response frames the device owes: one per non-empty frame sent to it."""

    def __init__(self):
        self.owed = 0
        self._open = False

    def sent(self, data: bytes) -> None:
        for b in data:
            if b == END:
                if self._open:
                    self.owed += 1
                self._open = False
            else:
                self._open = True

    def answered(self, data: bytes) -> None:
        self.owed = max(self.owed - data.count(END), 0)


if cocotb is not None:
    @cocotb.test()
    async def bridge(dut):
        path = os.environ.get("HMTX_BRIDGE_SOCKET")
        if not path:
            raise ValueError("HMTX_BRIDGE_SOCKET is not set: the bridge is started by hmtx.host.backends_sim")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)
        srv.settimeout(CONNECT_TIMEOUT_S)
        try:
            conn, _ = srv.accept()
        finally:
            srv.close()
        conn.settimeout(None)
        dut._log.info(f"bridge: host connected on {path}")

        block = len(dut.in_data) // 8
        Clock(dut.clk, PERIOD_NS, unit="ns").start(start_high=False)
        for sig in (dut.in_data, dut.in_count, dut.in_load, dut.out_ack):
            sig.value = 0
        dut.rst.value = 1
        await ClockCycles(dut.clk, 4, rising=False)
        dut.rst.value = 0

        pending = bytearray()
        owed = _Owed()
        wakeups = 0
        connected = True

        def take(timeout) -> bool:
            """Read what the host sent (waiting up to ``timeout`` s); False once it has closed."""
            r, _, _ = select.select([conn], [], [], timeout)
            if not r:
                return True
            try:
                data = conn.recv(1 << 16)
            except ConnectionError:        # the host process died: same as hanging up
                return False
            if not data:
                return False
            pending.extend(data)
            owed.sent(data)
            return True

        while connected:
            if not pending and not owed.owed:
                connected = take(1.0)
                continue
            # At a falling edge every signal has settled and nothing changes before the next
            # rising edge, so reading the flags and writing the strobes here is race-free.
            await FallingEdge(dut.clk)
            wakeups += 1
            acted = False
            if dut.out_full.value:
                k = int(dut.out_count.value)
                data = dut.out_data.value.to_unsigned().to_bytes(block, "little")[block - k:]
                try:
                    conn.sendall(data)
                except ConnectionError:
                    break
                owed.answered(data)
                dut.out_ack.value = 1
                acted = True
            if pending and dut.in_empty.value:
                chunk = bytes(pending[:block])
                del pending[:block]
                dut.in_data.value = int.from_bytes(chunk, "little")
                dut.in_count.value = len(chunk)
                dut.in_load.value = 1
                acted = True
            if acted:
                # The strobes act at the coming rising edge; drop them at the next falling edge.
                await FallingEdge(dut.clk)
                dut.out_ack.value = 0
                dut.in_load.value = 0
                continue
            # Nothing to do until the core has taken the block or filled/ended a response block.
            # (A Timer is one callback; ClockCycles would run Python at every clock.)
            wait = [RisingEdge(dut.out_full), Timer(POLL_CYCLES * PERIOD_NS + PERIOD_NS // 2, "ns")]
            if pending:
                wait.append(RisingEdge(dut.in_empty))
            await First(*wait)
            connected = take(0)
        conn.close()
        dut._log.info(f"bridge: host closed the connection after {wakeups} wake-ups")
