"""The fixed-point arithmetic of hmtx, defined once.

This module is the contract between the golden model, the PyTorch reference's fixed mode
(``hmtx.model.fixed_torch`` mirrors it operation for operation) and the Amaranth hardware
(``hmtx.hw``), which imports the constants and the lookup-table generators below. Every
operation is specified to the bit in ``docs/arithmetic.md``; the numpy functions here are the
executable form of that document. A difference of one LSB anywhere is a bug.

Number formats
--------------
* BFP8 vector: int8 mantissas in [-127, 127] sharing one exponent ``e``: ``x = m * 2**e``.
  Hidden states (S_n, M_i) and attention Q/K/V rows use it; HMT's memory embeddings have large
  outlier channels, and a per-vector power-of-two scale keeps the other channels' precision
  while making every re-alignment between vectors a shift.
* Weights W (d x d_h): one BFP8 block for the whole matrix, plus a projection shift chosen from
  the weights so that the int16 projection output can never saturate.
* Projections q = W_q^T S and K_i = W_k^T M_i: int16 mantissas, one exponent per vector.
* Scores: int32 in the log2 domain with ``SCORE_FRAC`` fractional bits (t = s * log2(e) / sqrt(dk)).
* Softmax: exp2 as a 256-entry LUT (``EXP2_BITS``-bit values) and a right shift, uint32 sum,
  one reciprocal per row as an exact integer division, probabilities in Q0.15 (<= 32767).
* Output P_n: int16 mantissas with one exponent.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MANT_MAX", "EXP_MIN", "EXP_MAX", "PROJ_BITS", "ACC_BITS", "SCORE_BITS", "SCORE_FRAC",
    "SCALE_BITS", "EXP2_BITS", "EXP2_CUTOFF", "RECIP_BITS", "PROB_BITS", "PROB_MAX",
    "ALIGN_CUTOFF", "OUT_BITS", "OUT_SHIFT", "D_MAX", "KEYS_MAX",
    "QuantWeight", "exp2_lut", "score_scale", "projection_shift", "shift_for_bound",
    "round_shift", "shift_round_sat", "saturate",
    "quantize_bfp", "dequantize", "quantize_weight", "project", "scores", "softmax",
    "weighted_sum", "attend", "causal_mask", "diag_mask", "recall",
    "row_max", "value_exp_max", "exp_terms", "probabilities", "weight_acc", "finish_weighted_sum",
    "CARRY_WEIGHTS", "carry_digits", "carry_acc",
    "attend_tiled",
    "FOLD_BITS", "fold_shift", "fold_key", "recall_folded",
]

# --- formats -------------------------------------------------------------------------------
MANT_BITS = 8
MANT_MAX = 127                  # symmetric: -128 is never produced
EXP_MIN, EXP_MAX = -64, 63      # BFP exponents of host vectors and weights (7-bit signed)
PROJ_BITS = 16                  # q and K mantissas
ACC_BITS = 48                   # MAC accumulator width; the widest sum needs 43 bits (see D_MAX)
SCORE_BITS = 32                 # log2-domain scores t
SCORE_FRAC = 8                  # fractional bits of t (and index bits of the exp2 LUT)
SCALE_BITS = 16                 # unsigned multiplier for log2(e)/sqrt(dk), in [2^15, 2^16)
EXP2_BITS = 15                  # exp2 LUT values in (2^14, 2^15]; LUT[0] = 2^15
EXP2_CUTOFF = 16                # an exponent term 2^-n with n >= 16 is 0
RECIP_BITS = 40                 # r = floor(2^40 / sum)
PROB_BITS = 15                  # probabilities in Q0.15
PROB_MAX = (1 << PROB_BITS) - 1  # clamped so that p fits a signed 16-bit multiplier input
ALIGN_CUTOFF = 16               # weight alignment shifts are capped here (p >> 16 == 0)
OUT_BITS = 16                   # P_n / attention output mantissas
OUT_SHIFT = 7                   # acc (Q.15 weights x int8 values) >> 7 -> exponent E - 8
FOLD_BITS = MANT_BITS           # contract 2: the folded keys K'_i = W_q K_i are BFP8, like M_i
D_MAX = 4096                    # largest vector length (d, d_h, dk) the widths are proven for
KEYS_MAX = 1024                 # largest number of keys (cache slots, tile keys) in one softmax

# Widest accumulation: a score q.k with int16 x int16 products over D_MAX terms:
# 32767^2 * 4096 < 2^42, so a signed 43-bit accumulator suffices; ACC_BITS leaves margin.
assert (32767 * 32767 * D_MAX).bit_length() + 1 <= ACC_BITS
# Contract 2's folded key W_q K_i: int8 x int16 products over D_MAX terms, < 2^34.
assert (MANT_MAX * 32768 * D_MAX).bit_length() + 1 <= ACC_BITS
# Softmax sum: at most KEYS_MAX terms of at most 2^15 -> < 2^25; the reciprocal is then >= 2^15.
assert (KEYS_MAX << EXP2_BITS).bit_length() <= 32


@dataclass(frozen=True)
class QuantWeight:
    """A quantized projection matrix (d x d_h): ``W ~= mant * 2**exp``; ``shift`` requantizes
    the accumulator ``x^T mant`` to int16 without saturation for any BFP8 input ``x``."""

    mant: np.ndarray
    exp: int
    shift: int

    @property
    def d(self) -> int:
        return self.mant.shape[0]

    @property
    def d_h(self) -> int:
        return self.mant.shape[1]


# --- tables and constants generated from the parameters ------------------------------------
def exp2_lut() -> list[int]:
    """``LUT[r] = round(2^15 * 2^(-r/256))`` for r in [0, 256): the fractional part of 2^-v."""
    return [int(round(2.0 ** (EXP2_BITS - r / (1 << SCORE_FRAC)))) for r in range(1 << SCORE_FRAC)]


@functools.lru_cache(maxsize=None)
def _exp2_table() -> np.ndarray:
    # Built once: softmax runs once per recall, and rebuilding the 256 entries dominated it.
    table = np.asarray(exp2_lut(), dtype=np.int64)
    table.flags.writeable = False
    return table


def score_scale(dk: int) -> tuple[int, int]:
    """Multiplier and shift with ``mult / 2^shift ~= log2(e) / sqrt(dk)``, ``2^15 <= mult < 2^16``.

    The softmax runs in base 2, so the natural-log factor log2(e) is folded into the same
    constant as the 1/sqrt(dk) attention scale: one multiply per score.
    """
    if not isinstance(dk, (int, np.integer)) or not 1 <= dk <= D_MAX:
        raise ValueError(f"head dimension dk must be an integer in [1, {D_MAX}], got {dk!r}")
    c = math.log2(math.e) / math.sqrt(int(dk))
    f, e = math.frexp(c)                      # c = f * 2^e, f in [0.5, 1)
    mult, shift = int(round(f * (1 << SCALE_BITS))), SCALE_BITS - e
    if mult == 1 << SCALE_BITS:
        mult, shift = mult >> 1, shift - 1
    return mult, shift


def projection_shift(mant: np.ndarray) -> int:
    """Smallest right shift s >= 0 such that no int8 input can push ``x^T W`` out of int16.

    The worst case of column j is ``127 * sum_c |W[c, j]|``; the bound uses the largest column,
    so saturation in :func:`project` is impossible by construction (it is kept as a guard).
    """
    return shift_for_bound(MANT_MAX * int(np.abs(mant.astype(np.int64)).sum(axis=0).max(initial=0)))


def shift_for_bound(bound: int) -> int:
    """Smallest s >= 0 with ``round_shift(bound, s)`` inside the int16 projection range."""
    s = 0
    while ((bound + ((1 << s) >> 1)) >> s) > (1 << (PROJ_BITS - 1)) - 1:
        s += 1
    return s


# --- primitive integer operations ------------------------------------------------------------
def _int64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def saturate(x, bits: int) -> np.ndarray:
    """Clamp to the signed range of ``bits`` bits."""
    return np.clip(_int64(x), -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def round_shift(x, s) -> np.ndarray:
    """Arithmetic right shift by ``s >= 0`` rounding half up: ``floor(x / 2^s + 1/2)``.

    In hardware: add ``2^(s-1)`` (nothing when s = 0), then shift right arithmetically.
    """
    x, s = _int64(x), _int64(s)
    return (x + ((np.int64(1) << s) >> 1)) >> s


def shift_round_sat(x, s, bits: int) -> np.ndarray:
    """Shift by ``s`` (right with :func:`round_shift` if s > 0, left if s < 0), then saturate
    to ``bits`` signed bits. ``s`` is clamped to [-(bits-1), 62] first; a left shift saturates
    exactly when the shifted value would leave the range."""
    x = _int64(x)
    s = np.clip(_int64(s), -(bits - 1), 62)
    right = np.maximum(s, 0)
    left = np.maximum(-s, 0)
    hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    y = round_shift(x, right)
    over = y > (np.int64(hi) >> left)
    under = y < (np.int64(lo) >> left)
    y = np.where(over, hi, np.where(under, lo, y << left))
    return np.clip(y, lo, hi)


# --- validation ------------------------------------------------------------------------------
def _check_int_array(name, a, ndim, lo, hi) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {a.shape}")
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"{name}: values must lie in [{lo}, {hi}], got [{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def _check_len(name, n, lo=1, hi=D_MAX):
    if not lo <= n <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {n}")


_EXP_ANY = (-(1 << 10), (1 << 10) - 1)   # internal exponents (sums of a few BFP exponents)


# --- quantization from float -------------------------------------------------------------------
def quantize_bfp(x) -> tuple[np.ndarray, np.ndarray]:
    """Quantize each last-axis vector of ``x`` to BFP8: (int8 mantissas, int64 exponent per vector).

    Exponent: with ``max|x| = f * 2^E`` (f in [0.5, 1)), ``e = E - 7`` so the largest mantissa
    lands in [64, 128); if it rounds to 128, ``e += 1``. Mantissas ``m = round_half_even(x / 2^e)``
    (exact: scaling by a power of two). All-zero vectors get ``e = EXP_MIN``. Exponents are
    clamped to [EXP_MIN, EXP_MAX] and mantissas saturated to +-127 after the clamp.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"quantize_bfp: need at least one element per vector, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("quantize_bfp: input contains NaN or infinity")
    amax = np.abs(x).max(axis=-1)
    _, big_e = np.frexp(amax)
    e = big_e.astype(np.int64) - 7
    m = np.round(np.ldexp(x, -e[..., None]))
    bump = np.abs(m).max(axis=-1) > MANT_MAX
    e = np.where(bump, e + 1, e)
    e = np.where(amax == 0, EXP_MIN, np.clip(e, EXP_MIN, EXP_MAX))
    m = np.clip(np.round(np.ldexp(x, -e[..., None])), -MANT_MAX, MANT_MAX)
    return m.astype(np.int8), e.astype(np.int64)


def dequantize(mant, exp) -> np.ndarray:
    """``mant * 2**exp`` (exponent per last-axis vector) as float32."""
    mant = np.asarray(mant, dtype=np.float64)
    exp = _int64(exp)
    return np.ldexp(mant, exp[..., None]).astype(np.float32)


def quantize_weight(w) -> QuantWeight:
    """Quantize a d x d_h float matrix: one BFP8 block, then :func:`projection_shift`."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"quantize_weight: expected a non-empty (d, d_h) matrix, got shape {w.shape}")
    _check_len("d", w.shape[0])
    _check_len("d_h", w.shape[1])
    mant, exp = quantize_bfp(w.reshape(1, -1))
    mant = mant.reshape(w.shape)
    return QuantWeight(mant=mant, exp=int(exp[0]), shift=projection_shift(mant))


# --- the datapath operations -------------------------------------------------------------------
def project(qw: QuantWeight, x_mant, x_exp) -> tuple[np.ndarray, np.ndarray]:
    """``y = W^T x`` for BFP8 vectors x (shape [..., d]): int16 mantissas [..., d_h] and exponents.

    ``acc[j] = sum_c x[c] * W[c, j]`` exactly (|acc| < 2^31), then
    ``y = sat16(round_shift(acc, qw.shift))`` with exponent ``x_exp + qw.exp + qw.shift``.
    """
    w = _check_int_array("weight mantissas", qw.mant, 2, -MANT_MAX, MANT_MAX)
    x = np.asarray(x_mant)
    x = _check_int_array("input mantissas", x, max(x.ndim, 1), -MANT_MAX, MANT_MAX)
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"project: input length {x.shape[-1]} does not match weight rows d={w.shape[0]}")
    xe = _check_int_array("input exponents", np.asarray(x_exp), x.ndim - 1, EXP_MIN, EXP_MAX)
    acc = x @ w
    y = saturate(round_shift(acc, qw.shift), PROJ_BITS)
    return y, xe + qw.exp + qw.shift


def scores(q, q_exp, k, k_exp, dk=None) -> np.ndarray:
    """Log2-domain scores ``t[a, b] ~= 2^8 * log2(e) * (q_a . k_b) / sqrt(dk)`` as int32.

    ``acc = sum_j q[a, j] k[b, j]`` (|acc| < 2^42), ``y = acc * mult`` (mult from
    :func:`score_scale`), ``t = shift_round_sat(y, shift - 8 - q_exp[a] - k_exp[b], 32)``.
    ``dk`` is the length of q and k unless given (contract 2 scores S against W_q K_i, of
    length d, with the scale of the head dimension d_h).
    """
    q = _check_int_array("query mantissas", q, 2, -(1 << 15), (1 << 15) - 1)
    k = _check_int_array("key mantissas", k, 2, -(1 << 15), (1 << 15) - 1)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"scores: query dim {q.shape[1]} != key dim {k.shape[1]}")
    _check_len("vector length", q.shape[1])
    dk = q.shape[1] if dk is None else dk
    qe = _check_int_array("query exponents", q_exp, 1, *_EXP_ANY)
    ke = _check_int_array("key exponents", k_exp, 1, *_EXP_ANY)
    if qe.shape[0] != q.shape[0] or ke.shape[0] != k.shape[0]:
        raise ValueError("scores: one exponent per query row and per key row is required")
    mult, shift = score_scale(dk)
    acc = q @ k.T
    sh = shift - SCORE_FRAC - qe[:, None] - ke[None, :]
    return shift_round_sat(acc * mult, sh, SCORE_BITS)


# --- the softmax and weighted sum as passes over keys ------------------------------------------
# Every row-wise quantity below is a max or a sum over keys, so a row may be cut into key tiles
# and the tiles' partial results combined exactly (attend_tiled); softmax and weighted_sum are the
# one-tile case. Rows are query rows (axis 0), keys axis 1; ``keep`` is the boolean mask.
_NONE = np.iinfo(np.int64).min      # the max over no key


def row_max(t, keep) -> np.ndarray:
    """Pass 1: the largest kept score of each row (``_NONE`` where a row keeps no key)."""
    return np.where(keep, t, _NONE).max(axis=1)


def value_exp_max(keep, v_exp) -> np.ndarray:
    """Pass 1: E, the largest value exponent among each row's kept keys (``_NONE`` if none)."""
    return np.where(keep, np.asarray(v_exp)[None, :], _NONE).max(axis=1)


def exp_terms(t, keep, m) -> np.ndarray:
    """Pass 2: ``e = 0 if n >= 16 else round_shift(LUT[r], n)`` for ``v = max(m - t, 0)``,
    ``n = v >> 8``, ``r = v & 255`` (m the row's maximum over all its keys); masked keys 0.
    (With m the row's maximum, ``m - t >= 0`` always; the clamp defines the passes for any m a
    host may send, docs/arithmetic.md section 11.)"""
    v = np.where(keep, np.maximum(np.asarray(m)[:, None] - t, 0), 0)
    n = v >> SCORE_FRAC
    r = v & ((1 << SCORE_FRAC) - 1)
    return np.where(keep & (n < EXP2_CUTOFF), round_shift(_exp2_table()[r], np.minimum(n, EXP2_CUTOFF)), 0)


def probabilities(e, total) -> np.ndarray:
    """Pass 3: ``p = min(round_shift(e * floor(2^40 / sum), 25), 32767)``, sum over all the row's keys."""
    recip = (np.int64(1) << RECIP_BITS) // np.asarray(total, dtype=np.int64)[:, None]
    return np.minimum(round_shift(e * recip, RECIP_BITS - PROB_BITS), PROB_MAX)


def weight_acc(p, keep, v, v_exp, big_e) -> np.ndarray:
    """Pass 3: ``acc = sum_b round_shift(p_b, clamp(E - v_exp[b], 0, 16)) * v[b]`` over the kept
    keys (with E the largest kept exponent, ``E - v_exp[b] >= 0``; the clamp as in :func:`exp_terms`)."""
    align = np.clip(np.where(keep, np.asarray(big_e)[:, None] - np.asarray(v_exp)[None, :], ALIGN_CUTOFF),
                    0, ALIGN_CUTOFF)
    return np.where(keep, round_shift(p, align), 0) @ np.asarray(v, dtype=np.int64)


# Pass 3 carries each row's accumulator between key tiles in three signed bytes per element
# (docs/arithmetic.md section 11): the device stores them in its int8 buffer and adds them back
# as four extra weighted-sum beats with these weights (a weight is a signed 16-bit operand, so
# 2^16 is two beats of -2^15 over the negated top byte).
CARRY_WEIGHTS = (1, 1 << 8, -(1 << 15), -(1 << 15))


def _sext8(x):
    return ((np.asarray(x, dtype=np.int64) + 128) & 255) - 128


def carry_digits(acc) -> np.ndarray:
    """The three bytes ``(d0, d1, e2)`` (int8, last axis) in which pass 3 carries ``acc``:
    ``d0`` the low byte read as signed, ``d1`` the next byte of ``(acc - d0) / 2^8`` read as
    signed, ``e2`` the low byte of ``-(acc - d0 - 2^8 d1) / 2^16`` read as signed."""
    x = np.asarray(acc, dtype=np.int64)
    d0 = _sext8(x)
    y1 = (x - d0) >> 8
    d1 = _sext8(y1)
    e2 = _sext8(-((y1 - d1) >> 8))
    return np.stack([d0, d1, e2], axis=-1)


def carry_acc(acc) -> np.ndarray:
    """What a pass-3 accumulator is after a tile boundary: ``sum(CARRY_WEIGHTS . digits)``.
    It is congruent to ``acc`` modulo 2^24 and equal to it for ``-8,355,968 <= acc <=
    8,421,247`` (so for ``|acc| <= 2^23 - 2^15``), which holds every true accumulator (the
    weights of a row sum to about 2^15, so ``|acc| < 2^22 + 2^16``); only a host sending a
    wrong m, E or sum can see it wrap."""
    d = carry_digits(acc)
    return d[..., 0] + (d[..., 1] << 8) + 2 * CARRY_WEIGHTS[2] * d[..., 2]


def finish_weighted_sum(acc, big_e) -> tuple[np.ndarray, np.ndarray]:
    """``out = sat16(round_shift(acc, 7))``, exponent ``E - 8``."""
    return saturate(round_shift(acc, OUT_SHIFT), OUT_BITS), np.asarray(big_e) - (PROB_BITS - OUT_SHIFT)


def softmax(t, mask=None) -> np.ndarray:
    """Integer softmax over the last axis of log2-domain scores: Q0.15 probabilities.

    Per row: ``m = max t`` over attended keys; ``v = m - t >= 0``; ``n = v >> 8``,
    ``r = v & 255``; ``e = 0 if n >= 16 else round_shift(LUT[r], n)``; ``sum = sum e``
    (>= 2^15, < 2^25); ``recip = floor(2^40 / sum)``;
    ``p = min(round_shift(e * recip, 25), 32767)``. Masked keys get p = 0.
    """
    t = _check_int_array("scores", t, 2, -(1 << 31), (1 << 31) - 1)
    if t.shape[1] == 0:
        raise ValueError("softmax: no keys (empty cache)")
    _check_len("number of keys", t.shape[1], 1, KEYS_MAX)
    keep = np.ones(t.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if keep.shape != t.shape:
        raise ValueError(f"softmax: mask shape {keep.shape} != scores shape {t.shape}")
    if not keep.any(axis=1).all():
        raise ValueError("softmax: a query row attends to no key")
    e = exp_terms(t, keep, row_max(t, keep))
    return probabilities(e, e.sum(axis=1))


def weighted_sum(p, mask, v, v_exp) -> tuple[np.ndarray, np.ndarray]:
    """``out[a] = sum_b p[a, b] * v[b]`` with exponent alignment: int16 mantissas + exponent.

    ``E = max v_exp[b]`` over the keys row a attends; ``w = round_shift(p, min(E - v_exp[b], 16))``;
    ``acc = sum_b w * v[b]`` (|acc| < 2^23); ``out = sat16(round_shift(acc, 7))``, exponent ``E - 8``.
    """
    p = _check_int_array("probabilities", p, 2, 0, PROB_MAX)
    v = _check_int_array("value mantissas", v, 2, -MANT_MAX, MANT_MAX)
    ve = _check_int_array("value exponents", v_exp, 1, *_EXP_ANY)
    if p.shape[1] != v.shape[0] or ve.shape[0] != v.shape[0]:
        raise ValueError(f"weighted_sum: {p.shape[1]} probabilities per row but {v.shape[0]} value rows")
    keep = np.ones(p.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    big_e = value_exp_max(keep, ve)
    return finish_weighted_sum(weight_acc(p, keep, v, ve, big_e), big_e)


def attend(q_mant, q_exp, k_mant, k_exp, v_mant, v_exp, mask=None):
    """One attention head: ``softmax(q k^T / sqrt(dk)) v`` in the contract's integer arithmetic.

    Returns (out int16 [Tq, dv], out_exp int64 [Tq], probs [Tq, Tk] in Q0.15).
    ``mask[a, b]`` True means query a attends key b (e.g. :func:`causal_mask`).
    """
    k = np.asarray(k_mant)
    v = np.asarray(v_mant)
    if k.ndim != 2 or v.ndim != 2 or k.shape[0] != v.shape[0]:
        raise ValueError(f"attend: keys {k.shape} and values {v.shape} must be 2-D with the same rows")
    if k.shape[0] == 0:
        raise ValueError("attend: no keys (empty cache)")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (np.asarray(q_mant).shape[0], k.shape[0]):
            raise ValueError(f"attend: mask shape {mask.shape} != (queries, keys)")
    t = scores(q_mant, q_exp, k, k_exp)
    p = softmax(t, mask)
    out, out_exp = weighted_sum(p, mask, v, v_exp)
    return out.astype(np.int16), out_exp, p.astype(np.uint16)


def attend_tiled(q_mant, q_exp, k_mant, k_exp, v_mant, v_exp, mask=None, tile: int = 64):
    """:func:`attend` over keys cut into tiles of at most ``tile`` keys, in three passes over the
    tiles, each carrying a few integers per query row: pass 1 the scores' maximum m and the
    value exponents' maximum E, pass 2 the sum of the exp2 terms (then one reciprocal), pass 3
    the weighted sum's accumulator (exact integers, |acc| < 2^23). Every carried quantity is a
    max or a sum of integers, so the result is :func:`attend`'s, bit for bit, for any tiling --
    this is how a row longer than the engine's tile is computed (docs/arithmetic.md section 11).
    Returns what :func:`attend` returns."""
    if not (isinstance(tile, (int, np.integer)) and tile >= 1):
        raise ValueError(f"attend_tiled: tile must be a positive number of keys, got {tile!r}")
    k, v = np.asarray(k_mant), np.asarray(v_mant)
    if k.ndim != 2 or v.ndim != 2 or k.shape[0] != v.shape[0] or k.shape[0] == 0:
        raise ValueError(f"attend_tiled: keys {k.shape} and values {v.shape} must be 2-D with the same rows (>= 1)")
    nq, nk = np.asarray(q_mant).shape[0], k.shape[0]
    _check_len("number of keys", nk, 1, KEYS_MAX)
    keep = np.ones((nq, nk), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if keep.shape != (nq, nk):
        raise ValueError(f"attend_tiled: mask shape {keep.shape} != (queries, keys) = {(nq, nk)}")
    if not keep.any(axis=1).all():
        raise ValueError("attend_tiled: a query row attends to no key")
    v = _check_int_array("value mantissas", v, 2, -MANT_MAX, MANT_MAX)
    ve = _check_int_array("value exponents", v_exp, 1, *_EXP_ANY)
    ke = np.asarray(k_exp)
    tiles = [slice(b, min(b + tile, nk)) for b in range(0, nk, tile)]
    t = [scores(q_mant, q_exp, k[sl], ke[sl]) for sl in tiles]          # (recomputed per pass on a chip)
    m = np.maximum.reduce([row_max(t[j], keep[:, sl]) for j, sl in enumerate(tiles)])
    big_e = np.maximum.reduce([value_exp_max(keep[:, sl], ve[sl]) for sl in tiles])
    e = [exp_terms(t[j], keep[:, sl], m) for j, sl in enumerate(tiles)]
    total = sum(x.sum(axis=1) for x in e)
    p = [probabilities(x, total) for x in e]
    acc = sum(weight_acc(p[j], keep[:, sl], v[sl], ve[sl], big_e) for j, sl in enumerate(tiles))
    out, out_exp = finish_weighted_sum(acc, big_e)
    return out.astype(np.int16), out_exp, np.concatenate(p, axis=1).astype(np.uint16)


def causal_mask(n_queries: int, n_keys: int) -> np.ndarray:
    """Query a (the a-th of the last ``n_queries`` positions) attends keys b <= a + n_keys - n_queries."""
    if n_queries > n_keys:
        raise ValueError(f"causal mask: {n_queries} queries need at least as many keys, got {n_keys}")
    return diag_mask(n_queries, n_keys, n_keys - n_queries)


def diag_mask(n_queries: int, n_keys: int, diag: int) -> np.ndarray:
    """Query a keeps key b iff ``b <= a + diag``: a tile of a causal row (ATTN_PASS's mask, a tile
    at query offset qa and key offset kb of a causal block of Tq queries over Tk keys has
    ``diag = qa - kb + Tk - Tq``)."""
    a = np.arange(n_queries)[:, None]
    b = np.arange(n_keys)[None, :]
    return b <= a + int(diag)


def recall(qw_q: QuantWeight, s_mant, s_exp, k_mant, k_exp, m_mant, m_exp):
    """HMT memory recall: ``P_n = softmax(q K^T / sqrt(d_h)) M`` with ``q = W_q^T S_n``.

    ``k_mant``/``k_exp`` are the cached keys ``K_i = project(W_k, M_i)`` (computed once when M_i
    was written), ``m_mant``/``m_exp`` the cached BFP8 memories. Returns (P_n int16 [d],
    exponent, probabilities [n] in Q0.15).
    """
    k_mant = np.asarray(k_mant)
    if k_mant.ndim != 2 or k_mant.shape[0] == 0:
        raise ValueError(f"recall: empty cache (keys shape {k_mant.shape})")
    q, qe = project(qw_q, np.asarray(s_mant)[None, :], np.asarray(s_exp).reshape(1))
    m_mant = np.asarray(m_mant)
    if m_mant.shape[1] != qw_q.d:
        raise ValueError(f"recall: memories have length {m_mant.shape[1]}, weights expect d={qw_q.d}")
    out, oe, p = attend(q, qe, k_mant, k_exp, m_mant, m_exp)
    return out[0], int(oe[0]), p[0]


# --- contract 2: the query projection folded into the cached keys ---------------------------------
# score_i = q . K_i = (W_q^T S) . K_i = S . (W_q K_i): a write stores K'_i = W_q K_i (length d) next
# to M_i, and a recall never reads W_q. docs/arithmetic.md, "Contract 2".
def fold_shift(acc) -> np.ndarray:
    """Per row of ``acc`` (int, [..., d]): the smallest ``s >= 0`` with every
    ``round_shift(acc, s)`` in [-MANT_MAX, MANT_MAX]. Found from the row's largest and smallest
    value only (round_shift is monotonic), as the hardware does in its first pass."""
    acc = _int64(acc)
    hi, lo = acc.max(axis=-1, initial=0), acc.min(axis=-1, initial=0)
    s = np.zeros(hi.shape, dtype=np.int64)
    while True:
        bad = (round_shift(hi, s) > MANT_MAX) | (round_shift(lo, s) < -MANT_MAX)
        if not bad.any():
            return s
        s = s + bad


def fold_key(qw_q: QuantWeight, k_mant, k_exp) -> tuple[np.ndarray, np.ndarray]:
    """Contract 2's folded keys ``K'_i = W_q K_i`` as BFP8: int8 mantissas [..., d], exponents.

    ``acc[c] = sum_j W_q[c, j] K_i[j]`` exactly (|acc| < 2^34); ``s = fold_shift(acc)``;
    ``K' = round_shift(acc, s)`` (never saturates), exponent ``k_exp + W_q.exp + s``.
    """
    w = _check_int_array("weight mantissas", qw_q.mant, 2, -MANT_MAX, MANT_MAX)
    k = np.asarray(k_mant)
    k = _check_int_array("key mantissas", k, max(k.ndim, 1), -(1 << 15), (1 << 15) - 1)
    if k.shape[-1] != w.shape[1]:
        raise ValueError(f"fold_key: key length {k.shape[-1]} does not match weight columns d_h={w.shape[1]}")
    ke = _check_int_array("key exponents", np.asarray(k_exp), k.ndim - 1, *_EXP_ANY)
    acc = k @ w.T
    s = fold_shift(acc)
    return round_shift(acc, s[..., None]), ke + qw_q.exp + s


def recall_folded(s_mant, s_exp, kf_mant, kf_exp, m_mant, m_exp, d_h: int):
    """Contract 2's recall: ``P_n = softmax(S_n K'^T / sqrt(d_h)) M`` over the folded keys of
    :func:`fold_key`; scores as :func:`scores` with ``dk = d_h``, softmax and weighted sum as in
    contract 1. Returns (P_n int16 [d], exponent, probabilities [n] in Q0.15)."""
    kf = np.asarray(kf_mant)
    if kf.ndim != 2 or kf.shape[0] == 0:
        raise ValueError(f"recall: empty cache (folded keys shape {kf.shape})")
    kf = _check_int_array("folded key mantissas", kf, 2, -MANT_MAX, MANT_MAX)
    s = _check_int_array("S mantissas", np.asarray(s_mant).reshape(1, -1), 2, -MANT_MAX, MANT_MAX)
    if kf.shape[1] != s.shape[1]:
        raise ValueError(f"recall: folded keys have length {kf.shape[1]}, S_n has d={s.shape[1]}")
    se = _check_int_array("S exponent", np.asarray(s_exp).reshape(1), 1, EXP_MIN, EXP_MAX)
    t = scores(s, se, kf, kf_exp, dk=d_h)
    p = softmax(t)
    out, oe = weighted_sum(p, None, m_mant, m_exp)
    return out[0].astype(np.int16), int(oe[0]), p[0].astype(np.uint16)
