"""The golden device: docs/protocol.md as an executable byte-in/byte-out model.

:class:`GoldenDevice` holds exactly the state the chip holds (two weight matrices with their
row counters and loaded flags, the N-slot ring of memories M_i and keys K_i, its write pointer and
fill count kept by a :class:`~hmtx.model.ring.RingSlots`, cycle counters) and computes with
:mod:`hmtx.model.fixed`. ``contract`` picks the protocol major it speaks: 1 (the keys
K_i = W_k^T M_i) or 2 (the folded keys K'_i = fold_key(W_q, K_i), recalled with
``fixed.recall_folded``; docs/arithmetic.md section 10); ``version`` a minor of that major: by
default the gateware's of the engine it stands for (``protocol.gateware_version``: the lane
engine's 1.3 / 2.2, with ATTN_PASS, attention rows longer than a tile in passes; the serial
engine's 1.2 / 2.1, without); 1.1 and 2.0 take RECALL without its flags byte. The RTL is verified
against it byte for byte (CYCLES excepted, see the document), and the host's ``golden`` backend
is this class behind the same byte interface as a serial port.
"""

import math
import struct

import numpy as np

from hmtx.model import fixed
from hmtx.model.configs import EngineConfig

from .protocol import (
    ATTN_FLAGS_MASK, ATTN_NONE_E, ATTN_NONE_M, ATTN_TOTAL_LIMIT, ATTN_TOTAL_MIN, COMPUTE_OPS, RECALL_FLAGS_MASK, RECALL_PROBS,
    SHIFT_MAX, CacheStatus, Cycles, FrameDecoder, Info, Op, Status, attention_length, attn_pass_length, crc8,
    encode_response, load_weights_length, ops_of, pack_attention_rsp, pack_attn_pass_rsp, pack_cycles, pack_info,
    pack_recall, pack_slot, pack_status, pack_write, recall_lengths, unpack_attn_pass,
)
from .ring import RingSlots

__all__ = ["GoldenDevice", "example_session", "attn_pass_errors", "attn_pass_session"]


class _Reject(Exception):
    """A command check failed with ``status``; nothing has been changed yet."""

    def __init__(self, status: Status):
        self.status = status


class GoldenDevice:
    """Byte-exact model of the recall engine behind the wire protocol.

    ``feed(bytes) -> bytes`` consumes command bytes (any split, any garbage) and returns the
    response bytes they produce, in order.

    ``engine`` is the kind INFO reports (the golden device computes what either kind computes;
    only their CYCLES differ, which it does not model).

    ``contract`` is the arithmetic contract, which is the protocol major INFO reports: 1 or 2.
    ``version`` (default ``protocol.gateware_version(engine, contract)``, what hw/ reports for
    that engine: 1.3 / 2.2 for "lanes", 1.2 / 2.1 for "serial") may name another minor of that
    major, which behaves as that version does: 1.3 / 2.2 have ATTN_PASS, 1.2 / 2.1 answer it
    BAD_OPCODE; 1.1 and 2.0 take RECALL without the flags byte only.

    ATTN_PASS state (docs/protocol.md, 0x21): the held query rows and the open pass-3
    accumulators, as the chip holds them in its tile buffer and accumulator memory.
    """

    def __init__(self, config: EngineConfig, engine: str = "lanes", contract: int = 1, version=None):
        if not isinstance(config, EngineConfig):
            raise ValueError(f"GoldenDevice needs an EngineConfig, got {type(config).__name__}")
        # (ValueError for an unknown kind, contract or version)
        self.info = Info.for_config(config, engine, contract, version)
        self.config, self.engine, self.contract, self.version = config, engine, contract, self.info.version
        self._recall_lengths = recall_lengths(config.d, self.version)
        c = config
        self._decoder = FrameDecoder()
        # Weights: index 0 = W_q, 1 = W_k.
        self.w_mant = [np.zeros((c.d, c.d_h), np.int64) for _ in range(2)]
        self.w_exp = [0, 0]
        self.w_shift = [0, 0]
        self.next_row = [0, 0]
        self.loaded = [False, False]
        # The ring cache.
        self.m_mant = np.zeros((c.n_slots, c.d), np.int64)
        self.m_exp = np.zeros(c.n_slots, np.int64)
        # K_i (contract 1, int16 x d_h) or K'_i (contract 2, int8 x d)
        self.k_mant = np.zeros((c.n_slots, c.d_h if contract == 1 else c.d), np.int64)
        self.k_exp = np.zeros(c.n_slots, np.int64)
        self.ring = RingSlots(c.n_slots)
        self.cycles = Cycles(0, 0, 0)
        self._ops = frozenset(int(o) for o in ops_of(self.version))
        self.held_q = None          # ATTN_PASS: (mant [n_q, hd], exp [n_q]) held for the next passes
        self.acc = None             # ATTN_PASS: the open pass-3 accumulators [n_q, hd] (exact ints)

    @property
    def fill(self) -> int:
        return self.ring.fill

    @property
    def write_ptr(self) -> int:
        return self.ring.write_ptr

    # -- byte interface ---------------------------------------------------------------------
    def feed(self, data) -> bytes:
        return b"".join(self._frame(f.body, f.error) for f in self._decoder.feed(data))

    # -- one frame ----------------------------------------------------------------------------
    def _frame(self, body: bytes, error) -> bytes:
        op = body[0] if body else 0
        # Every frame but an accepted ATTN_PASS, or a read-only op, ends the ATTN_PASS state:
        # the chip's tile buffer and accumulators are shared with ATTENTION and the recall, and a
        # rejected ATTN_PASS may have overwritten its Q rows as they arrived.
        held = (self.held_q, self.acc)
        self.held_q = self.acc = None
        if op in (Op.INFO, Op.STATUS, Op.CYCLES, Op.READ_SLOT) and not error:
            self.held_q, self.acc = held
        try:
            if error or len(body) < 2:
                raise _Reject(Status.BAD_FRAME)
            if crc8(body) != 0:
                raise _Reject(Status.BAD_CRC)
            if op not in self._ops:
                raise _Reject(Status.BAD_OPCODE)
            op = Op(op)
            if len(body) not in self._expected_lengths(op, body):
                raise _Reject(Status.BAD_LENGTH)
            if op == Op.ATTN_PASS:
                payload, cycles = self._op_attn_pass(body[1:-1], *held)
            else:
                payload, cycles = getattr(self, "_op_" + op.name.lower())(body[1:-1])
        except _Reject as r:
            # The weights are streamed into memory as they arrive: a failed chunk may have
            # overwritten part of the matrix its selector byte names.
            if op == Op.LOAD_WEIGHTS and len(body) >= 2 and body[1] in (0, 1):
                self.loaded[body[1]] = False
                self.next_row[body[1]] = 0
            return encode_response(r.status, op)
        if op in COMPUTE_OPS:
            self.cycles = Cycles(self.cycles.total + cycles, cycles, int(op))
        return encode_response(Status.OK, op, payload)

    def _expected_lengths(self, op: Op, body: bytes) -> tuple[int, ...]:
        c = self.config
        if op == Op.RECALL:
            return self._recall_lengths         # d + 3; from 1.2 / 2.1 on also d + 4 (flags)
        if op == Op.LOAD_WEIGHTS:
            n = load_weights_length(body, c.d_h)
        elif op == Op.ATTENTION:
            n = attention_length(body, c.head_dim)
        elif op == Op.ATTN_PASS:
            n = attn_pass_length(body, c.head_dim)
        elif op == Op.WRITE_MEMORY:
            n = c.d + 3
        elif op == Op.READ_SLOT:
            n = 4
        else:
            n = 2
        if n is None:
            raise _Reject(Status.BAD_LENGTH)
        return (n,)

    def _ideal(self, macs: int) -> int:
        return math.ceil(macs / self.config.lanes)

    @staticmethod
    def _vector(buf: bytes) -> tuple[np.ndarray, int]:
        """A BFP8 vector from the payload, BAD_ARG unless it satisfies the contract's ranges."""
        exp = struct.unpack_from("<b", buf)[0]
        mant = np.frombuffer(buf, dtype=np.int8, offset=1).astype(np.int64)
        GoldenDevice._rows(mant, np.asarray(exp))
        return mant, exp

    def _qw(self, i: int) -> fixed.QuantWeight:
        return fixed.QuantWeight(self.w_mant[i], self.w_exp[i], self.w_shift[i])

    # -- opcodes: each returns (payload, compute cycles) or raises _Reject -----------------------
    def _op_info(self, _):
        return pack_info(self.info), 0

    def _op_status(self, _):
        flags = int(self.loaded[0]) | int(self.loaded[1]) << 1
        return pack_status(CacheStatus(self.fill, self.write_ptr, flags, *self.next_row)), 0

    def _op_cycles(self, _):
        return pack_cycles(self.cycles), 0

    def _op_reset_cache(self, _):
        self.ring.reset()
        return b"", 0

    def _op_load_weights(self, p: bytes):
        c = self.config
        matrix, exp, shift, row_offset, rows = struct.unpack_from("<BbBHH", p)
        mant = np.frombuffer(p, dtype=np.int8, offset=7).astype(np.int64)
        if (matrix > 1 or not fixed.EXP_MIN <= exp <= fixed.EXP_MAX or shift > SHIFT_MAX or rows == 0
                or row_offset + rows > c.d or row_offset not in (0, self.next_row[matrix])
                or (row_offset != 0 and (exp, shift) != (self.w_exp[matrix], self.w_shift[matrix]))
                or (mant == -128).any()):
            raise _Reject(Status.BAD_ARG)
        if row_offset == 0:
            self.w_exp[matrix], self.w_shift[matrix] = exp, shift
        self.w_mant[matrix][row_offset:row_offset + rows] = mant.reshape(rows, c.d_h)
        self.next_row[matrix] = row_offset + rows
        self.loaded[matrix] = self.next_row[matrix] == c.d
        return b"", 0

    def _op_write_memory(self, p: bytes):
        c = self.config
        mant, exp = self._vector(p)
        # Contract 1 needs W_k; contract 2 folds W_q into the key as well.
        if not self.loaded[1] or (self.contract == 2 and not self.loaded[0]):
            raise _Reject(Status.NO_WEIGHTS)
        k, ke = fixed.project(self._qw(1), mant[None, :], np.array([exp]))
        macs = c.d * c.d_h
        if self.contract == 2:
            k, ke = fixed.fold_key(self._qw(0), k, ke)
            macs += c.d * c.d_h
        slot = self.ring.advance()
        self.m_mant[slot], self.m_exp[slot] = mant, exp
        self.k_mant[slot], self.k_exp[slot] = k[0], ke[0]
        return pack_write(slot, self.fill), self._ideal(macs)

    def _op_read_slot(self, p: bytes):
        (slot,) = struct.unpack("<H", p)
        if slot >= self.fill:
            raise _Reject(Status.SLOT_RANGE)
        return pack_slot(self.m_mant[slot], self.m_exp[slot], self.k_mant[slot], self.k_exp[slot], self.contract), 0

    def _op_recall(self, p: bytes):
        c = self.config
        mant, exp = self._vector(p[:1 + c.d])
        # The flags byte (1.2 / 2.1), judged with the vector (BAD_ARG); without it the
        # probabilities are sent, as in every version.
        flags = p[1 + c.d] if len(p) == c.d + 2 else RECALL_PROBS
        if flags & ~RECALL_FLAGS_MASK:
            raise _Reject(Status.BAD_ARG)
        # Contract 2 never reads W_q at recall (every filled slot was written with both weights
        # loaded): NO_WEIGHTS does not apply to it.
        if self.contract == 1 and not self.loaded[0]:
            raise _Reject(Status.NO_WEIGHTS)
        n = self.fill
        if n == 0:
            raise _Reject(Status.EMPTY_CACHE)
        if self.contract == 2:
            out, oe, probs = fixed.recall_folded(mant, exp, self.k_mant[:n], self.k_exp[:n],
                                                 self.m_mant[:n], self.m_exp[:n], c.d_h)
            macs = 2 * n * c.d
        else:
            out, oe, probs = fixed.recall(self._qw(0), mant, exp, self.k_mant[:n], self.k_exp[:n],
                                          self.m_mant[:n], self.m_exp[:n])
            macs = c.d * c.d_h + n * c.d_h + n * c.d
        # (the same computation either way: only what is sent back differs)
        return pack_recall(out, oe, probs if flags & RECALL_PROBS else None, n), self._ideal(macs)

    def _op_attention(self, p: bytes):
        c = self.config
        n_q, n_k, flags = p[0], p[1], p[2]
        causal = bool(flags & 1)
        if (not 1 <= n_q <= c.max_queries or not 1 <= n_k <= c.max_keys or flags & ~1
                or (causal and n_q > n_k)):
            raise _Reject(Status.BAD_ARG)
        row = 1 + c.head_dim
        vecs = [self._vector(p[3 + i * row:3 + (i + 1) * row]) for i in range(n_q + 2 * n_k)]
        mant = np.stack([v[0] for v in vecs])
        exps = np.array([v[1] for v in vecs], dtype=np.int64)
        sl_q, sl_k, sl_v = slice(0, n_q), slice(n_q, n_q + n_k), slice(n_q + n_k, n_q + 2 * n_k)
        mask = fixed.causal_mask(n_q, n_k) if causal else None
        out, oe, _ = fixed.attend(mant[sl_q], exps[sl_q], mant[sl_k], exps[sl_k], mant[sl_v], exps[sl_v], mask)
        return pack_attention_rsp(out, oe), self._ideal(2 * n_q * n_k * c.head_dim)

    @staticmethod
    def _rows(mant, exp) -> tuple[np.ndarray, np.ndarray]:
        """BFP8 rows (or one vector) as received, BAD_ARG unless each satisfies the contract's ranges."""
        if (mant == -128).any() or (exp < fixed.EXP_MIN).any() or (exp > fixed.EXP_MAX).any():
            raise _Reject(Status.BAD_ARG)
        return mant, exp

    def _op_attn_pass(self, p: bytes, held_q, acc):
        """One pass of long attention rows over one key tile (docs/arithmetic.md section 11):
        pass 1 answers each row's largest kept score m and value exponent E, pass 2 the sum of
        its exp2 terms for the host's m, pass 3 accumulates the weighted values for the host's m,
        E and sum, and after the last tile answers the output rows."""
        c = self.config
        a = unpack_attn_pass(p, c.head_dim)
        if (not 1 <= a.n_q <= c.max_queries or not 1 <= a.n_k <= c.max_keys or a.flags & ~ATTN_FLAGS_MASK
                or a.pass_ == 0 or (a.pass_ != 3 and (a.first or a.last)) or (not a.causal and a.diag != 0)):
            raise _Reject(Status.BAD_ARG)
        q = self._rows(*a.q) if a.q is not None else held_q
        if q is None or q[0].shape[0] != a.n_q:
            raise _Reject(Status.BAD_ARG)          # no held Q rows, or not as many
        k = self._rows(*a.k)
        if a.pass_ == 3:
            v = self._rows(*a.v)
            if ((a.big_e < fixed.EXP_MIN).any() or (a.big_e > fixed.EXP_MAX).any()
                    or (a.total < ATTN_TOTAL_MIN).any() or (a.total >= ATTN_TOTAL_LIMIT).any()):
                raise _Reject(Status.BAD_ARG)
            if not a.first and (acc is None or acc.shape[0] != a.n_q):
                raise _Reject(Status.BAD_ARG)      # no open accumulators to continue
        elif a.pass_ == 1:
            v = (None, a.v[1])
            if (v[1] < fixed.EXP_MIN).any() or (v[1] > fixed.EXP_MAX).any():
                raise _Reject(Status.BAD_ARG)
        keep = fixed.diag_mask(a.n_q, a.n_k, a.diag) if a.causal else np.ones((a.n_q, a.n_k), bool)
        t = fixed.scores(q[0], q[1], k[0], k[1])
        scored = a.n_q * a.n_k * c.head_dim
        self.held_q = q
        if a.pass_ == 1:
            kept = keep.any(axis=1)
            m = np.where(kept, fixed.row_max(t, keep), ATTN_NONE_M)
            big_e = np.where(kept, fixed.value_exp_max(keep, v[1]), ATTN_NONE_E)
            return pack_attn_pass_rsp(1, m=m, big_e=big_e), self._ideal(scored)
        e = fixed.exp_terms(t, keep, a.m)
        if a.pass_ == 2:
            return pack_attn_pass_rsp(2, total=e.sum(axis=1)), self._ideal(scored)
        part = fixed.weight_acc(fixed.probabilities(e, a.total), keep, v[0], v[1], a.big_e)
        acc = part if a.first else acc + part
        if not a.last:
            self.acc = fixed.carry_acc(acc)      # (three signed bytes per element on the chip)
            return b"", self._ideal(2 * scored)
        out, oe = fixed.finish_weighted_sum(acc, a.big_e)
        return pack_attn_pass_rsp(3, out_mant=out.astype(np.int16), out_exp=oe), self._ideal(2 * scored)


def example_session(config: EngineConfig, seed: int = 0) -> list[tuple[str, bytes]]:
    """A deterministic command session that touches every opcode and every status code, for
    comparing implementations byte for byte: ``[(label, wire bytes)]``. Every entry holds whole
    frames; each non-empty frame gets exactly one response.

    It covers: weights missing, chunked loads with a damaged chunk, a ring that wraps, a recall
    after every write (in turn without the flags byte, with the probabilities asked for, and
    without them), every slot read back, extreme vectors (+-127, exponent limits, zeros),
    attention tiles at their largest, and malformed frames followed by valid ones (RECALL flags
    with reserved bits, RECALL bodies of the wrong length).
    """
    from . import protocol as P

    c = config
    rng = np.random.default_rng(seed)
    out = []

    def cmd(label, op, payload=b""):
        out.append((label, P.encode_command(op, payload)))

    def vector(kind):
        if kind == "max":
            return np.full(c.d, 127), fixed.EXP_MAX
        if kind == "min":
            return np.full(c.d, -127), fixed.EXP_MIN
        if kind == "zero":
            return np.zeros(c.d, np.int64), fixed.EXP_MIN
        m, e = fixed.quantize_bfp(rng.standard_t(3, size=c.d) * 2.0 ** int(rng.integers(-6, 6)))
        return m, int(e)

    qws = [fixed.quantize_weight(rng.normal(size=(c.d, c.d_h)) * s) for s in (0.05, 0.3)]
    some = P.pack_vector_cmd(*vector("rand"), c.d)
    cmd("info", P.Op.INFO)
    cmd("status fresh", P.Op.STATUS)
    cmd("write without weights", P.Op.WRITE_MEMORY, some)
    cmd("recall without weights", P.Op.RECALL, some)
    cmd("recall without weights, no probabilities", P.Op.RECALL, some + b"\x00")
    cmd("recall with a reserved flag, without weights", P.Op.RECALL, some + b"\x02")
    cmd("read empty slot", P.Op.READ_SLOT, P.pack_read_slot(0))
    chunk = max(c.d_h, (c.d // 3) * c.d_h)          # a few chunks per matrix
    for i, qw in enumerate(qws):
        chunks = P.weight_chunks(i, qw, chunk)
        for j, p in enumerate(chunks):
            if i == 1 and j == len(chunks) - 1:
                body = bytearray(bytes([P.Op.LOAD_WEIGHTS]) + p)
                body.append(P.crc8(body) ^ 0x5A)
                out.append(("damaged weight chunk", P.slip_escape(bytes(body))))
                cmd("status after damaged chunk", P.Op.STATUS)
                for jj, pp in enumerate(chunks):
                    cmd(f"reload W_k chunk {jj}", P.Op.LOAD_WEIGHTS, pp)
                break
            cmd(f"load {'W_q' if i == 0 else 'W_k'} chunk {j}", P.Op.LOAD_WEIGHTS, p)
        cmd(f"status after matrix {i}", P.Op.STATUS)
    cmd("recall on empty cache", P.Op.RECALL, some)
    cmd("recall on empty cache, probabilities asked for", P.Op.RECALL, some + b"\x01")
    kinds = ["rand", "max", "rand", "zero", "min"] + ["rand"] * (c.n_slots + 1)
    # RECALL's three forms in turn: no flags byte, flags 0 (P_n and n only), flags 1 (probabilities)
    tails = (None, 0, P.RECALL_PROBS)
    for i, kind in enumerate(kinds):
        cmd(f"write {i} ({kind})", P.Op.WRITE_MEMORY, P.pack_vector_cmd(*vector(kind), c.d))
        tail = tails[i % 3]
        cmd(f"recall after write {i} (flags {tail})", P.Op.RECALL,
            P.pack_recall_cmd(*vector("rand" if i % 4 else "max"), c.d, tail))
    for s in range(c.n_slots):
        cmd(f"read slot {s}", P.Op.READ_SLOT, P.pack_read_slot(s))
    cmd("status full", P.Op.STATUS)
    # Malformed frames, each followed by a valid one.
    good = P.encode_command(P.Op.STATUS)
    body = bytearray(bytes([P.Op.RECALL]) + some)
    body.append(P.crc8(body) ^ 1)
    out.append(("bad crc", P.slip_escape(bytes(body))))
    out.append(("bad opcode", P.slip_escape(bytes([0x7F, P.crc8(b"\x7f")]))))
    cmd("bad length", P.Op.READ_SLOT, b"\x00")
    cmd("bad arg (mantissa -128)", P.Op.WRITE_MEMORY, some[:3] + b"\x80" + some[4:])
    for flags in (0x02, 0x80, 0xFF):
        cmd(f"recall flags 0x{flags:02X} (reserved bits)", P.Op.RECALL, some + bytes([flags]))
    cmd("recall with a bad mantissa and good flags", P.Op.RECALL, some[:3] + b"\x80" + some[4:] + b"\x00")
    cmd("recall one byte too long", P.Op.RECALL, some + b"\x00\x00")
    cmd("recall one byte short", P.Op.RECALL, some[:-1])
    cmd("write with a flags byte", P.Op.WRITE_MEMORY, some + b"\x00")
    cmd("slot beyond N", P.Op.READ_SLOT, P.pack_read_slot(c.n_slots))
    out.append(("escape error", bytes([P.Op.INFO, P.ESC, 0x01, 0x07, P.END]) + good))
    out.append(("one-byte frame", bytes([P.Op.INFO, P.END]) + good))
    out.append(("empty frames then status", bytes([P.END, P.END]) + good))
    out.append(("garbage", bytes(rng.integers(0, 0xC0, 37, dtype=np.uint8)) + bytes([P.END]) + good))
    out.append(("truncated write", P.encode_command(P.Op.WRITE_MEMORY, some)[:c.d // 2] + good))
    # Attention tiles.
    for causal, n_q, n_k in ((False, 1, 1), (True, c.max_queries, c.max_keys), (False, c.max_queries, c.max_keys)):
        q, qe = fixed.quantize_bfp(rng.normal(size=(n_q, c.head_dim)))
        k, ke = fixed.quantize_bfp(rng.normal(size=(n_k, c.head_dim)) * 3)
        v, ve = fixed.quantize_bfp(rng.normal(size=(n_k, c.head_dim)) * rng.uniform(0.01, 100, size=(n_k, 1)))
        cmd(f"attention {n_q}x{n_k} causal={causal}", P.Op.ATTENTION, P.pack_attention(q, qe, k, ke, v, ve, causal))
    cmd("attention too many queries", P.Op.ATTENTION,
        bytes([c.max_queries + 1, 1, 0]) + bytes((c.max_queries + 3) * (1 + c.head_dim)))
    cmd("reset", P.Op.RESET_CACHE)
    cmd("status after reset", P.Op.STATUS)
    cmd("recall after reset", P.Op.RECALL, some)
    cmd("read after reset", P.Op.READ_SLOT, P.pack_read_slot(0))
    return out


def attn_pass_errors(config: EngineConfig, seed: int = 0) -> list[tuple[str, bytes]]:
    """ATTN_PASS frames that a device of protocol 1.3 / 2.2 rejects without any ATTN_PASS state
    (every BAD_ARG rule of docs/protocol.md section 10, BAD_LENGTH, BAD_CRC), each followed by
    STATUS: ``[(label, wire bytes)]`` as :func:`example_session`. None is accepted, so they
    exercise a device's frame checks only (a 1.2 / 2.1 device answers each BAD_OPCODE)."""
    from . import protocol as P

    c = config
    hd, MQ, MK = c.head_dim, c.max_queries, c.max_keys
    rng = np.random.default_rng([seed, 0x21])
    out = []

    def cmd(label, payload, op=P.Op.ATTN_PASS):
        out.append((label, P.encode_command(op, payload)))
        out.append((f"status after {label}", P.encode_command(P.Op.STATUS)))

    def rows(n):
        return fixed.quantize_bfp(rng.normal(size=(n, hd)) * 2.0 ** rng.integers(-3, 4, size=(n, 1)))

    def patch(payload, offset, value: bytes):
        return payload[:offset] + value + payload[offset + len(value):]

    n_q, n_k = min(2, MQ), MK
    (q, qe), (k, ke), (v, ve) = rows(n_q), rows(n_k), rows(n_k)
    row = 1 + hd
    good1 = P.pack_attn_pass(1, k, ke, q=(q, qe), v_exp=ve, causal=True, diag=1)
    p3 = dict(q=(q, qe), v_mant=v, v_exp=ve, m=[100] * n_q, big_e=[0] * n_q, total=[1 << 16] * n_q, first=True)
    good3 = P.pack_attn_pass(3, k, ke, **p3)
    flags1 = good1[2]
    q_at, k_at = 5, 5 + n_q * row                       # pass 1: no per-row scalars
    cmd("pass 2 without held Q rows", P.pack_attn_pass(2, k, ke, n_q=n_q, m=[0] * n_q))
    cmd("pass 3 continuing no accumulators", P.pack_attn_pass(3, k, ke, **{**p3, "first": False}))
    cmd("n_q 0", bytes([0, n_k, flags1 & ~P.ATTN_Q]) + good1[3:5] + good1[k_at:])
    cmd("n_q above max_queries", P.pack_attn_pass(1, k, ke, q=rows(MQ + 1), v_exp=ve))
    cmd("n_k 0", bytes([n_q, 0, flags1]) + good1[3:k_at])
    cmd("n_k above max_keys", P.pack_attn_pass(1, *rows(MK + 1), q=(q, qe), v_exp=np.zeros(MK + 1, int)))
    for bit in (0x40, 0x80):
        cmd(f"reserved flag 0x{bit:02X}", patch(good1, 2, bytes([flags1 | bit])))
    cmd("pass 0", patch(good1, 2, bytes([flags1 & ~P.ATTN_PASS_MASK]))[:-n_k])
    cmd("first in pass 1", patch(good1, 2, bytes([flags1 | P.ATTN_FIRST])))
    cmd("first and last in pass 1", patch(good1, 2, bytes([flags1 | P.ATTN_FIRST | P.ATTN_LAST])))
    good2 = P.pack_attn_pass(2, k, ke, q=(q, qe), m=[5] * n_q)
    cmd("last in pass 2", patch(good2, 2, bytes([good2[2] | P.ATTN_LAST])))
    cmd("diag without causal", patch(P.pack_attn_pass(1, k, ke, q=(q, qe), v_exp=ve), 3, (-1).to_bytes(2, "little", signed=True)))
    cmd("Q mantissa -128", patch(good1, q_at + 1 + hd - 1, b"\x80"))
    cmd("Q exponent 64", patch(good1, q_at, bytes([64])))
    cmd("K exponent -65", patch(good1, k_at + (n_k - 1) * row, bytes([(-65) & 0xFF])))
    cmd("K mantissa -128", patch(good1, k_at + n_k * row - 1, b"\x80"))
    for e in (64, -65):
        cmd(f"pass 1 V exponent {e}", patch(good1, len(good1) - 1, bytes([e & 0xFF])))
    s3 = 5                                              # pass 3's records: m, E, sum per row
    v_at = s3 + 9 * n_q + (n_q + n_k) * row
    cmd("pass 3 V mantissa -128", patch(good3, v_at + 1, b"\x80"))
    cmd("pass 3 V exponent 64", patch(good3, v_at + (n_k - 1) * row, bytes([64])))
    for e in (64, -65):
        cmd(f"pass 3 E {e}", patch(good3, s3 + 9 * (n_q - 1) + 4, bytes([e & 0xFF])))
    for total in (0, (1 << 15) - 1, 1 << 25, (1 << 26) - 1, (1 << 32) - 1):
        cmd(f"pass 3 sum {total:#x}", patch(good3, s3 + 5, total.to_bytes(4, "little")))
    cmd("body of 6 bytes", good1[:4])
    cmd("one byte too long", good1 + b"\x00")
    cmd("one byte short", good1[:-1])
    cmd("pass 3 with pass 1's length", patch(good1, 2, bytes([flags1 | P.ATTN_PASS_MASK])))
    body = bytes([P.Op.ATTN_PASS]) + good1
    out.append(("bad crc", P.slip_escape(body + bytes([P.crc8(body) ^ 0x21]))))
    return out


def attn_pass_session(config: EngineConfig, seed: int = 0) -> list[tuple[str, bytes]]:
    """A deterministic ATTN_PASS session (protocol 1.3 / 2.2) for comparing implementations byte
    for byte, as :func:`example_session`: INFO, :func:`attn_pass_errors`, a causal head of
    ``max_queries`` rows over ``2 max_keys + 2`` keys in three passes over three key tiles (the
    last tile with rows that keep none of its keys; true m, E and sums) with the read-only
    frames that keep the held Q rows and the open accumulators in between, a non-causal tile,
    m and E below the true ones (the clamps), and every state rule: what each frame kind drops,
    pass 1 and 2 closing the accumulators, n_q against the held rows, a new first pass 3 over
    open accumulators, a pass 3 continuing with new Q rows."""
    from . import protocol as P

    c = config
    hd, MQ, MK = c.head_dim, c.max_queries, c.max_keys
    rng = np.random.default_rng([seed, 0x2121])
    out = [("info", P.encode_command(P.Op.INFO))]
    out += attn_pass_errors(config, seed)

    def cmd(label, payload, op=P.Op.ATTN_PASS):
        out.append((label, P.encode_command(op, payload)))

    def rows(n, scale=1.0):
        return fixed.quantize_bfp(rng.normal(size=(n, hd)) * scale)

    # the head: tile_plan's tiles (host/attention_tiles.py) of one query tile
    Tq, Tk = MQ, 2 * MK + 2
    (q, qe), (k, ke) = rows(Tq), rows(Tk, 3)
    v, ve = fixed.quantize_bfp(rng.normal(size=(Tk, hd)) * rng.uniform(0.01, 100, size=(Tk, 1)))
    keep = fixed.causal_mask(Tq, Tk)
    t = fixed.scores(q, qe, k, ke)
    m, big_e = fixed.row_max(t, keep), fixed.value_exp_max(keep, ve)
    total = fixed.exp_terms(t, keep, m).sum(axis=1)
    tiles = [(kb, min(MK, Tk - kb), -kb + Tk - Tq) for kb in range(0, Tk, MK)]

    def tile(kb, nk):
        return (k[kb:kb + nk], ke[kb:kb + nk]), (v[kb:kb + nk], ve[kb:kb + nk])

    for j, (kb, nk, diag) in enumerate(tiles):
        (kk, kke), (vv, vve) = tile(kb, nk)
        cmd(f"pass 1 tile {j} diag {diag}", P.pack_attn_pass(1, kk, kke, q=(q, qe) if j == 0 else None, n_q=Tq,
                                                                v_exp=vve, causal=True, diag=diag))
        if j == 0:
            cmd("status keeps the Q rows", b"", P.Op.STATUS)
            out.append(("one-byte INFO body keeps them", bytes([P.Op.INFO, P.END])))
    for j, (kb, nk, diag) in enumerate(tiles):
        (kk, kke), _ = tile(kb, nk)
        cmd(f"pass 2 tile {j}", P.pack_attn_pass(2, kk, kke, n_q=Tq, m=m, causal=True, diag=diag))
        cmd(f"cycles after pass 2 tile {j}", b"", P.Op.CYCLES)
    for j, (kb, nk, diag) in enumerate(tiles):
        (kk, kke), (vv, vve) = tile(kb, nk)
        first, last = j == 0, j == len(tiles) - 1
        cmd(f"pass 3 tile {j}", P.pack_attn_pass(3, kk, kke, n_q=Tq, v_mant=vv, v_exp=vve, m=m, big_e=big_e,
                                                   total=total, causal=True, diag=diag, first=first, last=last))
        if j == 0:
            cmd("read slot keeps the accumulators", P.pack_read_slot(0), P.Op.READ_SLOT)
            cmd("info keeps them", b"", P.Op.INFO)
            out.append(("empty frames change nothing", bytes([P.END, P.END])))
    cmd("pass 3 after the last tile", P.pack_attn_pass(3, *tile(0, MK)[0], n_q=Tq, v_mant=v[:MK], v_exp=ve[:MK],
                                                         m=m, big_e=big_e, total=total, causal=True, diag=Tk - Tq))
    cmd("pass 2 after a rejected pass", P.pack_attn_pass(2, k[:MK], ke[:MK], n_q=Tq, m=m))

    # one tile, not causal, n_q and n_k as given; the host's m and E as given
    def p1(n_q, n_k, with_q=True, causal=False, diag=0):
        return P.pack_attn_pass(1, k[:n_k], ke[:n_k], q=(q[:n_q], qe[:n_q]) if with_q else None, n_q=n_q,
                                v_exp=ve[:n_k], causal=causal, diag=diag)

    def p3(n_q, n_k, with_q=False, first=False, last=False, mm=None, ee=None):
        mm = m[:n_q] if mm is None else mm
        ee = big_e[:n_q] if ee is None else ee
        return P.pack_attn_pass(3, k[:n_k], ke[:n_k], q=(q[:n_q], qe[:n_q]) if with_q else None, n_q=n_q,
                                v_mant=v[:n_k], v_exp=ve[:n_k], m=mm, big_e=ee, total=total[:n_q],
                                first=first, last=last)

    # the sum's range edges (and a byte of each set), accepted: any sum in range gives a defined answer
    for edge in (1 << 15, (1 << 17) + 1, (1 << 24) + (1 << 16), (1 << 25) - 1):
        cmd(f"pass 3 first and last, sum {edge:#x}", P.pack_attn_pass(
            3, k[:MK], ke[:MK], q=(q, qe), n_q=Tq, v_mant=v[:MK], v_exp=ve[:MK], m=m, big_e=big_e,
            total=np.full(Tq, edge), first=True, last=True))
    cmd("pass 1, 1 x 1", p1(1, 1))
    cmd("pass 1, full tile", p1(MQ, MK))
    cmd("pass 2, full tile, m below the true maximum", P.pack_attn_pass(2, k[:MK], ke[:MK], n_q=MQ, m=m - 300))
    cmd("pass 3 first, E below the true maximum", p3(MQ, MK, first=True, ee=big_e - 2))
    cmd("pass 3 first again over open accumulators, new Q rows", p3(MQ, MK, with_q=True, first=True))
    cmd("pass 3 continuing with new Q rows", p3(MQ, MK, with_q=True))
    cmd("pass 3 last", p3(MQ, MK, last=True))
    cmd("pass 1 after the last tile", p1(MQ, MK, with_q=False))
    cmd("pass 3 opens the accumulators", p3(MQ, MK, first=True))
    cmd("pass 1 closes them", p1(MQ, MK, with_q=False))
    cmd("pass 3 continuing after pass 1", p3(MQ, MK))
    for label, frame in (("an INFO with an escape error", bytes([P.Op.INFO, P.ESC, 0x01, P.END])),
                         ("RECALL", P.encode_command(P.Op.RECALL, P.pack_vector_cmd(np.zeros(c.d, int), 0, c.d))),
                         ("ATTENTION", P.encode_command(P.Op.ATTENTION, P.pack_attention(
                             q[:1], qe[:1], k[:1], ke[:1], v[:1], ve[:1]))),
                         ("RESET_CACHE", P.encode_command(P.Op.RESET_CACHE)),
                         ("a damaged ATTN_PASS", P.encode_command(P.Op.ATTN_PASS, p1(MQ, MK))[:-2] + bytes([0x5A, P.END]))):
        cmd(f"pass 1 before {label}", p1(MQ, MK))
        cmd(f"pass 3 before {label}", p3(MQ, MK, first=True))
        out.append((label, frame))
        cmd(f"pass 3 continuing after {label}", p3(MQ, MK))
        cmd(f"pass 2 with the Q rows held before {label}", P.pack_attn_pass(2, k[:MK], ke[:MK], n_q=MQ, m=m))
    if MQ > 1:
        cmd("pass 1 holds max_queries rows", p1(MQ, MK))
        cmd("pass 2 for fewer rows than held", P.pack_attn_pass(2, k[:MK], ke[:MK], n_q=MQ - 1, m=m[:MQ - 1]))
        cmd("pass 1 holds them again", p1(MQ, MK))
        cmd("pass 3 opens max_queries accumulators", p3(MQ, MK, first=True))
        cmd("pass 3 continuing fewer rows", p3(MQ - 1, MK, with_q=True))
    cmd("pass 1 causal, no row keeping a key", p1(MQ, MK, causal=True, diag=-MQ))
    cmd("status at the end", b"", P.Op.STATUS)
    return out
