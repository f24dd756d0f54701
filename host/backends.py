"""Byte transports to an hmtx device. They only move bytes; ``hmtx.host.device`` speaks the protocol.

The interface (``write``/``read``/``close``, :class:`~hmtx.host.transport.Transport`) and the
serial port are in :mod:`hmtx.host.transport`, which the ``sim`` and ``board-sim`` backends build
on; this module opens any backend by name.

``open_transport(spec, config)`` understands:

``golden``
    :class:`GoldenTransport`: the golden device in this process (no simulator, no hardware). It
    speaks protocol 1.3 (contract 1) unless opened with ``contract=2`` (protocol 2.2).
``serial:PORT`` or ``serial:PORT@BAUD``
    :class:`SerialTransport`: a UART via pyserial (PORT may also be a pyserial URL).
``sim`` or ``sim:ENGINE``
    :class:`hmtx.host.backends_sim.SimTransport`: the generated Verilog under Verilator and
    cocotb in a child process, over a Unix socket; ENGINE is HmtxTop's engine, ``lanes``
    (default) or ``serial``.
``board-sim``, ``board-sim:CONFIG``, optionally ``@BAUD``
    :class:`hmtx.host.backends_board.BoardSimTransport`: the virtual board (the board top that
    ``hmtx synth`` builds, UART included, under Verilator behind a pseudo-terminal), started
    for the connection and reached through :class:`SerialTransport`. CONFIG defaults to the
    host's engine config.
"""

import collections
import time

from hmtx.model.configs import EngineConfig
from hmtx.model.golden_device import GoldenDevice
from hmtx.model.protocol import VERSIONS

from .transport import DEFAULT_BAUD, SerialTransport, Transport, parse_serial_spec

__all__ = ["Transport", "GoldenTransport", "SerialTransport", "FaultInjector", "open_transport", "DEFAULT_BAUD",
           "parse_serial_spec", "check_contract"]


class GoldenTransport(Transport):
    """The golden device behind a byte pipe: responses appear as soon as their frame is written.
    By default it models the lane engine's gateware (``GoldenDevice``'s default,
    ``gateware_version("lanes", contract)``), so that it answers byte for byte as that RTL does;
    ``version`` another minor of its contract -- ``hmtx run --device golden`` opens it with this
    host's newest (``VERSIONS``)."""

    name = "golden"

    def __init__(self, config: EngineConfig, device: GoldenDevice | None = None, contract: int = 1, version=None):
        self.device = device if device is not None else GoldenDevice(config, contract=contract, version=version)
        self._rx = collections.deque()
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionError("golden transport is closed")
        out = self.device.feed(data)
        if out:
            self._rx.append(out)

    def read(self, timeout: float) -> bytes:
        if self._closed:
            raise ConnectionError("golden transport is closed")
        if not self._rx:
            # Only a lost frame leaves nothing to read; behave like a silent line.
            time.sleep(max(timeout, 0))
            return b""
        data = b"".join(self._rx)
        self._rx.clear()
        return data

    def close(self) -> None:
        self._closed = True


def check_contract(spec: str, contract: int | None) -> None:
    """ValueError when ``contract`` is not one the project defines (None: the device's own), before
    anything starts: the golden device and the simulated gateware are built for any contract; a
    serial device says what it computes in its INFO, checked when it is opened
    (:class:`hmtx.host.device.Device`)."""
    from hmtx.model.protocol import CONTRACTS
    if contract is not None and contract not in CONTRACTS:
        raise ValueError(f"unknown contract {contract!r}; choose one of {CONTRACTS}")


def open_transport(spec: str, config: EngineConfig, *, waves: bool = False, contract: int | None = None) -> Transport:
    """Open the transport named by ``spec`` (golden, sim[:ENGINE], serial:PORT[@BAUD]).
    ``contract``: the arithmetic contract the caller needs (None: the device's own); the golden
    device and the simulated HmtxTop and board top are built for it (default 1)."""
    check_contract(spec, contract)
    if spec == "golden":
        return GoldenTransport(config, contract=contract or 1, version=VERSIONS[contract or 1])
    if spec == "sim" or spec.startswith("sim:"):
        from .backends_sim import SimTransport
        engine = spec.partition(":")[2] or "lanes"
        return SimTransport(config, waves=waves, engine=engine, contract=contract or 1)
    if spec.startswith("serial:"):
        port, baud = parse_serial_spec(spec)
        return SerialTransport(port, baud)
    if spec == "board-sim" or spec.startswith(("board-sim:", "board-sim@")):
        from .backends_board import BoardSimTransport, parse_board_sim_spec
        board_config, baud = parse_board_sim_spec(spec, config)
        return BoardSimTransport(board_config, baud=baud, contract=contract or 1)
    raise ValueError(f"unknown device {spec!r}; use golden, sim[:ENGINE], serial:PORT[@BAUD] or "
                     f"board-sim[:CONFIG][@BAUD]")


class FaultInjector(Transport):
    """Wraps a transport and flips one bit in the payload of the next OK response to ``op``
    once armed, re-computing the frame's CRC — a device that computed a wrong answer, as far as
    the host can tell. For testing the runtime's checker (``hmtx run --inject-fault``)."""

    def __init__(self, inner: Transport):
        from hmtx.model import protocol as P
        self._P = P
        self.inner = inner
        self.name = inner.name
        self._armed = None
        self._decoder = P.FrameDecoder()
        self.injected = 0

    def arm(self, op: int, byte_offset: int, bit: int) -> None:
        if not 0 <= bit < 8 or byte_offset < 0:
            raise ValueError(f"fault: byte offset {byte_offset} and bit {bit} (0..7) out of range")
        self._armed = (int(op), byte_offset, bit)

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def read(self, timeout: float) -> bytes:
        data = self.inner.read(timeout)
        if not data or (self._armed is None and not self._decoder.pending):
            return data
        P = self._P
        out = bytearray()
        for f in self._decoder.feed(data):
            body = bytearray(f.body)
            op, off, bit = self._armed or (None, 0, 0)
            if (self._armed and not f.error and len(body) > 3 + off and body[0] == P.Status.OK
                    and body[1] == op):
                body[2 + off] ^= 1 << bit
                body[-1] = P.crc8(body[:-1])
                self._armed = None
                self.injected += 1
            out += P.slip_escape(bytes(body))
        return bytes(out)

    def close(self) -> None:
        self.inner.close()
