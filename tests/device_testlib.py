"""Helpers for the device tests: run a recorded session through a transport, and serve a
transport on a pseudo-terminal (what a board on a UART looks like to the serial backend)."""

import os
import select
import threading

from hmtx.host.backends import FaultInjector, Transport
from hmtx.model import protocol as P
from hmtx.model.protocol import Status

__all__ = ["run_session", "Shuttle", "FaultOnNth", "Recorder", "responses", "xact", "ok"]


def run_session(transport: Transport, session) -> list[bytes]:
    """Send each entry of a session; collect the raw response frames it produced."""
    dec = P.FrameDecoder()
    got = []
    for label, raw in session:
        want = len(P.FrameDecoder().feed(raw))
        transport.write(raw)
        frames = []
        for _ in range(200):
            if len(frames) >= want:
                break
            frames += dec.feed(transport.read(0.5))
        assert len(frames) == want, f"{label}: {len(frames)} responses for {want} frames"
        got.append(b"".join(P.slip_escape(f.body) for f in frames))
    return got


class Shuttle:
    """Serves a Transport on a pseudo-terminal: what a serial port writes reaches the transport,
    what the transport answers goes back (a board on a UART, in software)."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.master, self.slave = os.openpty()
        self.port = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.01)
            if r:
                self.transport.write(os.read(self.master, 4096))
            out = self.transport.read(0.001)
            if out:
                os.write(self.master, out)

    def close(self):
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


class FaultOnNth(FaultInjector):
    """Flips bit ``bit`` of payload byte ``offset`` in the OK answer to the ``n``-th command with
    opcode ``op`` sent (1-based; CRC recomputed). Counted by command, not by when the host reads
    the answer, so it hits the same op whether the host waits for each answer or collects a
    posted command's answer later (one command in flight at most: the answer read after arming
    is that command's)."""

    def __init__(self, inner: Transport, op, n: int, offset: int, bit: int):
        super().__init__(inner)
        self.op, self.n, self.offset, self.bit, self.sent = int(op), n, offset, bit, 0

    def write(self, data: bytes) -> None:
        for f in P.FrameDecoder().feed(data):
            if f.body[:1] == bytes([self.op]):
                self.sent += 1
                if self.sent == self.n:
                    self.arm(self.op, self.offset, self.bit)
        super().write(data)


class Recorder(Transport):
    """Wraps a transport and appends to ``events`` (a shared list, so that other code can add
    its own marks) ``("send", opcode)`` for every command frame written and ``("answer",
    opcode)`` for every answer frame the host reads, in the order the host does them."""

    def __init__(self, inner: Transport, events: list):
        self.inner, self.events = inner, events
        self.name = inner.name
        self.sent = bytearray()             # every byte written, in order
        self._dec = P.FrameDecoder()

    def write(self, data: bytes) -> None:
        self.sent += data
        for f in P.FrameDecoder().feed(data):
            if f.body:
                self.events.append(("send", f.body[0]))
        self.inner.write(data)

    def read(self, timeout: float) -> bytes:
        data = self.inner.read(timeout)
        for f in self._dec.feed(data):
            if len(f.body) >= 2:
                self.events.append(("answer", f.body[1]))
        return data

    def close(self) -> None:
        self.inner.close()


# --- one command to a golden device (model/golden_device.py's feed), its answer decoded ----------
def responses(raw: bytes) -> list[P.Response]:
    return [P.decode_response(f) for f in P.FrameDecoder().feed(raw)]


def xact(dev, op, payload=b"") -> P.Response:
    (r,) = responses(dev.feed(P.encode_command(op, payload)))
    assert r.op == op
    return r


def ok(dev, op, payload=b"") -> bytes:
    r = xact(dev, op, payload)
    assert r.status == Status.OK, Status(r.status).name
    return r.payload
