"""A small byte-stream device with the same ports as the recall engine, for testing the test bench.

The real engine (``hmtx.hw.top.HmtxTop``) takes command bytes on ``cmd`` and answers on ``rsp``.
This stand-in has exactly that signature and enough behaviour to exercise everything the
verification environment has to handle: framed commands, a few cycles of latency, a ``cmd.ready``
that drops while the device is busy, an int8 dot product (so synthesis maps multipliers to DSP
blocks and the gate-level flow has something to get wrong), a small RAM of slots that survives a
reset (a stand-in for the memory cache), and documented error answers that never hang.

Wire format (all bytes)::

    command  = opcode, length, payload[length]
    response = status, length, payload[length]

=========  ====  ===============================  ==========================================
opcode     code  payload                          response payload
=========  ====  ===============================  ==========================================
ECHO       0x01  0..MAX_LEN bytes                 the same bytes
DOT        0x02  even count of int8 a0,b0,a1,b1…  sum(a_i*b_i) as int32, little endian
STORE      0x03  slot, value                      (none)
LOAD       0x04  slot                             value
=========  ====  ===============================  ==========================================

Errors answer ``status, 0``: BAD_OPCODE (0xE1) and BAD_LENGTH (0xE2) are detected on the header;
the device then drops every byte until the line has been idle for ``idle_timeout`` cycles and
only then answers, so a garbled stream always resynchronises. BAD_SLOT (0xE3) answers a complete
STORE/LOAD frame with a slot ≥ ``n_slots``. TIMEOUT (0xE4) answers a frame that stopped arriving
mid-way for ``idle_timeout`` cycles. Between frames the line may idle for ever.
"""

from amaranth.hdl import Array, Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["StandIn", "StandInModel", "OPCODES", "STATUS", "frame"]

OPCODES = {"ECHO": 0x01, "DOT": 0x02, "STORE": 0x03, "LOAD": 0x04}
STATUS = {"OK": 0x00, "BAD_OPCODE": 0xE1, "BAD_LENGTH": 0xE2, "BAD_SLOT": 0xE3, "TIMEOUT": 0xE4}


def frame(op: int, payload: bytes = b"") -> bytes:
    """Encode one stand-in command frame."""
    if not 0 <= op <= 255:
        raise ValueError(f"opcode {op} does not fit in a byte")
    if len(payload) > 255:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a one-byte length")
    return bytes([op, len(payload)]) + bytes(payload)


class StandIn(wiring.Component):
    """Framed byte-stream responder with the recall engine's port signature.

    Parameters
    ----------
    max_len : int
        Largest ECHO/DOT payload (the size of the frame buffer).
    n_slots : int
        Number of one-byte slots reachable by STORE/LOAD.
    idle_timeout : int
        Idle cycles (``cmd.ready`` high, ``cmd.valid`` low) that end a truncated frame or an
        error-discard phase.

    Members
    -------
    cmd : In(stream.Signature(8))
        Command bytes. ``ready`` is low while the device computes or answers.
    rsp : Out(stream.Signature(8))
        Response bytes; ``payload`` holds steady while ``valid`` is high.
    """

    cmd: In(stream.Signature(8))
    rsp: Out(stream.Signature(8))

    def __init__(self, *, max_len=16, n_slots=4, idle_timeout=32):
        if max_len < 4 or max_len % 2:
            raise ValueError(f"max_len must be an even number >= 4, got {max_len}")
        if not 1 <= n_slots <= 256:
            raise ValueError(f"n_slots must be in 1..256, got {n_slots}")
        if idle_timeout < 2:
            raise ValueError(f"idle_timeout must be >= 2, got {idle_timeout}")
        self.max_len = max_len
        self.n_slots = n_slots
        self.idle_timeout = idle_timeout
        super().__init__()

    def elaborate(self, platform):
        m = Module()

        op = Signal(8)
        length = Signal(8)
        idx = Signal(8)
        idle = Signal(range(self.idle_timeout))
        err = Signal(8)
        status = Signal(8)
        rlen = Signal(8)
        buf = Array(Signal(8, name=f"buf{i}") for i in range(self.max_len))

        m.submodules.slots = slots = Memory(shape=8, depth=self.n_slots, init=[])
        wr = slots.write_port()
        rd = slots.read_port()
        m.d.comb += [wr.addr.eq(buf[0]), wr.data.eq(buf[1]), rd.addr.eq(buf[0])]

        # The multiplier operands and products are reset-less registers on both sides of the
        # multiply, the structure the real datapath uses (and the one that tripped synth_ice40 -dsp).
        a0, b0, a1, b1 = (Signal(signed(8), reset_less=True, name=n) for n in ("a0", "b0", "a1", "b1"))
        p0, p1 = (Signal(signed(16), reset_less=True, name=n) for n in ("p0", "p1"))
        acc = Signal(signed(32))

        known_op = Signal()
        m.d.comb += known_op.eq((self.cmd.payload >= OPCODES["ECHO"]) & (self.cmd.payload <= OPCODES["LOAD"]))
        bad_len = Signal()
        with m.Switch(op):
            with m.Case(OPCODES["ECHO"]):
                m.d.comb += bad_len.eq(self.cmd.payload > self.max_len)
            with m.Case(OPCODES["DOT"]):
                m.d.comb += bad_len.eq((self.cmd.payload > self.max_len) | self.cmd.payload[0])
            with m.Case(OPCODES["STORE"]):
                m.d.comb += bad_len.eq(self.cmd.payload != 2)
            with m.Case(OPCODES["LOAD"]):
                m.d.comb += bad_len.eq(self.cmd.payload != 1)

        timed_out = idle == self.idle_timeout - 1

        with m.FSM():
            with m.State("OP"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [op.eq(self.cmd.payload), idle.eq(0)]
                    with m.If(known_op):
                        m.next = "LEN"
                    with m.Else():
                        m.d.sync += err.eq(STATUS["BAD_OPCODE"])
                        m.next = "DISCARD"

            with m.State("LEN"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [length.eq(self.cmd.payload), idx.eq(0), idle.eq(0)]
                    with m.If(bad_len):
                        m.d.sync += err.eq(STATUS["BAD_LENGTH"])
                        m.next = "DISCARD"
                    with m.Elif(self.cmd.payload == 0):
                        m.next = "EXEC"
                    with m.Else():
                        m.next = "PAYLOAD"
                with m.Elif(timed_out):
                    m.d.sync += [status.eq(STATUS["TIMEOUT"]), rlen.eq(0)]
                    m.next = "SEND_STATUS"
                with m.Else():
                    m.d.sync += idle.eq(idle + 1)

            with m.State("PAYLOAD"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [buf[idx].eq(self.cmd.payload), idx.eq(idx + 1), idle.eq(0)]
                    with m.If(idx == length - 1):
                        m.next = "EXEC"
                with m.Elif(timed_out):
                    m.d.sync += [status.eq(STATUS["TIMEOUT"]), rlen.eq(0)]
                    m.next = "SEND_STATUS"
                with m.Else():
                    m.d.sync += idle.eq(idle + 1)

            with m.State("DISCARD"):
                # Swallow the rest of a bad frame (whatever its claimed length) until the host
                # stops sending, so the next frame starts on a clean boundary.
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += idle.eq(0)
                with m.Elif(timed_out):
                    m.d.sync += [status.eq(err), rlen.eq(0)]
                    m.next = "SEND_STATUS"
                with m.Else():
                    m.d.sync += idle.eq(idle + 1)

            with m.State("EXEC"):
                m.d.sync += [status.eq(STATUS["OK"]), rlen.eq(0), idx.eq(0)]
                m.next = "SEND_STATUS"
                with m.Switch(op):
                    with m.Case(OPCODES["ECHO"]):
                        m.d.sync += rlen.eq(length)
                    with m.Case(OPCODES["DOT"]):
                        m.d.sync += acc.eq(0)
                        m.next = "DOT_LOAD"
                    with m.Case(OPCODES["STORE"], OPCODES["LOAD"]):
                        with m.If(buf[0] >= self.n_slots):
                            m.d.sync += status.eq(STATUS["BAD_SLOT"])
                        with m.Elif(op == OPCODES["STORE"]):
                            m.d.comb += wr.en.eq(1)
                        with m.Else():
                            m.next = "LOAD_WAIT"

            with m.State("LOAD_WAIT"):
                m.d.sync += [buf[0].eq(rd.data), rlen.eq(1)]
                m.next = "SEND_STATUS"

            with m.State("DOT_LOAD"):
                with m.If(idx >= length):
                    m.d.sync += [buf[i].eq(acc[8 * i:8 * i + 8]) for i in range(4)]
                    m.d.sync += [rlen.eq(4), idx.eq(0)]
                    m.next = "SEND_STATUS"
                with m.Else():
                    m.d.sync += [a0.eq(buf[idx]), b0.eq(buf[idx + 1]), idx.eq(idx + 4)]
                    with m.If(idx + 2 < length):
                        m.d.sync += [a1.eq(buf[idx + 2]), b1.eq(buf[idx + 3])]
                    with m.Else():
                        m.d.sync += [a1.eq(0), b1.eq(0)]
                    m.next = "DOT_MUL"

            with m.State("DOT_MUL"):
                m.d.sync += [p0.eq(a0 * b0), p1.eq(a1 * b1)]
                m.next = "DOT_ACC"

            with m.State("DOT_ACC"):
                m.d.sync += acc.eq(acc + p0 + p1)
                m.next = "DOT_LOAD"

            with m.State("SEND_STATUS"):
                m.d.comb += [self.rsp.valid.eq(1), self.rsp.payload.eq(status)]
                with m.If(self.rsp.ready):
                    m.next = "SEND_LEN"

            with m.State("SEND_LEN"):
                m.d.comb += [self.rsp.valid.eq(1), self.rsp.payload.eq(rlen)]
                with m.If(self.rsp.ready):
                    m.d.sync += idx.eq(0)
                    with m.If(rlen == 0):
                        m.next = "OP"
                    with m.Else():
                        m.next = "SEND_DATA"

            with m.State("SEND_DATA"):
                m.d.comb += [self.rsp.valid.eq(1), self.rsp.payload.eq(buf[idx])]
                with m.If(self.rsp.ready):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == rlen - 1):
                        m.next = "OP"

        return m


class StandInModel:
    """Byte-level golden model of :class:`StandIn`.

    ``feed`` takes command bytes and returns the response bytes the device sends for every frame
    completed by them; ``idle`` says the host let the line go quiet for at least
    ``idle_timeout`` cycles and returns what the device sends then (an error answer or nothing).
    """

    def __init__(self, *, max_len=16, n_slots=4):
        self.max_len = max_len
        self.n_slots = n_slots
        # Power-up contents of the slot RAM; a reset does not clear it.
        self.slots = [0] * n_slots
        self.written = set()
        self.reset()

    def reset(self):
        self._frame = bytearray()
        self._error = None

    @property
    def busy(self) -> bool:
        """True while a frame or an error-discard phase is open (the device would time out)."""
        return bool(self._frame) or self._error is not None

    def cache_state(self) -> str:
        """Coverage bucket of the slot RAM: how many slots have been written."""
        if not self.written:
            return "empty"
        return "full" if len(self.written) == self.n_slots else "partial"

    def _length_ok(self, op: int, n: int) -> bool:
        if op == OPCODES["ECHO"]:
            return n <= self.max_len
        if op == OPCODES["DOT"]:
            return n <= self.max_len and n % 2 == 0
        if op == OPCODES["STORE"]:
            return n == 2
        return n == 1  # LOAD

    def _execute(self, op: int, payload: bytes) -> bytes:
        if op == OPCODES["ECHO"]:
            return bytes([STATUS["OK"], len(payload)]) + payload
        if op == OPCODES["DOT"]:
            s = sum(_s8(payload[i]) * _s8(payload[i + 1]) for i in range(0, len(payload), 2))
            return bytes([STATUS["OK"], 4]) + (s & 0xFFFFFFFF).to_bytes(4, "little")
        slot = payload[0]
        if slot >= self.n_slots:
            return bytes([STATUS["BAD_SLOT"], 0])
        if op == OPCODES["STORE"]:
            self.slots[slot] = payload[1]
            self.written.add(slot)
            return bytes([STATUS["OK"], 0])
        return bytes([STATUS["OK"], 1, self.slots[slot]])

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for b in bytes(data):
            if self._error is not None:
                continue
            if not self._frame:
                if b in OPCODES.values():
                    self._frame.append(b)
                else:
                    self._error = STATUS["BAD_OPCODE"]
                continue
            if len(self._frame) == 1 and not self._length_ok(self._frame[0], b):
                self._frame.clear()
                self._error = STATUS["BAD_LENGTH"]
                continue
            self._frame.append(b)
            if len(self._frame) == 2 + self._frame[1]:
                out += self._execute(self._frame[0], bytes(self._frame[2:]))
                self._frame.clear()
        return bytes(out)

    def idle(self) -> bytes:
        if self._error is not None:
            code, self._error = self._error, None
            return bytes([code, 0])
        if self._frame:
            self._frame.clear()
            return bytes([STATUS["TIMEOUT"], 0])
        return b""


def _s8(b: int) -> int:
    return b - 256 if b & 0x80 else b
