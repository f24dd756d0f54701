"""The one host-side interface to an hmtx device, over the wire protocol (docs/protocol.md).

:class:`Device` turns method calls into command frames, sends them through a byte transport
(``hmtx.host.backends``: golden model, simulator, serial port), and decodes the responses.
Every transaction has a timeout. A device error status raises :class:`DeviceError` naming the
op and the status, and the connection stays usable. A response that does not decode or does
not arrive raises :class:`ProtocolError` after the link has been resynchronized, so the next
call starts clean: the host sends END and a marker command with an opcode the device never
assigns (``protocol.RESYNC_OPS``) and drops every frame until the BAD_OPCODE answer echoing
that marker arrives. The device answers in order, so once that answer is in, no answer to an
earlier command can still arrive -- a late answer is never taken for a later command's
(docs/protocol.md section 7). A transaction cut short any other way (an exception, Ctrl-C)
leaves its answer owed, and the next call resynchronizes first. A device that answers none of
``len(RESYNC_OPS)`` markers in a row is declared dead (``ConnectionError``).

**Split-phase commands.** :meth:`Device.post` (or ``write_memory(..., wait=False)``) sends a
command and returns a :class:`Pending` handle without waiting for the answer, so that the host can
compute while the device works; :meth:`Pending.result` (or :meth:`Device.collect`) reads the answer
later. The link stays stop-and-wait (docs/protocol.md): at most one command is in flight, and any
other transaction -- a second ``post`` included -- first collects the pending one, in order. Its
errors keep the guarantees above and are raised when it is collected: a DeviceError naming its op,
a ProtocolError after the link has been resynchronized. If the collection is forced by another
call, that call raises the pending command's error and does not send its own command; the
handle keeps the error and raises it again from ``result()``. :meth:`close` collects a pending
command too (and raises its error after closing the transport); leaving a ``with`` block on an
exception adds the pending command's error to that exception as a note instead of replacing it.

It also implements the device interface of ``hmtx.model.recall`` (``reset``, ``load_weights``,
``write``, ``recall``), so the HMT reference model can run its memory on it directly.
"""

import hashlib
import math
import time

import numpy as np

from hmtx.model import protocol as P
from hmtx.model.configs import EngineConfig
from hmtx.model.protocol import DeviceError, Op, ProtocolError, Status

from .backends import Transport, open_transport

__all__ = ["Device", "Pending", "DeviceError", "ProtocolError", "DEFAULT_TIMEOUTS"]

# Seconds per transaction by backend kind. The simulator runs a few ten thousand clock cycles
# per second, so its large frames need far longer than a UART at 1 Mbaud; the virtual board
# (board-sim) simulates every bit of the UART as well.
DEFAULT_TIMEOUTS = {"golden": 5.0, "serial": 5.0, "sim": 120.0, "board-sim": 600.0}


def _kind(name: str) -> str:
    return name.split(":", 1)[0]


class Pending:
    """A command sent with :meth:`Device.post` whose answer has not been read yet.

    ``result()`` collects the answer (waiting for it if needed; a call that forced the collection
    earlier left it here) and returns the decoded payload, or raises the command's error
    (DeviceError, ProtocolError, ConnectionError) -- every time it is asked, so nothing is lost.
    """

    def __init__(self, device: "Device", op: Op, decode=None):
        self.device = device
        self.op = op
        self._decode = decode
        self.done = False               # the answer was collected (or its error recorded)
        self.sent_at = time.monotonic()
        self._value = None
        self._error = None

    def result(self):
        if not self.done:
            self.device.collect()
        if self._error is not None:
            raise self._error
        return self._value

    def __repr__(self) -> str:
        state = "pending" if not self.done else ("failed" if self._error is not None else "done")
        return f"<Pending {self.op.name} on {self.device.name}: {state}>"


class Device:
    """A connected hmtx device.

    Parameters
    ----------
    transport : Transport
        Where the bytes go.
    config : EngineConfig or None
        The engine configuration the host expects; the device's INFO must match it. None: take
        the sizes from INFO.
    timeout : float or None
        Seconds to wait for each response (default by backend, :data:`DEFAULT_TIMEOUTS`).
    contract : int or None
        The arithmetic contract the host requires (1 or 2); a device whose INFO reports another
        is refused with a ValueError. None: whatever the device computes. Either way
        :attr:`contract` is the device's, from INFO's major version (docs/protocol.md).
    """

    def __init__(self, transport: Transport, config: EngineConfig | None = None, timeout: float | None = None,
                 contract: int | None = None):
        if contract is not None and contract not in P.CONTRACTS:
            raise ValueError(f"unknown contract {contract!r}; choose one of {P.CONTRACTS}")
        self.transport = transport
        self.timeout = DEFAULT_TIMEOUTS.get(_kind(transport.name), 10.0) if timeout is None else float(timeout)
        if not math.isfinite(self.timeout) or self.timeout <= 0:
            # NaN never expires and infinity never gives up on a silent device.
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        self._decoder = P.FrameDecoder()
        self._frames = []
        self.bytes_out = 0
        self.bytes_in = 0
        self.transactions = 0
        self._weights_key = None
        self._owed = False                  # a command was sent whose answer has not been read
        self._pending = None                # the posted command (Pending) whose answer is owed
        self._markers_out = []              # resync markers sent and not answered, oldest first
        self._next_marker = 0
        try:
            self.resync()
        except ProtocolError:
            raise ProtocolError(f"no answer from {self.name} within {self.timeout:g} s on opening (END and a "
                                f"resynchronization marker sent): is the device connected and running "
                                f"the hmtx design?") from None
        self.device_info = self.info()
        # The major version names the contract; one this host does not know is refused here
        # (ProtocolError naming both versions), before any command that depends on it.
        self.contract = self.device_info.contract
        if contract is not None and contract != self.contract:
            v = self.device_info.version
            raise ValueError(f"contract {contract} asked for, but {transport.name} speaks protocol {v[0]}.{v[1]} "
                             f"(contract {self.contract}); contract {contract} needs protocol "
                             f"{P.VERSIONS[contract][0]}.x")
        if config is None:
            i = self.device_info
            config = EngineConfig("device", i.d, i.d_h, i.n_slots, i.lanes, i.head_dim, i.max_queries, i.max_keys)
        else:
            bad = self.device_info.mismatches(config)
            if bad:
                raise ValueError(f"device on {transport.name} does not match config {config.name!r}: " + "; ".join(bad))
        self.config = config
        # RECALL's flags byte (1.2 / 2.1): the probabilities only when asked for. An older device
        # of a known major gets the frame without it and sends them always (what it always did).
        self.recall_flags = P.takes_recall_flags(self.device_info.version)
        # ATTN_PASS (1.3 / 2.2): attention rows longer than one tile; the serial engine's gateware
        # (1.2 / 2.1) lacks it.
        self.attn_pass_ok = P.takes_attn_pass(self.device_info.version)
        # The engine kind: INFO says (protocol 1.1); a 1.0 device does not, and then the
        # transport's knowledge (the simulations) or nothing.
        self.engine = self.device_info.engine or getattr(transport, "engine", None)
        known = getattr(transport, "engine", None)
        if known is not None and self.device_info.engine is not None and known != self.device_info.engine:
            raise ProtocolError(f"{transport.name} should hold the {known} engine, but its INFO reports "
                                f"the {self.device_info.engine} engine")

    @classmethod
    def open(cls, spec: str, config: EngineConfig, *, timeout: float | None = None, waves: bool = False,
             contract: int | None = None) -> "Device":
        """Connect to ``golden``, ``sim[:ENGINE]`` or ``serial:PORT[@BAUD]``. ``contract``: the one
        required (the golden device is built with it; see :func:`~hmtx.host.backends.open_transport`)."""
        transport = open_transport(spec, config, waves=waves, contract=contract)
        try:
            return cls(transport, config, timeout, contract)
        except BaseException:
            transport.close()
            raise

    @property
    def name(self) -> str:
        return self.transport.name

    def close(self) -> None:
        """Collect a posted command's answer, if one is owed, then close the transport; the
        posted command's error, if any, is raised after the transport is closed."""
        try:
            if self._pending is not None:
                self.collect()
        finally:
            self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            self.close()
            return
        # Already failing: a posted command's error must not replace that exception, nor be lost.
        try:
            self.close()
        except BaseException as e2:
            if isinstance(exc, BaseException) and hasattr(exc, "add_note"):
                exc.add_note(f"also, on closing {self.name}: {type(e2).__name__}: {e2}")

    # -- transactions -------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        self.transport.write(data)
        self.bytes_out += len(data)

    def _next_frame(self, deadline: float, what: str) -> P.Frame:
        while not self._frames:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError(f"{what}: no response from {self.name} within {self.timeout:g} s")
            data = self.transport.read(min(left, 0.5))
            self.bytes_in += len(data)
            self._frames.extend(self._decoder.feed(data))
        return self._frames.pop(0)

    def resync(self) -> bytes:
        """Bring the link back in step: END (ends any partial frame in the device), then a marker
        command whose opcode (one of ``P.RESYNC_OPS``) the device answers BAD_OPCODE, echoing it;
        every frame before that answer is dropped. Returns the dropped frames (wire form).
        Raises ProtocolError when the marker's answer does not come within the timeout (the link
        stays out of step; the next transaction tries again with another marker) and
        ConnectionError once no marker has been answered ``len(P.RESYNC_OPS)`` times in a row."""
        self._owed = True
        if self._pending is not None:
            # Called directly with a command posted: its answer is dropped with everything else.
            p, self._pending = self._pending, None
            p.done = True
            p._error = ProtocolError(f"{p.op.name}: its answer was dropped by a resynchronization of the link")
        if len(self._markers_out) >= len(P.RESYNC_OPS):
            raise ConnectionError(f"{self.name} answered none of the last {len(self._markers_out)} "
                                  f"resynchronization markers: the device is not responding (reopen it)")
        while P.RESYNC_OPS[self._next_marker] in self._markers_out:
            self._next_marker = (self._next_marker + 1) % len(P.RESYNC_OPS)
        marker = P.RESYNC_OPS[self._next_marker]
        self._next_marker = (self._next_marker + 1) % len(P.RESYNC_OPS)
        self._markers_out.append(marker)
        self._decoder = P.FrameDecoder()
        self._frames = []
        self._send(bytes([P.END]) + P.encode_command(marker))
        deadline = time.monotonic() + self.timeout
        dropped = bytearray()
        while True:
            try:
                frame = self._next_frame(deadline, "resynchronization")
            except ProtocolError:
                raise ProtocolError(f"no answer from {self.name} to the resynchronization marker within "
                                    f"{self.timeout:g} s (the link is out of step)") from None
            try:
                rsp = None if frame.error else P.decode_response(frame)
            except ProtocolError:
                rsp = None
            if rsp is not None and rsp.status == Status.BAD_OPCODE and not rsp.payload and rsp.op in self._markers_out:
                # In order: this marker's answer came after everything sent before it.
                del self._markers_out[:self._markers_out.index(rsp.op) + 1]
                if rsp.op == marker:
                    break
            dropped += P.slip_escape(frame.body)
        self._frames = []                 # nothing may follow the marker's answer; noise if it did
        self._owed = False
        return bytes(dropped)

    def transact(self, op: Op, payload: bytes = b"", timeout: float | None = None) -> bytes:
        """Send one command, return the OK response's payload.

        Raises DeviceError for an error status, ProtocolError for a lost or garbled response
        (after resynchronizing the link; a command whose answer is still owed from an earlier
        call is resynchronized before this one is sent). A posted command (:meth:`post`) is
        collected first; if that fails, its error is raised and this command is not sent.
        """
        op = Op(op)
        self.collect()
        try:
            self._start(op, payload)
            rsp = self._finish(op, time.monotonic() + (self.timeout if timeout is None else timeout))
        except ConnectionError as e:
            raise ConnectionError(f"{op.name} on {self.name}: {e}") from None
        if rsp.status != Status.OK:
            raise DeviceError(op, rsp.status)
        return rsp.payload

    def post(self, op: Op, payload: bytes = b"", decode=None) -> Pending:
        """Send one command without waiting for its answer; returns a :class:`Pending` whose
        ``result()`` gives the OK payload (passed through ``decode`` if given) or raises the
        command's error. A command posted earlier is collected first (its error is raised and
        this command is not sent): at most one command is ever in flight."""
        op = Op(op)
        self.collect()
        try:
            self._start(op, payload)
        except ConnectionError as e:
            raise ConnectionError(f"{op.name} on {self.name}: {e}") from None
        self._pending = Pending(self, op, decode)
        return self._pending

    @property
    def pending(self) -> Pending | None:
        """The posted command whose answer has not been collected yet, or None."""
        return self._pending

    def collect(self, timeout: float | None = None):
        """Read the answer to the posted command, if one is owed: returns its decoded payload
        (None when nothing was pending) or raises its error (DeviceError naming the op;
        ProtocolError after resynchronizing the link). The wait is ``timeout`` (default the
        device's) counted from now: the device has had the time since the post besides."""
        p = self._pending
        if p is None:
            return None
        self._pending = None
        p.done = True
        try:
            try:
                rsp = self._finish(p.op, time.monotonic() + (self.timeout if timeout is None else timeout))
            except ConnectionError as e:
                raise ConnectionError(f"{p.op.name} on {self.name}: {e}") from None
            if rsp.status != Status.OK:
                raise DeviceError(p.op, rsp.status)
            p._value = p._decode(rsp.payload) if p._decode is not None else rsp.payload
        except Exception as e:
            p._error = e
            raise
        except BaseException:
            # Interrupted (Ctrl-C): the answer stays owed (the next call resynchronizes).
            p._error = ProtocolError(f"{p.op.name}: collecting its answer was interrupted")
            raise
        return p._value

    def _start(self, op: Op, payload: bytes) -> None:
        """Send a command frame (resynchronizing first if an answer is owed); its answer is owed."""
        frame = P.encode_command(op, payload)
        if self._owed:
            try:
                self.resync()
            except ProtocolError as e:
                raise ProtocolError(f"{op.name} not sent: {e}") from None
        self.transactions += 1
        self._owed = True
        self._send(frame)

    def _finish(self, op: Op, deadline: float) -> P.Response:
        """Read and decode the answer owed to ``op``; resynchronize and raise on a bad one."""
        try:
            frame = self._next_frame(deadline, op.name)
            try:
                rsp = P.decode_response(frame)
            except ProtocolError as e:
                raise ProtocolError(f"{op.name}: {e}") from None
            if rsp.op != op:
                raise ProtocolError(f"{op.name}: response echoes {P.op_name(rsp.op)}")
            if rsp.status != Status.OK and rsp.payload:
                raise ProtocolError(f"{op.name}: error response {P.status_name(rsp.status)} carries a payload")
        except ProtocolError as e:
            try:
                self.resync()
            except ProtocolError as e2:
                raise ProtocolError(f"{e}; {e2}") from None
            raise
        self._owed = False
        return rsp

    # -- the operations ------------------------------------------------------------------------
    def info(self) -> P.Info:
        return P.unpack_info(self.transact(Op.INFO))

    def status(self) -> P.CacheStatus:
        return P.unpack_status(self.transact(Op.STATUS))

    def cycles(self) -> P.Cycles:
        return P.unpack_cycles(self.transact(Op.CYCLES))

    def reset(self) -> None:
        """Empty the memory cache (a new document). Weights stay loaded."""
        self.transact(Op.RESET_CACHE)

    def load_matrix(self, matrix: int, qw) -> None:
        """Load W_q (0) or W_k (1) from a QuantWeight (numpy or fixed_torch)."""
        mant = np.asarray(P._to_numpy(qw.mant))
        want = (self.config.d, self.config.d_h)
        if mant.shape != want:
            raise ValueError(f"weights of shape {mant.shape} do not fit the device's (d, d_h) = {want}")
        for payload in P.weight_chunks(matrix, qw):
            self.transact(Op.LOAD_WEIGHTS, payload)

    def load_weights(self, qw_q, qw_k) -> None:
        """Load W_q and W_k. Skipped when exactly these weights were loaded by this connection and
        the device still reports both loaded (each document reuses them)."""
        key = hashlib.sha256()
        for qw in (qw_q, qw_k):
            key.update(np.ascontiguousarray(P._to_numpy(qw.mant), dtype=np.int8).tobytes())
            key.update(f"{int(qw.exp)},{int(qw.shift)};".encode())
        key = key.digest()
        if key == self._weights_key:
            st = self.status()
            if st.wq_loaded and st.wk_loaded:
                return
        self._weights_key = None
        self.load_matrix(0, qw_q)
        self.load_matrix(1, qw_k)
        self._weights_key = key

    def write_memory(self, m_mant, m_exp, wait: bool = True):
        """Store M_i (BFP8, length d); the device computes K_i (contract 2: and K'_i, which it
        stores instead). Returns (slot, fill); with
        ``wait=False`` the command is posted and a :class:`Pending` returned, whose ``result()``
        is (slot, fill)."""
        payload = P.pack_vector_cmd(m_mant, m_exp, self.config.d)
        if not wait:
            return self.post(Op.WRITE_MEMORY, payload, decode=P.unpack_write)
        return P.unpack_write(self.transact(Op.WRITE_MEMORY, payload))

    def write(self, m_mant, m_exp) -> None:
        """The recall-model device interface's name for :meth:`write_memory`."""
        self.write_memory(m_mant, m_exp)

    def read_slot(self, slot: int):
        """(m_mant [d], m_exp, k_mant, k_exp) as stored in ``slot``: the key K_i [d_h] (contract 1)
        or the folded key K'_i [d] (contract 2)."""
        return P.unpack_slot(self.transact(Op.READ_SLOT, P.pack_read_slot(slot)), self.config.d, self.config.d_h,
                             self.contract)

    def recall(self, s_mant, s_exp, probabilities: bool = True) -> P.RecallAnswer:
        """P_n for the query S_n (BFP8, length d): (p_mant int64 [d], p_exp, probs int64 [fill]),
        and ``.n``, the slots the device recalled over. ``probabilities=False`` asks the device
        not to send them (protocol 1.2 / 2.1: 2 bytes per slot less on the wire); probs is then
        None -- except from an older device (:attr:`recall_flags` False), which always sends
        them."""
        d = self.config.d
        if self.recall_flags:
            payload = P.pack_recall_cmd(s_mant, s_exp, d, P.RECALL_PROBS if probabilities else 0)
        else:
            payload, probabilities = P.pack_vector_cmd(s_mant, s_exp, d), True
        return P.unpack_recall(self.transact(Op.RECALL, payload), d, probabilities)

    def attention(self, q_mant, q_exp, k_mant, k_exp, v_mant, v_exp, causal: bool = False):
        """One attention tile: (out_mant int64 [n_q, head_dim], out_exp int64 [n_q])."""
        payload = P.pack_attention(q_mant, q_exp, k_mant, k_exp, v_mant, v_exp, causal)
        return P.unpack_attention(self.transact(Op.ATTENTION, payload), payload[0], self.config.head_dim)

    def attn_pass(self, pass_: int, k_mant, k_exp, **kw):
        """One ATTN_PASS (docs/protocol.md, 0x21; keyword arguments as
        :func:`~hmtx.model.protocol.pack_attn_pass`). Returns pass 1: (m [n_q], E [n_q]); pass 2:
        the row sums [n_q]; pass 3: None, or after the last tile (out_mant [n_q, head_dim],
        out_exp [n_q]). A device older than protocol 1.3 / 2.2 is refused here, before sending."""
        if not self.attn_pass_ok:
            v = self.device_info.version
            raise ProtocolError(f"{self.name} speaks protocol {v[0]}.{v[1]}, which has no ATTN_PASS (attention "
                                f"rows longer than one tile need {P.ATTN_PASS_SINCE[v[0]][0]}."
                                f"{P.ATTN_PASS_SINCE[v[0]][1]}: the lane engine's gateware, not the serial one's)")
        payload = P.pack_attn_pass(pass_, k_mant, k_exp, **kw)
        return P.unpack_attn_pass_rsp(self.transact(Op.ATTN_PASS, payload), pass_, payload[0],
                                      self.config.head_dim, bool(kw.get("last")))
