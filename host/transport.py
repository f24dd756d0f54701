"""The byte-transport interface and the serial port, which every backend builds on.

A transport has ``write(bytes)``, ``read(timeout) -> bytes`` (whatever arrived, at least one
byte, or ``b""`` when ``timeout`` seconds passed without any) and ``close()``. A transport
whose far end has gone away raises :class:`ConnectionError` from ``read``/``write``.
:func:`hmtx.host.backends.open_transport` opens one by name.
"""

__all__ = ["Transport", "SerialTransport", "parse_serial_spec", "DEFAULT_BAUD"]

# = hmtx.hw.board.DEFAULT_BAUD, what `hmtx synth` builds by default (tests/test_board_sim.py checks)
DEFAULT_BAUD = 3_000_000


class Transport:
    """Interface of a byte transport (see the module docstring)."""

    name = "transport"
    # The engine kind (hmtx.model.protocol.ENGINES) behind the transport when the transport knows
    # it (the simulations); None for a serial port. The device's INFO says it too (protocol 1.1):
    # host.device.Device checks that the two agree.
    engine: str | None = None

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
        # Returns once the bytes are handed to the OS (write_timeout bounds that), not when they
        # have left the UART: no flush()/tcdrain, so a posted command's own wire time overlaps
        # with the host's work too (host/device.py, split-phase commands). The answer's timeout
        # covers the rest of the transmission.
        try:
            self._port.write(data)
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
