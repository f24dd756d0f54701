"""The hmtx wire protocol (docs/protocol.md): framing, CRC-8, opcodes, statuses, payloads.

Everything here is pure byte manipulation shared by the host driver (``hmtx.host.device``)
and the golden device (``hmtx.model.golden_device``); neither side re-implements any of it.
Bad input raises :class:`ValueError` naming the field; a response that cannot be decoded
raises :class:`ProtocolError`; a device that answers with an error status is reported by the
driver as :class:`DeviceError`.
"""

import enum
import struct
from dataclasses import dataclass

import numpy as np

from hmtx.model import fixed

__all__ = [
    "ENGINES", "END", "ESC", "ESC_END", "ESC_ESC", "MAX_BODY", "SHIFT_MAX", "VERSION", "VERSIONS", "CONTRACTS",
    "MAGIC", "LOAD_CHUNK", "RESYNC_OPS", "contract_of", "slot_length",
    "Op", "Status", "COMPUTE_OPS", "ProtocolError", "DeviceError",
    "crc8", "slip_escape", "FrameDecoder", "Frame",
    "encode_command", "encode_response", "split_command", "decode_response", "Response",
    "pack_bfp8", "unpack_bfp8", "pack_wide", "unpack_wide", "pack_folded", "unpack_folded",
    "pack_load_weights", "weight_chunks", "pack_vector_cmd", "pack_read_slot", "pack_attention",
    "Info", "unpack_info", "pack_info", "CacheStatus", "unpack_status", "pack_status",
    "Cycles", "unpack_cycles", "pack_cycles", "unpack_write", "pack_write",
    "unpack_slot", "pack_slot", "unpack_recall", "pack_recall", "RecallAnswer", "unpack_attention",
    "pack_attention_rsp", "load_weights_length", "attention_length",
    "GATEWARE_VERSIONS", "gateware_version", "ATTN_PASS_SINCE", "takes_attn_pass", "ops_of", "ATTN_CAUSAL", "ATTN_Q", "ATTN_FIRST",
    "ATTN_LAST", "ATTN_FLAGS_MASK", "ATTN_PASS_SHIFT", "ATTN_PASS_MASK", "ATTN_NONE_M", "ATTN_NONE_E",
    "ATTN_TOTAL_MIN", "ATTN_TOTAL_LIMIT", "AttnPass", "pack_attn_pass", "attn_pass_length", "unpack_attn_pass",
    "pack_attn_pass_rsp", "attn_pass_rsp_length", "unpack_attn_pass_rsp",
    "RECALL_FLAGS_SINCE", "RECALL_PROBS", "RECALL_FLAGS_MASK", "takes_recall_flags", "pack_recall_cmd",
    "recall_lengths", "recall_response_length",
]

END, ESC, ESC_END, ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD
MAX_BODY = 65535          # a 16-bit body counter in the RTL; no legal frame comes close
SHIFT_MAX = 31            # largest projection shift LOAD_WEIGHTS accepts
# The protocol's major version names the arithmetic contract the device computes (docs/protocol.md,
# "Versions and contracts"; docs/arithmetic.md section 10): major 1 = contract 1 (WRITE_MEMORY
# stores K_i = W_k^T M_i, RECALL projects the query with W_q), major 2 = contract 2 (WRITE_MEMORY
# also folds W_q into the key and stores K'_i = W_q K_i; RECALL scores S_n against K'_i).
# The newest version of each major this host speaks:
VERSIONS = {1: (1, 3),    # 1.1: INFO's capabilities name the engine kind (bits 2-3); 1.2: RECALL's flags;
                          # 1.3: ATTN_PASS (attention rows longer than a tile, in passes)
            2: (2, 2)}    # 2.0: contract 2 (the folded keys); INFO as 1.1; 2.1: RECALL's flags, as 1.2;
                          # 2.2: ATTN_PASS, as 1.3
CONTRACTS = tuple(VERSIONS)
# What the gateware in hw/ implements and reports in its INFO, per engine kind (ENGINES, below)
# and contract: the lane engine has ATTN_PASS (1.3 / 2.2); the serial engine (iCE40 UP5K, no room
# for it) has not, so it speaks the minor before it and answers 0x21 BAD_OPCODE. The golden device
# models the engine it is told by default (gateware_version).
GATEWARE_VERSIONS = {"lanes": {1: (1, 3), 2: (2, 2)}, "serial": {1: (1, 2), 2: (2, 1)}}
VERSION = GATEWARE_VERSIONS["lanes"][1]
# The first version of each major whose RECALL may carry a flags byte after S_n (docs/protocol.md
# section 9): the host asks for the probabilities only when it needs them. Older devices answer
# the longer frame BAD_LENGTH, so the host sends them the frame without flags (and gets the
# probabilities, as always); a device of these versions still answers that frame as before, so an
# older host keeps working with it.
RECALL_FLAGS_SINCE = {1: (1, 2), 2: (2, 1)}
RECALL_PROBS = 0x01          # flags bit 0: send n and the probabilities (otherwise n only)
RECALL_FLAGS_MASK = RECALL_PROBS   # every other bit is reserved: BAD_ARG
# ATTN_PASS (docs/protocol.md, 0x21): one pass of a long attention row over one key tile.
ATTN_PASS_SINCE = {1: (1, 3), 2: (2, 2)}
ATTN_CAUSAL = 0x01           # flags bit 0: mask keys b > a + diag
ATTN_PASS_SHIFT = 1          # flags bits 1-2: the pass, 1..3
ATTN_PASS_MASK = 0b11 << ATTN_PASS_SHIFT
ATTN_Q = 0x08                # bit 3: the Q rows follow (else the ones held from the last ATTN_PASS)
ATTN_FIRST = 0x10            # bit 4, pass 3: start the accumulators at zero
ATTN_LAST = 0x20             # bit 5, pass 3: finish and send the output rows
ATTN_FLAGS_MASK = 0x3F       # bits 6-7 reserved: BAD_ARG
ATTN_NONE_M, ATTN_NONE_E = -(1 << 31), -128    # pass 1's answer for a row that keeps no key of the tile
# pass 3's sum must be in [2^15, 2^25): the reciprocal's domain. A true sum is at least 2^15 =
# exp2_lut()[0], the term of the row's largest score; the engine's divider starts there.
ATTN_TOTAL_MIN, ATTN_TOTAL_LIMIT = int(fixed.exp2_lut()[0]), 1 << 25
_ATTN_SCALARS = {1: 0, 2: 4, 3: 9}             # bytes per query row sent in the header, per pass

# The engines a device can be built with (hw/top.py): "lanes", hw/engine.py's P MAC lanes, and
# "serial", hw/serial_engine.py's one time-shared multiplier for the iCE40 UP5K. Their index is
# the code INFO reports; named here, below hw/, so that hosts and command lines know them without
# elaborating either engine.
ENGINES = ("lanes", "serial")
MAGIC = b"HM"
LOAD_CHUNK = 4096         # mantissas per LOAD_WEIGHTS frame sent by the host (not a device limit)
# Opcodes never assigned to a command (docs/protocol.md section 7): the host sends them as
# resynchronization markers, and the device's BAD_OPCODE answer echoing one is recognisable.
RESYNC_OPS = tuple(range(0xF0, 0xFF))


class Op(enum.IntEnum):
    INFO = 0x01
    STATUS = 0x02
    CYCLES = 0x03
    RESET_CACHE = 0x10
    LOAD_WEIGHTS = 0x11
    WRITE_MEMORY = 0x12
    READ_SLOT = 0x13
    RECALL = 0x14
    ATTENTION = 0x20
    ATTN_PASS = 0x21


class Status(enum.IntEnum):
    OK = 0x00
    BAD_FRAME = 0x01
    BAD_CRC = 0x02
    BAD_OPCODE = 0x03
    BAD_LENGTH = 0x04
    BAD_ARG = 0x05
    SLOT_RANGE = 0x06
    EMPTY_CACHE = 0x07
    NO_WEIGHTS = 0x08


# Ops that run the datapath and update the CYCLES counters when they succeed.
COMPUTE_OPS = frozenset({Op.RESET_CACHE, Op.LOAD_WEIGHTS, Op.WRITE_MEMORY, Op.RECALL, Op.ATTENTION, Op.ATTN_PASS})


def _version_str(v) -> str:
    return f"{v[0]}.{v[1]}"


def contract_of(version) -> int:
    """The arithmetic contract a device of protocol ``version`` (major, minor) computes: its major.
    A major this host does not know raises ProtocolError naming the device's version and the ones
    this host speaks."""
    major = version[0]
    if major not in VERSIONS:
        known = " and ".join(_version_str(v) for v in VERSIONS.values())
        raise ProtocolError(f"device speaks protocol {_version_str(version)}, this host {known} "
                            f"(contracts {', '.join(map(str, CONTRACTS))}): no common major version")
    return major


def takes_recall_flags(version) -> bool:
    """Whether a device of protocol ``version`` (major, minor) accepts RECALL's flags byte."""
    since = RECALL_FLAGS_SINCE.get(version[0])
    return since is not None and tuple(version) >= since


def takes_attn_pass(version) -> bool:
    """Whether a device of protocol ``version`` (major, minor) has ATTN_PASS (1.3 / 2.2 on)."""
    since = ATTN_PASS_SINCE.get(version[0])
    return since is not None and tuple(version) >= since


def gateware_version(engine: str = "lanes", contract: int = 1) -> tuple:
    """The protocol version (major, minor) that ``HmtxTop(config, engine, contract)`` implements
    and reports in its INFO: :data:`GATEWARE_VERSIONS` (ValueError for an unknown kind or contract)."""
    if engine not in GATEWARE_VERSIONS:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if contract not in GATEWARE_VERSIONS[engine]:
        raise ValueError(f"unknown contract {contract!r}; choose one of {CONTRACTS}")
    return GATEWARE_VERSIONS[engine][contract]


def ops_of(version) -> tuple:
    """The opcodes a device of protocol ``version`` knows, in opcode order: every :class:`Op` but
    ATTN_PASS before 1.3 / 2.2 (the gateware's opcode decoder is built from this)."""
    return tuple(op for op in Op if op != Op.ATTN_PASS or takes_attn_pass(version))


def recall_lengths(d: int, version=None) -> tuple[int, ...]:
    """RECALL's accepted body lengths for a device of ``version`` (default this host's newest):
    ``d + 3`` (S_n alone, every version) and, from 1.2 / 2.1 on, ``d + 4`` (S_n and the flags)."""
    return (d + 3, d + 4) if takes_recall_flags(version or VERSION) else (d + 3,)


def slot_length(d: int, d_h: int, contract: int = 1) -> int:
    """READ_SLOT's response payload length: M (1 + d) then K_i, a wide vector of length d_h
    (contract 1), or K'_i, a folded vector of length d (contract 2)."""
    if contract not in VERSIONS:
        raise ValueError(f"unknown contract {contract!r}; choose one of {CONTRACTS}")
    return 1 + d + (2 + 2 * d_h if contract == 1 else 2 + d)


def op_name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"opcode 0x{op:02X}"


def status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return f"status 0x{status:02X}"


class ProtocolError(IOError):
    """The byte stream from the device does not form the expected response (framing, CRC,
    echo, length) or no response came in time."""


class DeviceError(RuntimeError):
    """The device answered a command with an error status."""

    def __init__(self, op: int, status: int, detail: str = ""):
        self.op, self.status = op, status
        msg = f"device answered {status_name(status)} to {op_name(op)}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


# --- CRC-8/SMBUS ---------------------------------------------------------------------------------
def _crc_table() -> list[int]:
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc8(data, crc: int = 0) -> int:
    """CRC-8, poly 0x07, init 0, no reflection, no final XOR. ``crc8(body + crc8(body)) == 0``."""
    for b in data:
        crc = _CRC_TABLE[crc ^ b]
    return crc


# --- SLIP framing --------------------------------------------------------------------------------
def slip_escape(body: bytes) -> bytes:
    """``escape(body) END``: the bytes of one frame on the wire."""
    return body.replace(bytes([ESC]), bytes([ESC, ESC_ESC])).replace(bytes([END]), bytes([ESC, ESC_END])) + bytes([END])


@dataclass(frozen=True)
class Frame:
    """One received frame: the decoded body (at most MAX_BODY bytes) and the framing error that
    ended its decoding early, if any ("escape" or "overlong")."""

    body: bytes
    error: str | None = None


class FrameDecoder:
    """Incremental SLIP decoder, the receive half of docs/protocol.md section 1.

    :meth:`feed` returns the frames completed by the new bytes; empty bodies without an error
    are dropped (rule 2). Both the golden device and the host use it, so their framing rules
    cannot drift apart.
    """

    def __init__(self, max_body: int = MAX_BODY):
        self.max_body = max_body
        self._buf = bytearray()
        self._esc = False
        self._error = None

    @property
    def pending(self) -> int:
        """Body bytes of the unfinished frame (0 when between frames)."""
        return len(self._buf) + (1 if self._esc or self._error else 0)

    def feed(self, data) -> list[Frame]:
        frames = []
        for b in bytes(data):
            if b == END:
                error = self._error or ("escape" if self._esc else None)
                if self._buf or error:
                    frames.append(Frame(bytes(self._buf), error))
                self._buf.clear()
                self._esc = False
                self._error = None
                continue
            if self._error:
                continue
            if self._esc:
                self._esc = False
                if b == ESC_END:
                    b = END
                elif b == ESC_ESC:
                    b = ESC
                else:
                    self._error = "escape"
                    continue
            elif b == ESC:
                self._esc = True
                continue
            if len(self._buf) >= self.max_body:
                self._error = "overlong"
                continue
            self._buf.append(b)
        return frames


# --- frames --------------------------------------------------------------------------------------
def _u8(name, v, lo=0, hi=255) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


def encode_command(op: int, payload: bytes = b"") -> bytes:
    """The wire bytes of a command: ``escape(op | payload | crc) END``."""
    body = bytes([_u8("opcode", op)]) + bytes(payload)
    if len(body) + 1 > MAX_BODY:
        raise ValueError(f"{op_name(op)}: body of {len(body) + 1} bytes exceeds MAX_BODY={MAX_BODY}")
    return slip_escape(body + bytes([crc8(body)]))


def encode_response(status: int, op: int, payload: bytes = b"") -> bytes:
    """The wire bytes of a response: ``escape(status | op | payload | crc) END``."""
    body = bytes([_u8("status", status), _u8("opcode", op)]) + bytes(payload)
    return slip_escape(body + bytes([crc8(body)]))


def split_command(body: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of a command body whose CRC has been checked."""
    return body[0], bytes(body[1:-1])


@dataclass(frozen=True)
class Response:
    status: int
    op: int
    payload: bytes


def decode_response(frame: Frame) -> Response:
    """Check a received response frame (framing, length, CRC) and split it."""
    if frame.error:
        raise ProtocolError(f"response frame has a framing error ({frame.error})")
    body = frame.body
    if len(body) < 3:
        raise ProtocolError(f"response frame of {len(body)} bytes is too short (need status, opcode, crc)")
    if crc8(body) != 0:
        raise ProtocolError(f"response CRC mismatch (body {body[:8].hex()}..., {len(body)} bytes)")
    return Response(body[0], body[1], bytes(body[2:-1]))


# --- vectors -------------------------------------------------------------------------------------
def _int_vec(name, a, lo, hi) -> np.ndarray:
    a = np.asarray(a)
    if hasattr(a, "dtype") and a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integers, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a vector, got shape {a.shape}")
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"{name}: values must lie in [{lo}, {hi}], got [{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def _to_numpy(a):
    # torch tensors (fixed_torch) and numpy arrays alike; torch stays an optional import here.
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def pack_bfp8(mant, exp, n: int | None = None, name: str = "vector") -> bytes:
    """A BFP8 vector: ``exp i8 | n x mant i8``. Checks the contract's ranges (the device would
    answer BAD_ARG)."""
    m = _int_vec(f"{name} mantissas", _to_numpy(mant), -fixed.MANT_MAX, fixed.MANT_MAX)
    if n is not None and m.shape[0] != n:
        raise ValueError(f"{name}: expected {n} mantissas, got {m.shape[0]}")
    e = _u8(f"{name} exponent", int(_to_numpy(exp)), fixed.EXP_MIN, fixed.EXP_MAX)
    return struct.pack("<b", e) + m.astype(np.int8).tobytes()


def unpack_bfp8(buf: bytes, n: int) -> tuple[np.ndarray, int]:
    """(mant int64 [n], exp) from ``1 + n`` bytes; no range check (the device's job)."""
    if len(buf) != 1 + n:
        raise ValueError(f"BFP8 vector of length {n} needs {1 + n} bytes, got {len(buf)}")
    return np.frombuffer(buf, dtype=np.int8, offset=1).astype(np.int64), struct.unpack_from("<b", buf)[0]


def pack_wide(mant, exp) -> bytes:
    """A wide vector: ``exp i16 | n x mant i16``."""
    m = _int_vec("wide mantissas", _to_numpy(mant), -(1 << 15), (1 << 15) - 1)
    e = _u8("wide exponent", int(exp), -(1 << 15), (1 << 15) - 1)
    return struct.pack("<h", e) + m.astype("<i2").tobytes()


def unpack_wide(buf: bytes, n: int) -> tuple[np.ndarray, int]:
    if len(buf) != 2 + 2 * n:
        raise ValueError(f"wide vector of length {n} needs {2 + 2 * n} bytes, got {len(buf)}")
    return np.frombuffer(buf, dtype="<i2", offset=2).astype(np.int64), struct.unpack_from("<h", buf)[0]


def pack_folded(mant, exp, n: int | None = None) -> bytes:
    """A folded vector (contract 2's K'_i): ``exp i16 | n x mant i8``, mantissas in [-127, 127]
    (``fixed.fold_key`` never gives -128); the exponent, a sum of five fields, needs 16 bits."""
    m = _int_vec("folded key mantissas", _to_numpy(mant), -fixed.MANT_MAX, fixed.MANT_MAX)
    if n is not None and m.shape[0] != n:
        raise ValueError(f"folded key: expected {n} mantissas, got {m.shape[0]}")
    e = _u8("folded key exponent", int(_to_numpy(exp)), -(1 << 15), (1 << 15) - 1)
    return struct.pack("<h", e) + m.astype(np.int8).tobytes()


def unpack_folded(buf: bytes, n: int) -> tuple[np.ndarray, int]:
    """(mant int64 [n], exp) of a folded vector from ``2 + n`` bytes; no range check."""
    if len(buf) != 2 + n:
        raise ValueError(f"folded vector of length {n} needs {2 + n} bytes, got {len(buf)}")
    return np.frombuffer(buf, dtype=np.int8, offset=2).astype(np.int64), struct.unpack_from("<h", buf)[0]


# --- command payloads ----------------------------------------------------------------------------
def pack_load_weights(matrix: int, exp: int, shift: int, row_offset: int, mant_rows) -> bytes:
    """LOAD_WEIGHTS payload for rows ``row_offset ..`` of W_q (matrix 0) or W_k (matrix 1)."""
    rows = _to_numpy(mant_rows)
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise ValueError(f"LOAD_WEIGHTS: mantissa rows must be a non-empty 2-D array, got shape {rows.shape}")
    flat = _int_vec("weight mantissas", rows.reshape(-1), -fixed.MANT_MAX, fixed.MANT_MAX)
    header = struct.pack("<BbBHH", _u8("matrix", matrix, 0, 1), _u8("weight exponent", exp, fixed.EXP_MIN, fixed.EXP_MAX),
                         _u8("weight shift", shift, 0, SHIFT_MAX), _u8("row_offset", row_offset, 0, 0xFFFF),
                         _u8("rows", rows.shape[0], 1, 0xFFFF))
    return header + flat.astype(np.int8).tobytes()


def weight_chunks(matrix: int, qw, chunk: int = LOAD_CHUNK) -> list[bytes]:
    """LOAD_WEIGHTS payloads that load a whole QuantWeight in row order, ``chunk`` mantissas
    (at least one row) per frame."""
    mant = _to_numpy(qw.mant)
    if mant.ndim != 2:
        raise ValueError(f"weights must be a (d, d_h) matrix, got shape {mant.shape}")
    rows_per = max(1, chunk // mant.shape[1])
    return [pack_load_weights(matrix, int(qw.exp), int(qw.shift), r, mant[r:r + rows_per])
            for r in range(0, mant.shape[0], rows_per)]


def pack_vector_cmd(mant, exp, d: int) -> bytes:
    """WRITE_MEMORY / RECALL payload: one BFP8 vector of length d."""
    return pack_bfp8(mant, exp, d)


def pack_recall_cmd(mant, exp, d: int, flags: int | None = None) -> bytes:
    """RECALL payload: S_n (BFP8, length d), then, if ``flags`` is given (protocol 1.2 / 2.1), the
    flags byte (``RECALL_PROBS``: send the probabilities). Without it the device sends them, as
    every version does for the frame without flags."""
    payload = pack_bfp8(mant, exp, d)
    if flags is None:
        return payload
    return payload + bytes([_u8("RECALL flags", flags, 0, RECALL_FLAGS_MASK)])


def pack_read_slot(slot: int) -> bytes:
    return struct.pack("<H", _u8("slot", slot, 0, 0xFFFF))


def pack_attention(q_mant, q_exp, k_mant, k_exp, v_mant, v_exp, causal: bool = False) -> bytes:
    """ATTENTION payload: header then Q, K, V rows as BFP8 vectors."""
    q, k, v = (_to_numpy(x) for x in (q_mant, k_mant, v_mant))
    if q.ndim != 2 or k.ndim != 2 or v.ndim != 2 or k.shape != v.shape or q.shape[1] != k.shape[1]:
        raise ValueError(f"ATTENTION: Q {q.shape}, K {k.shape}, V {v.shape} must be 2-D with equal widths "
                         "and as many V rows as K rows")
    qe, ke, ve = (np.asarray(_to_numpy(x)).reshape(-1) for x in (q_exp, k_exp, v_exp))
    if qe.shape[0] != q.shape[0] or ke.shape[0] != k.shape[0] or ve.shape[0] != v.shape[0]:
        raise ValueError("ATTENTION: one exponent per Q, K and V row is required")
    out = struct.pack("<BBB", _u8("n_q", q.shape[0], 1, 255), _u8("n_k", k.shape[0], 1, 255), 1 if causal else 0)
    for name, rows, exps in (("Q", q, qe), ("K", k, ke), ("V", v, ve)):
        out += _pack_rows(name, rows, exps)
    return out


def _pack_rows(name: str, rows, exps) -> bytes:
    """Rows of a tile as BFP8 vectors, one exponent each (errors name the row)."""
    return b"".join(pack_bfp8(r, e, name=f"{name} row {i}") for i, (r, e) in enumerate(zip(rows, exps)))


def load_weights_length(body: bytes, d_h: int) -> int | None:
    """Expected body length of a LOAD_WEIGHTS frame from its header (None: too short)."""
    if len(body) < 8:
        return None
    rows = struct.unpack_from("<H", body, 6)[0]
    return 9 + rows * d_h


def attention_length(body: bytes, head_dim: int) -> int | None:
    if len(body) < 4:
        return None
    return 5 + (body[1] + 2 * body[2]) * (1 + head_dim)


@dataclass(frozen=True)
class AttnPass:
    """An ATTN_PASS command, decoded (docs/protocol.md, 0x21). Row arrays are int64; ``q`` is
    None when the command reuses the device's held Q rows; ``v_exp`` (pass 1) or ``v``/``v_exp``
    (pass 3) the value part; ``m`` (passes 2, 3), ``big_e`` and ``total`` (pass 3) per query row."""

    n_q: int
    n_k: int
    pass_: int
    causal: bool
    diag: int
    first: bool
    last: bool
    q: tuple | None             # (mant [n_q, hd], exp [n_q])
    k: tuple                    # (mant [n_k, hd], exp [n_k])
    v: tuple | None             # pass 3: (mant [n_k, hd], exp [n_k]); pass 1: (None, exp [n_k])
    m: np.ndarray | None
    big_e: np.ndarray | None
    total: np.ndarray | None
    flags: int


def pack_attn_pass(pass_: int, k_mant, k_exp, *, q=None, v_mant=None, v_exp=None, m=None, big_e=None,
                   total=None, causal: bool = False, diag: int = 0, first: bool = False, last: bool = False,
                   n_q: int | None = None) -> bytes:
    """ATTN_PASS payload. ``q``: (mant [n_q, hd], exp [n_q]) to send the query rows, or None to use
    the device's held ones (then ``n_q`` says how many). Pass 1 needs ``v_exp`` (the tile's value
    exponents); pass 2 ``m``; pass 3 ``v_mant``, ``v_exp``, ``m``, ``big_e`` and ``total``. Ranges
    are checked here as the device checks them (ValueError naming the field)."""
    p = _u8("pass", pass_, 1, 3)
    k = _to_numpy(k_mant)
    if k.ndim != 2:
        raise ValueError(f"ATTN_PASS: K must be 2-D, got shape {k.shape}")
    ke = np.asarray(_to_numpy(k_exp)).reshape(-1)
    if q is not None:
        qm, qe = _to_numpy(q[0]), np.asarray(_to_numpy(q[1])).reshape(-1)
        if qm.ndim != 2 or qm.shape[1] != k.shape[1] or qe.shape[0] != qm.shape[0]:
            raise ValueError(f"ATTN_PASS: Q {qm.shape} (exponents {qe.shape}) must be 2-D rows as wide as K {k.shape}")
        n_q = qm.shape[0]
    if n_q is None:
        raise ValueError("ATTN_PASS: without Q rows, n_q (the held rows) must be given")
    if ke.shape[0] != k.shape[0]:
        raise ValueError("ATTN_PASS: one exponent per K row is required")
    if not causal and diag != 0:
        raise ValueError("ATTN_PASS: diag must be 0 without the causal mask")
    if (first or last) and p != 3:
        raise ValueError("ATTN_PASS: first and last are flags of pass 3")
    flags = (ATTN_CAUSAL if causal else 0) | p << ATTN_PASS_SHIFT | (ATTN_Q if q is not None else 0) \
        | (ATTN_FIRST if first else 0) | (ATTN_LAST if last else 0)
    out = struct.pack("<BBBh", _u8("n_q", n_q, 1, 255), _u8("n_k", k.shape[0], 1, 255), flags,
                      _u8("diag", diag, -(1 << 15), (1 << 15) - 1))
    if p >= 2:
        mm = _int_vec("m", np.asarray(_to_numpy(m)).reshape(-1), -(1 << 31), (1 << 31) - 1)
        if mm.shape[0] != n_q:
            raise ValueError(f"ATTN_PASS: {mm.shape[0]} values of m for {n_q} query rows")
        if p == 2:
            out += mm.astype("<i4").tobytes()
        else:
            ee = _int_vec("E", np.asarray(_to_numpy(big_e)).reshape(-1), fixed.EXP_MIN, fixed.EXP_MAX)
            tt = _int_vec("total", np.asarray(_to_numpy(total)).reshape(-1), ATTN_TOTAL_MIN, ATTN_TOTAL_LIMIT - 1)
            if ee.shape[0] != n_q or tt.shape[0] != n_q:
                raise ValueError(f"ATTN_PASS: E and total need one value per query row ({n_q})")
            out += b"".join(struct.pack("<ibI", int(a), int(b), int(c)) for a, b, c in zip(mm, ee, tt))
    if q is not None:
        out += _pack_rows("Q", qm, qe)
    out += _pack_rows("K", k, ke)
    if p == 1:
        ve = _int_vec("V exponents", np.asarray(_to_numpy(v_exp)).reshape(-1), fixed.EXP_MIN, fixed.EXP_MAX)
        if ve.shape[0] != k.shape[0]:
            raise ValueError("ATTN_PASS: pass 1 needs one V exponent per K row")
        out += ve.astype(np.int8).tobytes()
    elif p == 3:
        v = _to_numpy(v_mant)
        ve = np.asarray(_to_numpy(v_exp)).reshape(-1)
        if v.shape != k.shape or ve.shape[0] != k.shape[0]:
            raise ValueError(f"ATTN_PASS: V {v.shape} must match K {k.shape}, one exponent per row")
        out += _pack_rows("V", v, ve)
    return out


def attn_pass_length(body: bytes, head_dim: int) -> int | None:
    """Expected body length of an ATTN_PASS frame from its header (None: too short). A reserved
    pass number counts no pass-specific bytes (the device then answers BAD_ARG)."""
    if len(body) < 7:
        return None
    n_q, n_k, flags = body[1], body[2], body[3]
    p = (flags & ATTN_PASS_MASK) >> ATTN_PASS_SHIFT
    row = 1 + head_dim
    v = {1: n_k, 3: n_k * row}.get(p, 0)
    return 7 + n_q * _ATTN_SCALARS.get(p, 0) + (n_q * row if flags & ATTN_Q else 0) + n_k * row + v


def unpack_attn_pass(payload: bytes, head_dim: int) -> AttnPass:
    """Split an ATTN_PASS payload whose length :func:`attn_pass_length` accepted; no range checks
    (the device's job)."""
    n_q, n_k, flags, diag = struct.unpack_from("<BBBh", payload)
    p = (flags & ATTN_PASS_MASK) >> ATTN_PASS_SHIFT
    row = 1 + head_dim
    off = 5
    m = big_e = total = None
    if p == 2:
        m = np.frombuffer(payload, "<i4", n_q, off).astype(np.int64)
        off += 4 * n_q
    elif p == 3:
        rec = np.frombuffer(payload, np.dtype([("m", "<i4"), ("e", "i1"), ("t", "<u4")]), n_q, off)
        m, big_e, total = (rec[f].astype(np.int64) for f in ("m", "e", "t"))
        off += 9 * n_q

    def rows(n):
        nonlocal off
        vs = [unpack_bfp8(payload[off + i * row: off + (i + 1) * row], head_dim) for i in range(n)]
        off += n * row
        if not vs:          # n_q or n_k 0: the device answers BAD_ARG
            return np.zeros((0, head_dim), np.int64), np.zeros(0, np.int64)
        return (np.stack([x[0] for x in vs]).reshape(n, head_dim), np.array([x[1] for x in vs], dtype=np.int64))

    q = rows(n_q) if flags & ATTN_Q else None
    k = rows(n_k)
    v = None
    if p == 1:
        v = (None, np.frombuffer(payload, np.int8, n_k, off).astype(np.int64))
    elif p == 3:
        v = rows(n_k)
    return AttnPass(n_q, n_k, p, bool(flags & ATTN_CAUSAL), diag, bool(flags & ATTN_FIRST),
                    bool(flags & ATTN_LAST), q, k, v, m, big_e, total, flags)


# --- response payloads ---------------------------------------------------------------------------
def _check_len(op: Op, payload: bytes, n: int):
    if len(payload) != n:
        raise ProtocolError(f"{op.name} response payload has {len(payload)} bytes, expected {n}")


_INFO = struct.Struct("<2sBBBHHHHHHHHbbBBBBBB")


@dataclass(frozen=True)
class Info:
    version: tuple[int, int]
    capabilities: int
    d: int
    d_h: int
    n_slots: int
    lanes: int
    head_dim: int
    max_queries: int
    max_keys: int
    max_body: int
    exp_min: int
    exp_max: int
    score_frac: int
    exp2_bits: int
    prob_bits: int
    out_shift: int
    align_cutoff: int
    shift_max: int

    CAP_RECALL = 1
    CAP_ATTENTION = 2
    CAP_ENGINE_SHIFT = 2            # bits 2-3: the engine kind, an index into ENGINES
    CAP_ENGINE_MASK = 0b11 << CAP_ENGINE_SHIFT

    @staticmethod
    def capabilities_for(engine: str = "lanes") -> int:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        return Info.CAP_RECALL | Info.CAP_ATTENTION | (ENGINES.index(engine) << Info.CAP_ENGINE_SHIFT)

    @classmethod
    def for_config(cls, cfg, engine: str = "lanes", contract: int = 1, version=None) -> "Info":
        """The INFO of a device of ``cfg`` computing ``contract``, speaking ``version`` (default
        the gateware's of that engine: :func:`gateware_version`; any minor of that major up to
        this host's newest, ``VERSIONS[contract]``, models that device)."""
        if contract not in VERSIONS:
            raise ValueError(f"unknown contract {contract!r}; choose one of {CONTRACTS}")
        version = gateware_version(engine, contract) if version is None else tuple(version)
        if len(version) != 2 or version[0] != contract or not 0 <= version[1] <= VERSIONS[contract][1]:
            raise ValueError(f"version {version!r} is not a version of contract {contract} this host knows "
                             f"(up to {_version_str(VERSIONS[contract])})")
        return cls(version, cls.capabilities_for(engine), cfg.d, cfg.d_h, cfg.n_slots, cfg.lanes,
                   cfg.head_dim, cfg.max_queries, cfg.max_keys, MAX_BODY, fixed.EXP_MIN, fixed.EXP_MAX,
                   fixed.SCORE_FRAC, fixed.EXP2_BITS, fixed.PROB_BITS, fixed.OUT_SHIFT, fixed.ALIGN_CUTOFF,
                   SHIFT_MAX)

    @property
    def contract(self) -> int:
        """The arithmetic contract the device computes: its protocol major version (ProtocolError
        for a major this host does not know)."""
        return contract_of(self.version)

    @property
    def engine(self) -> str | None:
        """The engine kind the device reports (None from a 1.0 device, which does not say)."""
        if self.version < (1, 1):
            return None
        code = (self.capabilities & self.CAP_ENGINE_MASK) >> self.CAP_ENGINE_SHIFT
        if code >= len(ENGINES):
            raise ProtocolError(f"INFO reports engine code {code}; this host knows {', '.join(ENGINES)}")
        return ENGINES[code]

    def mismatches(self, cfg) -> list[str]:
        """Fields that differ from an engine config and from this host's format constants."""
        want = Info.for_config(cfg)
        return [f"{f}: device {getattr(self, f)} != expected {getattr(want, f)}"
                for f in self.__dataclass_fields__ if f not in ("version", "capabilities")
                and getattr(self, f) != getattr(want, f)]


def pack_info(info: Info) -> bytes:
    return _INFO.pack(MAGIC, *info.version, info.capabilities, info.d, info.d_h, info.n_slots, info.lanes,
                      info.head_dim, info.max_queries, info.max_keys, info.max_body, info.exp_min, info.exp_max,
                      info.score_frac, info.exp2_bits, info.prob_bits, info.out_shift, info.align_cutoff,
                      info.shift_max)


def unpack_info(payload: bytes) -> Info:
    _check_len(Op.INFO, payload, _INFO.size)
    f = _INFO.unpack(payload)
    if f[0] != MAGIC:
        raise ProtocolError(f"INFO magic is {f[0]!r}, expected {MAGIC!r}: not an hmtx device")
    return Info((f[1], f[2]), *f[3:])


_STATUS = struct.Struct("<HHBHH")


@dataclass(frozen=True)
class CacheStatus:
    fill: int
    write_ptr: int
    flags: int
    q_rows: int
    k_rows: int

    @property
    def wq_loaded(self) -> bool:
        return bool(self.flags & 1)

    @property
    def wk_loaded(self) -> bool:
        return bool(self.flags & 2)


def pack_status(s: CacheStatus) -> bytes:
    return _STATUS.pack(s.fill, s.write_ptr, s.flags, s.q_rows, s.k_rows)


def unpack_status(payload: bytes) -> CacheStatus:
    _check_len(Op.STATUS, payload, _STATUS.size)
    return CacheStatus(*_STATUS.unpack(payload))


_CYCLES = struct.Struct("<QIB")


@dataclass(frozen=True)
class Cycles:
    total: int
    last: int
    last_op: int


def pack_cycles(c: Cycles) -> bytes:
    return _CYCLES.pack(c.total, min(c.last, 0xFFFFFFFF), c.last_op)


def unpack_cycles(payload: bytes) -> Cycles:
    _check_len(Op.CYCLES, payload, _CYCLES.size)
    return Cycles(*_CYCLES.unpack(payload))


def pack_write(slot: int, fill: int) -> bytes:
    return struct.pack("<HH", slot, fill)


def unpack_write(payload: bytes) -> tuple[int, int]:
    """(slot written, fill after)."""
    _check_len(Op.WRITE_MEMORY, payload, 4)
    return struct.unpack("<HH", payload)


def pack_slot(m_mant, m_exp, k_mant, k_exp, contract: int = 1) -> bytes:
    """READ_SLOT's payload: M_i (BFP8) then K_i (wide, contract 1) or K'_i (folded, contract 2)."""
    if contract not in VERSIONS:
        raise ValueError(f"unknown contract {contract!r}; choose one of {CONTRACTS}")
    m = _int_vec("stored memory", _to_numpy(m_mant), -128, 127)
    key = pack_wide(k_mant, k_exp) if contract == 1 else pack_folded(k_mant, k_exp)
    return struct.pack("<b", int(m_exp)) + m.astype(np.int8).tobytes() + key


def unpack_slot(payload: bytes, d: int, d_h: int, contract: int = 1):
    """(m_mant [d], m_exp, k_mant, k_exp): K_i [d_h] (contract 1) or K'_i [d] (contract 2)."""
    _check_len(Op.READ_SLOT, payload, slot_length(d, d_h, contract))
    m, me = unpack_bfp8(payload[:1 + d], d)
    k, ke = unpack_wide(payload[1 + d:], d_h) if contract == 1 else unpack_folded(payload[1 + d:], d)
    return m, me, k, ke


def pack_recall(p_mant, p_exp, probs, n: int | None = None) -> bytes:
    """RECALL's answer: P_n (wide), n, then the n probabilities -- or, with ``probs`` None (not
    asked for), P_n and n only."""
    if probs is None:
        if n is None:
            raise ValueError("pack_recall: without the probabilities, n must be given")
        return pack_wide(p_mant, p_exp) + struct.pack("<H", _u8("n", n, 0, 0xFFFF))
    pr = _int_vec("probabilities", _to_numpy(probs), 0, 0xFFFF)
    if n is not None and n != pr.shape[0]:
        raise ValueError(f"pack_recall: n = {n} but {pr.shape[0]} probabilities")
    return pack_wide(p_mant, p_exp) + struct.pack("<H", pr.shape[0]) + pr.astype("<u2").tobytes()


class RecallAnswer(tuple):
    """A decoded RECALL answer: the tuple ``(p_mant int64 [d], p_exp, probs)`` -- ``probs`` int64
    [n], or None when they were not asked for -- and ``n``, the number of slots the device
    recalled over (its fill), which it sends either way."""

    def __new__(cls, p_mant, p_exp, probs, n: int):
        self = super().__new__(cls, (p_mant, p_exp, probs))
        self.n = n
        return self


def recall_response_length(d: int, n: int, probabilities: bool = True) -> int:
    """RECALL's OK payload length: P_n (2 + 2d), n (2) and, if asked for, n probabilities."""
    return 4 + 2 * d + (2 * n if probabilities else 0)


def unpack_recall(payload: bytes, d: int, probabilities: bool = True) -> RecallAnswer:
    """Decode RECALL's answer. ``probabilities``: whether they were asked for (the frame without
    flags always asks); the payload must then hold exactly n of them, else none."""
    if len(payload) < 4 + 2 * d:
        raise ProtocolError(f"RECALL response payload has {len(payload)} bytes, expected at least {4 + 2 * d}")
    p, pe = unpack_wide(payload[:2 + 2 * d], d)
    (n,) = struct.unpack_from("<H", payload, 2 + 2 * d)
    want = recall_response_length(d, n, probabilities)
    if len(payload) != want:
        raise ProtocolError(f"RECALL response payload has {len(payload)} bytes, expected {want} (n = {n}, "
                            f"probabilities {'asked for' if probabilities else 'not asked for'})")
    probs = np.frombuffer(payload, dtype="<u2", offset=4 + 2 * d).astype(np.int64) if probabilities else None
    return RecallAnswer(p, pe, probs, n)


def pack_attention_rsp(out_mant, out_exp) -> bytes:
    return b"".join(pack_wide(r, e) for r, e in zip(_to_numpy(out_mant), _to_numpy(out_exp)))


def pack_attn_pass_rsp(pass_: int, *, m=None, big_e=None, total=None, out_mant=None, out_exp=None) -> bytes:
    """ATTN_PASS's response payload: pass 1 (m i32, E i8) per row; pass 2 the row sums (u32);
    pass 3 the output rows after the last tile, nothing before it."""
    if pass_ == 1:
        return b"".join(struct.pack("<ib", int(a), int(b)) for a, b in zip(_to_numpy(m), _to_numpy(big_e)))
    if pass_ == 2:
        return np.asarray(_to_numpy(total), dtype="<u4").tobytes()
    return b"" if out_mant is None else pack_attention_rsp(out_mant, out_exp)


def attn_pass_rsp_length(pass_: int, n_q: int, head_dim: int, last: bool = False) -> int:
    return {1: 5 * n_q, 2: 4 * n_q}.get(pass_, n_q * (2 + 2 * head_dim) if last else 0)


def unpack_attn_pass_rsp(payload: bytes, pass_: int, n_q: int, head_dim: int, last: bool = False):
    """Pass 1: (m int64 [n_q], E int64 [n_q]); pass 2: sums int64 [n_q]; pass 3: None, or after
    the last tile (out_mant [n_q, head_dim], out_exp [n_q])."""
    _check_len(Op.ATTN_PASS, payload, attn_pass_rsp_length(pass_, n_q, head_dim, last))
    if pass_ == 1:
        rec = np.frombuffer(payload, np.dtype([("m", "<i4"), ("e", "i1")]), n_q)
        return rec["m"].astype(np.int64), rec["e"].astype(np.int64)
    if pass_ == 2:
        return np.frombuffer(payload, "<u4", n_q).astype(np.int64)
    if not last:
        return None
    return _wide_rows(payload, n_q, head_dim)


def _wide_rows(payload: bytes, n: int, head_dim: int):
    """``n`` wide vectors of length ``head_dim`` back to back: (mant int64 [n, head_dim], exp int64 [n])."""
    row = 2 + 2 * head_dim
    rows = [unpack_wide(payload[i * row:(i + 1) * row], head_dim) for i in range(n)]
    return (np.stack([r[0] for r in rows]).reshape(n, head_dim), np.array([r[1] for r in rows], dtype=np.int64))


def unpack_attention(payload: bytes, n_q: int, head_dim: int):
    """(out_mant int64 [n_q, head_dim], out_exp int64 [n_q])."""
    _check_len(Op.ATTENTION, payload, n_q * (2 + 2 * head_dim))
    return _wide_rows(payload, n_q, head_dim)
