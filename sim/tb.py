"""The test bench object shared by every cocotb test: clock, reset and the two byte streams.

Tests talk to :class:`TB` in transactions (send these bytes, expect that response) and never
touch pins. Every wait is bounded by a watchdog, so a device that stops answering fails the test
with a message instead of hanging the simulator.
"""

import os
import random

from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, FallingEdge

from .streams import ByteStreamSink, ByteStreamSource, Stalls

__all__ = ["TB", "STALL_PATTERNS", "test_seed"]

# Named stall patterns (cmd idle cycles, rsp backpressure) that tests take as a parameter and the
# coverage summary reports on. Idle runs stay well below any device idle timeout (>= 16 cycles).
STALL_PATTERNS = {
    "none": (Stalls(), Stalls()),
    "idle": (Stalls(0.3, 6, "idle"), Stalls()),
    "backpressure": (Stalls(), Stalls(0.4, 6, "backpressure")),
    "both": (Stalls(0.3, 6, "idle"), Stalls(0.4, 6, "backpressure")),
}


def test_seed() -> int:
    """The seed of this simulation run (cocotb's, which the pytest entry sets from HMTX_SEED)."""
    import cocotb
    return int(cocotb.RANDOM_SEED)


class TB:
    """Clock, reset and the ``cmd``/``rsp`` byte streams of a toplevel with the engine's ports.

    Parameters
    ----------
    dut : cocotb handle of the toplevel (ports clk, rst, cmd__*, rsp__*).
    stalls : str
        A key of :data:`STALL_PATTERNS`.
    seed : int
        Seeds the stall generators; the same seed gives the same cycle-by-cycle stimulus.
    period_ns : float
        Clock period.
    """

    def __init__(self, dut, *, stalls: str = "none", seed: int = 0, period_ns: float = 10):
        if stalls not in STALL_PATTERNS:
            raise ValueError(f"unknown stall pattern {stalls!r}; choose one of {', '.join(STALL_PATTERNS)}")
        self.dut = dut
        self.log = dut._log
        self.clk = dut.clk
        self.period_ns = period_ns
        self.stalls = stalls
        self.rng = random.Random(seed)
        cmd_stalls, rsp_stalls = STALL_PATTERNS[stalls]
        # Held in reset until the test calls reset(): nothing is sampled before the design is
        # initialised (Icarus shows X there, and so does a netlist without power-up values).
        dut.rst.value = 1
        Clock(dut.clk, period_ns, unit="ns").start(start_high=False)
        self.source = ByteStreamSource(dut, "cmd", dut.clk, stalls=cmd_stalls,
                                       rng=random.Random(self.rng.getrandbits(32)))
        self.sink = ByteStreamSink(dut, "rsp", dut.clk, period_ns=period_ns, stalls=rsp_stalls,
                                   rng=random.Random(self.rng.getrandbits(32)), rst=dut.rst)

    def set_stalls(self, stalls: str) -> None:
        """Switch both streams to another named stall pattern."""
        if stalls not in STALL_PATTERNS:
            raise ValueError(f"unknown stall pattern {stalls!r}; choose one of {', '.join(STALL_PATTERNS)}")
        self.stalls = stalls
        self.source.stalls, self.sink.stalls = STALL_PATTERNS[stalls]

    async def reset(self, cycles: int = 4) -> None:
        """Assert ``rst`` for ``cycles`` clocks; whatever was queued or half-received is dropped."""
        await FallingEdge(self.clk)
        self.source.flush()
        self.dut.rst.value = 1
        await ClockCycles(self.clk, cycles, rising=False)
        self.dut.rst.value = 0
        self.sink.flush()
        self.sink.origin_ns = get_sim_time("ns")

    async def cycles(self, n: int) -> None:
        await ClockCycles(self.clk, n, rising=False)

    def send(self, data: bytes) -> None:
        """Queue command bytes without waiting (frames may be pipelined)."""
        self.source.send(data)

    async def recv(self, n: int, timeout_cycles: int = 5000) -> bytes:
        return await self.sink.recv(n, timeout_cycles)

    async def recv_until(self, terminator: int, timeout_cycles: int = 5000) -> bytes:
        return await self.sink.recv_until(terminator, timeout_cycles)

    async def transact(self, data: bytes, n_response: int, timeout_cycles: int = 5000) -> bytes:
        """Send a command and read back exactly ``n_response`` bytes."""
        self.send(data)
        return await self.recv(n_response, timeout_cycles)

    async def quiet(self, cycles: int) -> None:
        """Wait until every queued byte is accepted, then keep the command line idle."""
        await self.source.wait_sent()
        await self.cycles(cycles)

    async def expect_silence(self, cycles: int) -> None:
        """Fail if the device sends anything within ``cycles`` clocks."""
        await self.cycles(cycles)
        extra = self.sink.flush()
        assert not extra, f"device sent {len(extra)} unexpected bytes: {extra.hex(' ')}"

    def save_record(self, name: str) -> str | None:
        """Write the cycle-stamped response record to $HMTX_SIM_OUT/<name>.txt (for RTL vs gate)."""
        out = os.environ.get("HMTX_SIM_OUT")
        if not out:
            return None
        path = os.path.join(out, f"{name}.txt")
        with open(path, "w") as f:
            f.writelines(f"{cycle} {byte:02x}\n" for cycle, byte in self.sink.record)
        return path
