"""Socket bridge: the simulated engine's ``cmd``/``rsp`` byte streams on a Unix socket.

This is a cocotb test module that never ends by itself: it listens on the Unix socket named by
``HMTX_BRIDGE_SOCKET`` (never a network address), accepts one host connection, and then moves
bytes — host → ``cmd`` port, ``rsp`` port → host — until the host closes the connection. The
host side (``hmtx.host.backends_sim.SimTransport``) starts and stops the simulator process.

It drives the ports itself, in one coroutine with two triggers per clock while bytes move,
instead of the general test-bench drivers (``hmtx.sim.streams``): the bridge carries whole
weight matrices, so every trigger counts, and it has no stall patterns to apply. While the
device computes (a response is owed, none is being sent) it holds ``rsp.ready`` low and sleeps
until ``rsp.valid`` rises; when no command is being sent and no response is owed, the
simulation does not advance at all: the bridge blocks on the socket.

The bridge knows only the framing (docs/protocol.md section 1): every non-empty frame sent to
the device is owed exactly one response frame, which ends with END. That is how it tells a
device that is computing (keep clocking) from one that is idle (wait for the host).

:class:`Loopback` is a trivial design with the engine's ports (a FIFO from ``cmd`` to ``rsp``)
for testing the bridge and the host transport without the engine.
"""

import os
import select
import socket
from collections import deque

from amaranth.hdl import Module
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Loopback", "bridge"]

END = 0xC0
POLL_CYCLES = 256          # while busy, look for new host bytes this often
CONNECT_TIMEOUT_S = 120


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


try:
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles, FallingEdge, First, ReadOnly, RisingEdge
except ImportError:        # imported outside a simulator for Loopback only
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

    def answered(self) -> None:
        self.owed = max(self.owed - 1, 0)


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

        Clock(dut.clk, 10, unit="ns").start(start_high=False)
        dut.cmd__valid.value = 0
        dut.cmd__payload.value = 0
        dut.rsp__ready.value = 0
        dut.rst.value = 1
        await ClockCycles(dut.clk, 4, rising=False)
        dut.rst.value = 0
        dut.rsp__ready.value = 1

        pending = deque()
        owed = _Owed()
        out = bytearray()
        cycle = 0
        connected = True

        def take(timeout) -> bool:
            """Read what the host sent (waiting up to ``timeout`` s); False once it has closed."""
            r, _, _ = select.select([conn], [], [], timeout)
            if not r:
                return True
            data = conn.recv(1 << 16)
            if not data:
                return False
            pending.extend(data)
            owed.sent(data)
            return True

        while connected:
            if not pending and not owed.owed:
                if out:
                    conn.sendall(out)
                    out.clear()
                connected = take(1.0)
                continue
            await FallingEdge(dut.clk)
            if not pending and not dut.rsp__valid.value:
                # The device is computing: let it run without Python in every cycle. rsp.ready
                # is low meanwhile, so no byte can pass unseen even if the wake-up is late.
                dut.cmd__valid.value = 0
                dut.rsp__ready.value = 0
                await First(RisingEdge(dut.rsp__valid), ClockCycles(dut.clk, POLL_CYCLES))
                if out:
                    conn.sendall(out)
                    out.clear()
                connected = take(0)
                continue
            dut.rsp__ready.value = 1
            if pending:
                dut.cmd__payload.value = pending[0]
                dut.cmd__valid.value = 1
            else:
                dut.cmd__valid.value = 0
            await ReadOnly()
            if pending and dut.cmd__ready.value:
                pending.popleft()
            if dut.rsp__valid.value:
                b = int(dut.rsp__payload.value)
                out.append(b)
                if b == END:
                    owed.answered()
                    conn.sendall(out)
                    out.clear()
            cycle += 1
            if cycle % POLL_CYCLES == 0:
                if out:
                    conn.sendall(out)
                    out.clear()
                connected = take(0)
        conn.close()
        dut._log.info(f"bridge: host closed the connection after {cycle} active cycles")
