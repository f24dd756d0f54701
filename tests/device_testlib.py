"""Helpers for the device tests: run a recorded session through a transport, and serve a
transport on a pseudo-terminal (what a board on a UART looks like to the serial backend)."""

import os
import select
import threading

from hmtx.host.backends import Transport
from hmtx.model import protocol as P

__all__ = ["run_session", "Shuttle"]


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
