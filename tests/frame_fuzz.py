"""Malformed-frame fuzz for any hmtx device behind a byte transport (docs/verification.md).

:class:`FrameFuzzer` makes a stream of command frames: good ones (every opcode, weight reloads,
state errors such as READ_SLOT past the fill) interleaved with malformed ones of named kinds,
each with the status(es) docs/protocol.md section 4 prescribes. :func:`fuzz_device` sends them
through a transport one at a time and checks, frame by frame:

* exactly one response per non-empty frame, none for an empty one, nothing left over (nothing
  lost, nothing extra);
* every response is well formed (CRC, opcode echo = the first body byte or 0, error responses
  empty) and its status is one the kind allows;
* byte for byte equal to the golden device fed the same bytes (CYCLES payloads excepted: the
  counts are implementation-defined) -- the point when the transport is the RTL;
* a failed command changes nothing: a *shadow* golden device that sees only the good frames
  (and the failed LOAD_WEIGHTS frames, whose matrix the protocol invalidates) answers every good
  frame exactly as the device under test does.

A discrepancy raises AssertionError naming the seed, the frame number, its kind and its bytes.
"""

import time

import numpy as np

from hmtx.model import fixed
from hmtx.model import protocol as P
from hmtx.model.golden_device import GoldenDevice
from hmtx.model.protocol import END, ESC, MAX_BODY, Op, Status

__all__ = ["KINDS", "FrameFuzzer", "fuzz_device"]

# kind -> statuses docs/protocol.md allows for it (None: any, "none": no response at all)
KINDS = {
    "good": None,                     # checked against the shadow instead
    "random": None,
    "truncated": {Status.BAD_FRAME, Status.BAD_CRC, Status.BAD_LENGTH},
    "bad_crc": {Status.BAD_CRC},
    "bit_flip": {Status.BAD_CRC},     # CRC-8 (0x07) catches every single-bit error
    "bad_escape": {Status.BAD_FRAME},
    "esc_end": {Status.BAD_FRAME},
    "overlong": {Status.BAD_FRAME},
    "one_byte": {Status.BAD_FRAME},
    "unknown_opcode": {Status.BAD_OPCODE},
    "wrong_length": {Status.BAD_LENGTH},
    "out_of_range": {Status.BAD_ARG},
    "weights_out_of_order": {Status.BAD_ARG},
    "empty": "none",
}
# relative frequencies of the kinds in a stream
WEIGHTS = {"good": 30, "random": 6, "truncated": 8, "bad_crc": 6, "bit_flip": 8, "bad_escape": 5,
           "esc_end": 3, "overlong": 0.15, "one_byte": 3, "unknown_opcode": 5, "wrong_length": 7,
           "out_of_range": 10, "weights_out_of_order": 4, "empty": 2}


class FrameFuzzer:
    """Frames for a device whose state a shadow golden device tracks (``shadow``)."""

    def __init__(self, cfg, rng: np.random.Generator, shadow: GoldenDevice, overlong: bool = True):
        self.cfg, self.rng, self.shadow = cfg, rng, shadow
        kinds = [k for k in WEIGHTS if overlong or k != "overlong"]
        w = np.array([WEIGHTS[k] for k in kinds], float)
        self.kinds, self.p = kinds, w / w.sum()
        self._queue = []                       # (kind, raw) of a multi-frame good sequence
        self.weights = [fixed.quantize_weight(rng.normal(size=(cfg.d, cfg.d_h))) for _ in range(2)]
        # ATTN_PASS (1.3 / 2.2): only in the forms that need no state (Q rows sent; pass 3 first
        # and last): the shadow sees no malformed frame, and every frame but a few drops the
        # held Q rows and accumulators on the device
        self.attn_pass = P.takes_attn_pass(shadow.version)

    # -- building blocks ---------------------------------------------------------------------
    def vec(self, n=None):
        m, e = fixed.quantize_bfp(self.rng.normal(size=n or self.cfg.d) * 4)
        return m, int(e)

    def weight_frames(self):
        return [P.encode_command(Op.LOAD_WEIGHTS, p)
                for i, qw in enumerate(self.weights) for p in P.weight_chunks(i, qw, self.chunk())]

    def chunk(self):
        return int(self.rng.choice([self.cfg.d_h, 4 * self.cfg.d_h, P.LOAD_CHUNK], p=[.1, .3, .6]))

    def good_body(self) -> bytes:
        """The unescaped body of a valid command (opcode, payload, CRC)."""
        c, r = self.cfg, self.rng
        if not all(self.shadow.loaded) and r.random() < 0.25:
            op = "weights"              # failed LOAD_WEIGHTS frames invalidate a matrix; reload
        else:
            ops = ["info", "status", "cycles", "reset", "write", "write", "read", "recall", "recall", "attention",
                   "weights"] + (["attn_pass"] if self.attn_pass else [])
            p = np.array([.06, .1, .06, .03, .2, .1, .12, .15, .08, .08, .02] + ([.06] if self.attn_pass else []))
            op = r.choice(ops, p=p / p.sum())
        op = str(op)
        if op == "info":
            return _body(Op.INFO)
        if op == "status":
            return _body(Op.STATUS)
        if op == "cycles":
            return _body(Op.CYCLES)
        if op == "reset":
            return _body(Op.RESET_CACHE)
        if op == "write":
            return _body(Op.WRITE_MEMORY, P.pack_vector_cmd(*self.vec(), c.d))
        if op == "read":
            return _body(Op.READ_SLOT, P.pack_read_slot(int(r.integers(0, c.n_slots + 2))))
        if op == "recall":
            # the three forms (protocol 1.2): no flags byte, without the probabilities, with them
            flags = [None, 0, P.RECALL_PROBS][int(r.integers(3))]
            return _body(Op.RECALL, P.pack_recall_cmd(*self.vec(), c.d, flags))
        if op == "attn_pass":
            return _body(Op.ATTN_PASS, self.attn_pass_payload())
        if op == "attention":
            n_q, n_k = int(r.integers(1, c.max_queries + 1)), int(r.integers(1, c.max_keys + 1))
            causal = bool(r.integers(2)) and n_q <= n_k
            q, qe = fixed.quantize_bfp(r.normal(size=(n_q, c.head_dim)))
            k, ke = fixed.quantize_bfp(r.normal(size=(n_k, c.head_dim)))
            v, ve = fixed.quantize_bfp(r.normal(size=(n_k, c.head_dim)))
            return _body(Op.ATTENTION, P.pack_attention(q, qe, k, ke, v, ve, causal))
        frames = self.weight_frames()
        self._queue = [("good", f) for f in frames[1:]]
        return _unescape(frames[0])

    def attn_pass_payload(self, bad=None) -> bytes:
        """A stateless ATTN_PASS (Q rows sent; pass 3 first and last) of random sizes, pass, mask
        and host scalars in range; ``bad``: one of its fields out of range (BAD_ARG)."""
        c, r = self.cfg, self.rng
        n_q, n_k = int(r.integers(1, c.max_queries + 1)), int(r.integers(1, c.max_keys + 1))
        if bad == "n_q":
            n_q = int(r.choice([0, c.max_queries + 1]))
        elif bad == "n_k":
            n_k = int(r.choice([0, c.max_keys + 1]))
        pass_ = int(r.integers(1, 4))
        causal = bool(r.integers(2))
        diag = int(r.integers(-n_q, n_k + 1)) if causal else 0

        def rows(n):
            m, e = fixed.quantize_bfp(r.normal(size=(n, c.head_dim)) * 2.0 ** r.integers(-4, 5, (n, 1)))
            return b"".join(P.pack_bfp8(mm, ee) for mm, ee in zip(m, e))
        flags = causal | pass_ << P.ATTN_PASS_SHIFT | P.ATTN_Q | ((P.ATTN_FIRST | P.ATTN_LAST) if pass_ == 3 else 0)
        if bad == "flags":
            flags |= int(r.choice([0x40, 0x80, P.ATTN_FIRST if pass_ != 3 else 0x40]))
        if bad == "diag":
            flags, diag = flags & ~P.ATTN_CAUSAL, int(r.choice([-1, 1, 300]))
        m = r.integers(-(1 << 31), 1 << 31, n_q) if r.random() < 0.2 else r.integers(-4000, 4000, n_q)
        e = r.integers(fixed.EXP_MIN, fixed.EXP_MAX + 1, n_q)
        total = r.integers(P.ATTN_TOTAL_MIN, P.ATTN_TOTAL_LIMIT, n_q)
        if bad == "scalar" and pass_ == 3 and n_q:
            if r.integers(2):
                e[int(r.integers(n_q))] = int(r.choice([fixed.EXP_MIN - 1, fixed.EXP_MAX + 1]))
            else:
                total[int(r.integers(n_q))] = int(r.choice([0, P.ATTN_TOTAL_MIN - 1, P.ATTN_TOTAL_LIMIT, (1 << 32) - 1]))
        head = bytes([n_q, n_k, flags]) + diag.to_bytes(2, "little", signed=True)
        scal = {1: b"", 2: b"".join(int(x).to_bytes(4, "little", signed=True) for x in m),
                3: b"".join(int(a).to_bytes(4, "little", signed=True) + bytes([int(b) & 0xFF]) + int(t).to_bytes(4, "little")
                            for a, b, t in zip(m, e, total))}[pass_]
        body = bytearray(rows(n_q) + rows(n_k))
        if pass_ == 1:
            ve = r.integers(fixed.EXP_MIN, fixed.EXP_MAX + 1, n_k)
            if bad == "scalar" and n_k:
                ve[int(r.integers(n_k))] = int(r.choice([fixed.EXP_MIN - 1, fixed.EXP_MAX + 1]))
            body += ve.astype(np.int8).tobytes()
        elif pass_ == 3:
            body += rows(n_k)
        if bad == "row" and n_q and n_k:
            row = 1 + c.head_dim
            i = int(r.integers(len(body) // row)) * row if pass_ != 1 else int(r.integers(n_q + n_k)) * row
            if r.integers(2):
                body[i + 1 + int(r.integers(c.head_dim))] = 0x80
            else:
                body[i] = int(r.choice([fixed.EXP_MIN - 1, fixed.EXP_MAX + 1])) & 0xFF
        elif bad == "scalar" and pass_ == 2:
            return self.attn_pass_payload("flags")          # (pass 2's m has no range)
        return head + scal + bytes(body)

    # -- malformed frames ----------------------------------------------------------------------
    def out_of_range_body(self) -> bytes:
        c, r = self.cfg, self.rng
        which = r.choice(["vec_mant", "vec_exp", "lw_matrix", "lw_exp", "lw_shift", "lw_rows0", "lw_past_end",
                          "lw_mant", "att_nq", "att_nk", "att_flags", "att_causal", "att_exp", "recall_flags"]
                         + (["ap_n_q", "ap_n_k", "ap_flags", "ap_diag", "ap_scalar", "ap_row"] if self.attn_pass else []))
        if which.startswith("ap_"):
            return _body(Op.ATTN_PASS, self.attn_pass_payload(which[3:]))
        if which == "recall_flags":
            # a reserved bit of RECALL's flags byte (protocol 1.2), with or without PROBS
            flags = int(r.integers(1, 128)) << 1 | int(r.integers(2))
            return _body(Op.RECALL, P.pack_vector_cmd(*self.vec(), c.d) + bytes([flags]))
        if which in ("vec_mant", "vec_exp"):
            m, e = self.vec()
            payload = bytearray(P.pack_vector_cmd(m, e, c.d))
            if which == "vec_mant":
                payload[1 + int(r.integers(c.d))] = 0x80
            else:
                payload[0] = int(r.choice([fixed.EXP_MIN - 1, fixed.EXP_MAX + 1, -128, 127])) & 0xFF
            return _body(Op(int(r.choice([Op.WRITE_MEMORY, Op.RECALL]))), bytes(payload))
        if which.startswith("lw_"):
            rows = int(r.integers(1, 4))
            mant = r.integers(-127, 128, (rows, c.d_h))
            matrix, exp, shift, off = int(r.integers(2)), 0, 3, 0
            if which == "lw_matrix":
                matrix = int(r.integers(2, 256))
            elif which == "lw_exp":
                exp = int(r.choice([fixed.EXP_MIN - 1, fixed.EXP_MAX + 1]))
            elif which == "lw_shift":
                shift = int(r.integers(P.SHIFT_MAX + 1, 256))
            elif which == "lw_past_end":
                off = c.d - rows + int(r.integers(1, rows + 1)) if self.shadow.next_row[matrix] == 0 else c.d
            if which == "lw_rows0":
                return _body(Op.LOAD_WEIGHTS, bytes([matrix, 0, 3]) + (0).to_bytes(2, "little") + (0).to_bytes(2, "little"))
            header = bytes([matrix, exp & 0xFF, shift]) + off.to_bytes(2, "little") + rows.to_bytes(2, "little")
            flat = mant.astype(np.int8).tobytes()
            if which == "lw_mant":
                flat = bytearray(flat)
                flat[int(r.integers(len(flat)))] = 0x80
            return _body(Op.LOAD_WEIGHTS, header + bytes(flat))
        # ATTENTION
        n_q, n_k, flags = 1, 2, 0
        if which == "att_nq":
            n_q = int(r.choice([0, c.max_queries + 1]))
        elif which == "att_nk":
            n_k = int(r.choice([0, c.max_keys + 1]))
        elif which == "att_flags":
            flags = int(r.integers(2, 256))
        elif which == "att_causal":
            n_q, n_k, flags = 2, 1, 1
        rows = []
        for i in range(n_q + 2 * n_k):
            m, e = self.vec(c.head_dim)
            rows.append(P.pack_bfp8(m, e))
        if which == "att_exp" and rows:
            i = int(r.integers(len(rows)))
            rows[i] = bytes([(fixed.EXP_MAX + 1) & 0xFF]) + rows[i][1:]
        return _body(Op.ATTENTION, bytes([n_q, n_k, flags]) + b"".join(rows))

    def next(self) -> tuple[str, bytes]:
        """(kind, wire bytes) of the next frame."""
        if self._queue:
            return self._queue.pop(0)
        r = self.rng
        kind = str(r.choice(self.kinds, p=self.p))
        if kind == "good":
            return kind, P.slip_escape(self.good_body())
        if kind == "random":
            return kind, r.integers(0, 256, int(r.integers(1, 60)), dtype=np.uint8).tobytes() + bytes([END])
        if kind == "empty":
            return kind, bytes([END])
        if kind == "one_byte":
            b = int(r.integers(256))
            return kind, (bytes([ESC, 0xDC if b == END else 0xDD]) if b in (END, ESC) else bytes([b])) + bytes([END])
        if kind == "unknown_opcode":
            known = {int(o) for o in P.ops_of(self.shadow.version)}
            op = int(r.choice([o for o in range(256) if o not in known]))
            return kind, P.slip_escape(_with_crc(bytes([op]) + r.integers(0, 256, int(r.integers(0, 8)), dtype=np.uint8).tobytes()))
        if kind == "out_of_range":
            return kind, P.slip_escape(self.out_of_range_body())
        if kind == "weights_out_of_order":
            m = int(r.integers(2))
            nxt = self.shadow.next_row[m]
            off = int(r.choice([o for o in range(1, self.cfg.d) if o != nxt]))
            rows = 1
            body = _body(Op.LOAD_WEIGHTS, bytes([m, self.weights[m].exp & 0xFF, self.weights[m].shift])
                         + off.to_bytes(2, "little") + rows.to_bytes(2, "little")
                         + np.asarray(self.weights[m].mant[off:off + 1]).astype(np.int8).tobytes())
            return kind, P.slip_escape(body)
        if kind == "overlong":
            n = MAX_BODY + int(r.integers(1, 200))
            body = r.integers(0, 0xC0, n, dtype=np.uint8).tobytes()       # no END/ESC inside
            return kind, body + bytes([END])
        body = bytearray(self.good_body())
        self._queue = []                        # (a weight reload's later chunks stay unsent)
        if kind == "truncated":
            cut = bytes(body[:int(r.integers(1, len(body)))])
            # A flagged RECALL cut by its last byte is a valid RECALL without flags when its CRC
            # byte was 0 (docs/protocol.md section 9): not a truncation the device can see.
            while cut[:1] == bytes([Op.RECALL]) and len(cut) in P.recall_lengths(self.cfg.d) and P.crc8(cut) == 0:
                cut = cut[:-1]
            return kind, P.slip_escape(cut)
        if kind == "bad_crc":
            body[-1] ^= int(r.integers(1, 256))
            return kind, P.slip_escape(bytes(body))
        if kind == "bit_flip":
            i = int(r.integers(len(body)))
            body[i] ^= 1 << int(r.integers(8))
            return kind, P.slip_escape(bytes(body))
        if kind == "wrong_length":
            # Bytes cut from or added to the end: a header that sets the length (LOAD_WEIGHTS
            # rows, ATTENTION n_q/n_k) stays as it was, so the length is what is wrong.
            core = bytes(body[:-1])
            # (RECALL takes two lengths, S_n with or without the flags byte: neither is wrong)
            ok = P.recall_lengths(self.cfg.d) if core[0] == Op.RECALL else (len(body),)
            delta = int(r.choice([x for x in (-3, -2, -1, 1, 2, 3)
                                  if len(core) + x >= 1 and len(body) + x not in ok]))
            if delta < 0:
                core = core[:len(core) + delta]
            else:
                core += r.integers(0, 256, delta, dtype=np.uint8).tobytes()
            return kind, P.slip_escape(_with_crc(core))
        esc = bytearray(P.slip_escape(bytes(body)))[:-1]          # without its END
        i = int(r.integers(len(esc) + 1))
        if kind == "bad_escape":
            bad = int(r.choice([b for b in range(256) if b not in (0xDC, 0xDD, END)]))
            return kind, bytes(_safe_cut(esc, i)) + bytes([ESC, bad]) + bytes(esc[i:]) + bytes([END])
        if kind == "esc_end":
            return kind, bytes(_safe_cut(esc, i)) + bytes([ESC, END])
        raise AssertionError(kind)


def _body(op, payload=b"") -> bytes:
    return _with_crc(bytes([int(op)]) + bytes(payload))


def _with_crc(core: bytes) -> bytes:
    return core + bytes([P.crc8(core)])


def _unescape(wire: bytes) -> bytes:
    (f,) = P.FrameDecoder().feed(wire)
    return f.body


def _invalidate(shadow: GoldenDevice, body: bytes) -> None:
    """Show the shadow a failed LOAD_WEIGHTS naming the same matrix byte (the protocol invalidates
    that matrix whatever made the frame fail)."""
    if len(body) >= 2:
        core = bytes(body[:2]) + b"\x00"
        if P.crc8(core) == 0:
            core = bytes(body[:2]) + b"\x01"
        shadow.feed(P.slip_escape(core))          # BAD_CRC, opcode LOAD_WEIGHTS


def _safe_cut(esc: bytearray, i: int) -> bytearray:
    """``esc[:i]`` without a dangling ESC (so the inserted bytes are what breaks the frame)."""
    out = esc[:i]
    n = 0
    while n < len(out) and out[len(out) - 1 - n] == ESC:
        n += 1
    return out[:len(out) - 1] if n % 2 else out


def fuzz_device(transport, cfg, frames: int, seed: int, *, overlong: bool = True, timeout: float = 5.0,
                cycles_exact: bool = True) -> dict:
    """Send ``frames`` fuzz frames through ``transport`` and check every answer (module
    docstring). Returns {kind: frames sent} plus "responses" and "good_ok"."""
    rng = np.random.default_rng(seed)
    engine = getattr(transport, "engine", None) or "lanes"
    shadow, twin = GoldenDevice(cfg, engine), GoldenDevice(cfg, engine)   # twin: fed every byte (the reference)
    fz = FrameFuzzer(cfg, rng, shadow, overlong)
    dec = P.FrameDecoder()
    stats = {k: 0 for k in KINDS}
    stats.update(responses=0, good_ok=0)
    pending = []
    # Start in a known state with the weights loaded; then the stream.
    script = [("good", f) for f in fz.weight_frames()]
    # a few overlong frames at fixed places (64 KiB each, so rare in the random mix)
    forced = {frames // 3, 2 * frames // 3} if overlong else set()
    sent = 0
    while sent < frames:
        kind, raw = script.pop(0) if script else fz.next()
        if sent in forced and not script:
            kind, raw = "overlong", rng.integers(0, 0xC0, MAX_BODY + 1 + int(rng.integers(100)),
                                                 dtype=np.uint8).tobytes() + bytes([END])
        where = f"seed {seed}, frame {sent} ({kind}): {raw[:48].hex()}{'...' if len(raw) > 48 else ''}"
        n_frames = P.FrameDecoder().feed(raw)
        want_raw = twin.feed(raw)
        want = P.FrameDecoder().feed(want_raw)
        assert len(want) == sum(1 for f in n_frames if f.body or f.error), f"{where}: golden answered {len(want)}"
        transport.write(raw)
        got = pending
        deadline = time.monotonic() + timeout
        while len(got) < len(want):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{where}: {len(got)} of {len(want)} responses within {timeout} s (lost)")
            got += dec.feed(transport.read(min(left, 0.5)))
        pending = got[len(want):]
        got = got[:len(want)]
        assert not pending, f"{where}: {len(pending)} extra response(s)"
        for f, g, w in zip(n_frames, got, want):
            rsp = P.decode_response(g)
            wr = P.decode_response(w)
            stats["responses"] += 1
            assert rsp.op == (f.body[0] if f.body else 0), f"{where}: echo {rsp.op:#x}"
            assert rsp.status == Status.OK or not rsp.payload, f"{where}: error with payload"
            if rsp.op == Op.CYCLES and rsp.status == Status.OK and not cycles_exact:
                assert (rsp.status, len(rsp.payload)) == (wr.status, len(wr.payload)), where
            else:
                assert g.body == w.body, f"{where}: device {g.body.hex()} != golden {w.body.hex()}"
            allowed = KINDS[kind]
            if allowed == "none":
                raise AssertionError(f"{where}: an empty frame was answered")
            if allowed is not None:
                assert rsp.status in allowed, \
                    f"{where}: {P.status_name(rsp.status)}, expected {sorted(P.status_name(s) for s in allowed)}"
            # The shadow sees what may change state: good frames and failed LOAD_WEIGHTS.
            if kind == "good":
                sh = P.decode_response(P.FrameDecoder().feed(shadow.feed(raw))[0])
                same = (sh.status, sh.op, sh.payload) == (rsp.status, rsp.op, rsp.payload) or (
                    rsp.op == Op.CYCLES and not cycles_exact and sh.status == rsp.status)
                assert same, f"{where}: a failed frame before this one changed the device's state"
                stats["good_ok"] += rsp.status == Status.OK
            elif rsp.status != Status.OK and f.body[:1] == bytes([Op.LOAD_WEIGHTS]):
                _invalidate(shadow, f.body)
            elif rsp.status == Status.OK:
                shadow.feed(P.slip_escape(f.body))      # a random frame that happened to be valid
        stats[kind] += 1
        sent += 1
    # Nothing lost at the end: one more good command, one answer.
    transport.write(P.encode_command(Op.INFO))
    tail = pending
    deadline = time.monotonic() + timeout
    while not tail and time.monotonic() < deadline:
        tail += dec.feed(transport.read(0.2))
    assert len(tail) == 1 and P.decode_response(tail[0]).status == Status.OK, f"seed {seed}: final INFO: {tail}"
    return stats
