"""Byte transports to an hmtx device. They only move bytes; ``hmtx.host.device`` speaks the protocol.

A transport has ``write(bytes)``, ``read(timeout) -> bytes`` (whatever arrived, at least one
byte, or ``b""`` when ``timeout`` seconds passed without any) and ``close()``. A transport
whose far end has gone away raises :class:`ConnectionError` from ``read``/``write``.

``open_transport(spec, config)`` understands:

``golden``
    :class:`GoldenTransport`: the golden device in this process (no simulator, no hardware).
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

__all__ = ["Transport", "GoldenTransport", "SerialTransport", "FaultInjector", "open_transport", "DEFAULT_BAUD"]

# = hmtx.hw.board.DEFAULT_BAUD, what `hmtx synth` builds by default (tests/test_board_sim.py checks)
DEFAULT_BAUD = 3_000_000


class Transport:
    """Interface of a byte transport (see the module docstring)."""

    name = "transport"

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read(self, timeout: float) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GoldenTransport(Transport):
    """The golden device behind a byte pipe: responses appear as soon as their frame is written."""

    name = "golden"

    def __init__(self, config: EngineConfig, device: GoldenDevice | None = None):
        self.device = device if device is not None else GoldenDevice(config)
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


class SerialTransport(Transport):
    """A serial port (UART to a board running the bitstream, or a pseudo-terminal in tests)."""

    def __init__(self, port: str, baud: int = DEFAULT_BAUD):
        try:
            import serial
        except ImportError:
            raise ValueError("the serial backend needs pyserial (pip install pyserial==3.5)") from None
        self.name = f"serial:{port}"
        self.baud = baud
        try:
            self._port = serial.serial_for_url(port, baudrate=baud, timeout=0, write_timeout=10)
        except (serial.SerialException, ValueError) as e:
            raise ValueError(f"cannot open serial port {port!r}: {e}") from None
        self._serial = serial

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except (self._serial.SerialException, OSError) as e:
            raise ConnectionError(f"{self.name}: write failed: {e}") from None

    def read(self, timeout: float) -> bytes:
        try:
            self._port.timeout = max(timeout, 0)
            first = self._port.read(1)
            if not first:
                return b""
            self._port.timeout = 0
            return first + self._port.read(self._port.in_waiting or 0)
        except (self._serial.SerialException, OSError) as e:
            raise ConnectionError(f"{self.name}: read failed: {e}") from None

    def close(self) -> None:
        self._port.close()


def parse_serial_spec(spec: str) -> tuple[str, int]:
    """``serial:PORT[@BAUD]`` -> (PORT, BAUD)."""
    rest = spec[len("serial:"):]
    port, baud = rest, DEFAULT_BAUD
    if "@" in rest and not rest.startswith(("socket://", "rfc2217://", "loop://")):
        port, _, b = rest.rpartition("@")
        try:
            baud = int(b)
        except ValueError:
            raise ValueError(f"device {spec!r}: baud rate {b!r} is not an integer") from None
    if not port:
        raise ValueError(f"device {spec!r}: give a port, e.g. serial:/dev/ttyUSB0 or serial:/dev/ttyUSB0@115200")
    return port, baud


def open_transport(spec: str, config: EngineConfig, *, waves: bool = False) -> Transport:
    """Open the transport named by ``spec`` (golden, sim[:ENGINE], serial:PORT[@BAUD])."""
    if spec == "golden":
        return GoldenTransport(config)
    if spec == "sim" or spec.startswith("sim:"):
        from .backends_sim import SimTransport
        engine = spec.partition(":")[2] or "lanes"
        return SimTransport(config, waves=waves, engine=engine)
    if spec.startswith("serial:"):
        port, baud = parse_serial_spec(spec)
        return SerialTransport(port, baud)
    if spec == "board-sim" or spec.startswith(("board-sim:", "board-sim@")):
        from .backends_board import BoardSimTransport, parse_board_sim_spec
        board_config, baud = parse_board_sim_spec(spec, config)
        return BoardSimTransport(board_config, baud=baud)
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
