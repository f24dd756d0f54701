"""Transaction-level drivers for Amaranth ``stream.Signature(8)`` ports under cocotb.

An Amaranth stream port named ``cmd`` appears in the generated Verilog as ``cmd__payload``,
``cmd__valid`` and ``cmd__ready``. :class:`ByteStreamSource` drives such an input port from a
queue of bytes, inserting random idle cycles; :class:`ByteStreamSink` takes bytes from an output
port, applying random backpressure, and keeps a timestamped record of every byte it accepted.

Timing discipline: both drivers change their outputs just after the falling clock edge and
sample the handshake in the ReadOnly phase of that same half cycle, when every combinational
path has settled and nothing changes until the rising edge that performs the transfer. This gives
the same answer on an event-driven simulator (Icarus) and on Verilator, where a RisingEdge
callback already sees post-edge register values.
"""

import random
from collections import deque
from dataclasses import dataclass

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, FallingEdge, ReadOnly, RisingEdge, with_timeout

__all__ = ["Stalls", "ByteStreamSource", "ByteStreamSink"]


@dataclass(frozen=True)
class Stalls:
    """A random stall pattern: before each transfer, with probability ``prob``, pause for
    1..``max_run`` cycles. ``Stalls()`` never stalls."""

    prob: float = 0.0
    max_run: int = 4
    name: str = "none"

    def __post_init__(self):
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"stall probability must be in [0, 1], got {self.prob}")
        if self.max_run < 1:
            raise ValueError(f"stall max_run must be >= 1, got {self.max_run}")

    def draw(self, rng: random.Random) -> int:
        if self.prob and rng.random() < self.prob:
            return rng.randint(1, self.max_run)
        return 0


def _port(dut, prefix: str, field: str):
    try:
        return getattr(dut, f"{prefix}__{field}")
    except AttributeError:
        raise ValueError(f"toplevel has no port {prefix}__{field}; is {prefix!r} a stream.Signature(8) member?") from None


class ByteStreamSource:
    """Drives bytes into a valid/ready input port, with random idle cycles between bytes."""

    def __init__(self, dut, prefix: str, clk, *, stalls: Stalls = Stalls(), rng: random.Random | None = None):
        self.clk = clk
        self.payload = _port(dut, prefix, "payload")
        self.valid = _port(dut, prefix, "valid")
        self.ready = _port(dut, prefix, "ready")
        self.stalls = stalls
        self.rng = rng or random.Random(0)
        self.sent = 0
        self._queue = deque()
        self._current = None
        self._wake = Event()
        self._drained = Event()
        self._drained.set()
        self.valid.value = 0
        self.payload.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, data: bytes) -> None:
        """Queue bytes; they go out in order, as fast as the stall pattern and ``ready`` allow."""
        if data:
            self._queue.extend(bytes(data))
            self._drained.clear()
            self._wake.set()

    @property
    def idle(self) -> bool:
        return self._current is None and not self._queue

    async def wait_sent(self) -> None:
        """Return once every queued byte has been accepted by the device."""
        await self._drained.wait()

    def flush(self) -> None:
        """Drop everything not yet accepted (used around a reset)."""
        self._queue.clear()
        self._current = None
        self.valid.value = 0
        self._drained.set()

    async def _run(self):
        stall = 0
        while True:
            await FallingEdge(self.clk)
            if self._current is None:
                if not self._queue:
                    self.valid.value = 0
                    self._drained.set()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if stall:
                    stall -= 1
                    self.valid.value = 0
                    continue
                self._current = self._queue.popleft()
            self.payload.value = self._current
            self.valid.value = 1
            await ReadOnly()
            if self.ready.value:
                # Accepted at the coming rising edge.
                self._current = None
                self.sent += 1
                stall = self.stalls.draw(self.rng)


class ByteStreamSink:
    """Accepts bytes from a valid/ready output port, with random backpressure.

    ``record`` holds ``(cycle, byte)`` for every accepted byte: two runs of the same design and
    seed (RTL and gate level) must produce identical records.
    """

    def __init__(self, dut, prefix: str, clk, *, period_ns: float, stalls: Stalls = Stalls(),
                 rng: random.Random | None = None, rst=None):
        self.clk = clk
        self.rst = rst
        self.prefix = prefix
        # Cycle numbers in ``record`` count from here (the TB moves it to each reset release),
        # so records from simulators that start the clock differently line up.
        self.origin_ns = 0.0
        self.period_ns = period_ns
        self.payload = _port(dut, prefix, "payload")
        self.valid = _port(dut, prefix, "valid")
        self.ready = _port(dut, prefix, "ready")
        self.stalls = stalls
        self.rng = rng or random.Random(0)
        self.record = []
        self._rx = deque()
        self._arrived = Event()
        self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    def __len__(self) -> int:
        return len(self._rx)

    def flush(self) -> bytes:
        """Discard and return everything received but not yet read."""
        data = bytes(self._rx)
        self._rx.clear()
        return data

    async def recv(self, n: int, timeout_cycles: int) -> bytes:
        """Read exactly ``n`` bytes; raise ``TimeoutError`` if they do not all arrive within
        ``timeout_cycles`` clock cycles (the device never hangs the test bench)."""
        async def wait_for_bytes():
            while len(self._rx) < n:
                self._arrived.clear()
                await self._arrived.wait()
        if len(self._rx) < n:
            try:
                await with_timeout(wait_for_bytes(), timeout_cycles * self.period_ns, "ns")
            except cocotb.triggers.SimTimeoutError:
                got = bytes(self._rx)
                raise TimeoutError(
                    f"watchdog: waited {timeout_cycles} cycles for {n} response bytes, "
                    f"got {len(got)}: {got.hex(' ')}") from None
        return bytes(self._rx.popleft() for _ in range(n))

    async def recv_until(self, terminator: int, timeout_cycles: int) -> bytes:
        """Read up to and including the next ``terminator`` byte (e.g. a SLIP END), with the same
        watchdog as :meth:`recv`."""
        async def wait_for_terminator():
            while terminator not in self._rx:
                self._arrived.clear()
                await self._arrived.wait()
        if terminator not in self._rx:
            try:
                await with_timeout(wait_for_terminator(), timeout_cycles * self.period_ns, "ns")
            except cocotb.triggers.SimTimeoutError:
                got = bytes(self._rx)
                raise TimeoutError(
                    f"watchdog: waited {timeout_cycles} cycles for a response ending in 0x{terminator:02X}, "
                    f"got {len(got)} bytes: {got[:64].hex(' ')}{' …' if len(got) > 64 else ''}") from None
        n = self._rx.index(terminator) + 1
        return bytes(self._rx.popleft() for _ in range(n))

    async def _run(self):
        stall = 0
        while True:
            await FallingEdge(self.clk)
            if stall:
                stall -= 1
                self.ready.value = 0
                continue
            self.ready.value = 1
            await ReadOnly()
            if self.rst is not None and str(self.rst.value) != "0":
                continue  # whatever the device shows while in reset is not a transfer
            valid = str(self.valid.value)
            if valid not in ("0", "1"):
                raise AssertionError(f"{self.prefix}__valid is {valid} outside reset (uninitialised state?)")
            if valid == "1":
                payload = self.payload.value
                if not payload.is_resolvable:
                    raise AssertionError(f"{self.prefix}__payload is {payload} while valid")
                byte = int(payload)
                self._rx.append(byte)
                # Transfers are sampled on falling edges, a whole number of periods after the origin;
                # round() absorbs the float error of large simulation times.
                cycle = round((get_sim_time("ns") - self.origin_ns) / self.period_ns)
                self.record.append((cycle, byte))
                self._arrived.set()
            else:
                # Nothing to take: sleep until valid rises instead of waking every cycle (a
                # device computing for thousands of cycles then costs no Python at all). Only a
                # settled high valid counts, so zero-delay glitches in a netlist change nothing.
                while True:
                    await RisingEdge(self.valid)
                    await ReadOnly()
                    if str(self.valid.value) == "1":
                        break
            # Backpressure is drawn after every transfer and when a response starts, so it also
            # lands on the first byte of a response.
            stall = self.stalls.draw(self.rng)
