"""The fixed-point contract of :mod:`hmtx.model.fixed`, on torch integer tensors.

Same functions, same bits, on any device (CPU or CUDA): the reference model's fixed mode runs
here, next to the backbone. Every result is an int64 tensor holding the value the numpy golden
model gives (int8/int16/uint16 there). Constants and lookup tables come from ``fixed``; nothing
numeric is defined twice.

Two device-independence details:

* Matrix products run as float64 matmuls. Every operand and every partial sum is an integer of
  magnitude below 2^43 (``fixed.ACC_BITS`` proof), hence exactly representable, so the result
  is exact whatever the summation order (CUDA has no integer matmul).
* Powers of two are built from their IEEE-754 bit pattern, never with ``pow``/``exp2``, whose
  rounding is not specified on every device.
"""

import torch

from . import fixed as F

__all__ = [
    "quantize_bfp", "dequantize", "quantize_weight", "project", "scores", "softmax",
    "weighted_sum", "attend", "causal_mask", "recall", "round_shift", "shift_round_sat",
    "QuantWeight", "fold_shift", "fold_key", "recall_folded",
    "row_max", "value_exp_max", "exp_terms", "probabilities", "weight_acc", "finish_weighted_sum",
    "attend_tiled",
]

_I64 = torch.int64


class QuantWeight:
    """Torch counterpart of :class:`fixed.QuantWeight` (mantissas as an int64 tensor)."""

    __slots__ = ("mant", "exp", "shift")

    def __init__(self, mant: torch.Tensor, exp: int, shift: int):
        self.mant, self.exp, self.shift = mant, int(exp), int(shift)

    @property
    def d(self) -> int:
        return self.mant.shape[0]

    @property
    def d_h(self) -> int:
        return self.mant.shape[1]

    def to(self, device) -> "QuantWeight":
        return QuantWeight(self.mant.to(device), self.exp, self.shift)

    def to_numpy(self) -> F.QuantWeight:
        return F.QuantWeight(self.mant.cpu().numpy().astype("int8"), self.exp, self.shift)

    @classmethod
    def from_numpy(cls, qw: F.QuantWeight, device=None) -> "QuantWeight":
        return cls(torch.as_tensor(qw.mant.astype("int64"), device=device), qw.exp, qw.shift)


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """Exact 2.0**e in float64 for integer e in the normal range."""
    e = e.to(_I64)
    if e.numel() and (int(e.min()) < -1022 or int(e.max()) > 1023):
        raise ValueError("power of two outside the float64 normal range")
    return ((e + 1023) << 52).view(torch.float64)


def _exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(_I64)


def _int(x, device=None) -> torch.Tensor:
    t = torch.as_tensor(x, device=device)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"expected an integer tensor, got dtype {t.dtype}")
    return t.to(_I64)


def _check(name, t: torch.Tensor, ndim, lo, hi) -> torch.Tensor:
    t = _int(t)
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        raise ValueError(f"{name}: values must lie in [{lo}, {hi}], got [{int(t.min())}, {int(t.max())}]")
    return t


def _check_len(name, n, lo=1, hi=F.D_MAX):
    if not lo <= n <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {n}")


_EXP_ANY = F._EXP_ANY


def round_shift(x: torch.Tensor, s) -> torch.Tensor:
    x = _int(x)
    s = torch.as_tensor(s, device=x.device, dtype=_I64)
    return (x + ((torch.ones_like(s) << s) >> 1)) >> s


def _saturate(x: torch.Tensor, bits: int) -> torch.Tensor:
    return x.clamp(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def shift_round_sat(x: torch.Tensor, s, bits: int) -> torch.Tensor:
    x = _int(x)
    s = torch.as_tensor(s, device=x.device, dtype=_I64).clamp(-(bits - 1), 62)
    right = s.clamp(min=0)
    left = (-s).clamp(min=0)
    hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    y = round_shift(x, right)
    hi_t = torch.full_like(left, hi) >> left
    lo_t = torch.full_like(left, lo) >> left
    y = torch.where(y > hi_t, hi, torch.where(y < lo_t, lo, y << left))
    return y.clamp(lo, hi)


def quantize_bfp(x: torch.Tensor):
    """Per last-axis vector BFP8 quantization; see :func:`fixed.quantize_bfp`."""
    x = torch.as_tensor(x)
    if not x.dtype.is_floating_point:
        x = x.to(torch.float64)
    x = x.detach().to(torch.float64)
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"quantize_bfp: need at least one element per vector, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("quantize_bfp: input contains NaN or infinity")
    amax = x.abs().amax(dim=-1)
    _, big_e = torch.frexp(amax)
    e = big_e.to(_I64) - 7
    m = torch.round(x * _pow2(-e)[..., None])
    bump = m.abs().amax(dim=-1) > F.MANT_MAX
    e = torch.where(bump, e + 1, e)
    e = torch.where(amax == 0, torch.full_like(e, F.EXP_MIN), e.clamp(F.EXP_MIN, F.EXP_MAX))
    m = torch.round(x * _pow2(-e)[..., None]).clamp(-F.MANT_MAX, F.MANT_MAX)
    return m.to(_I64), e


def dequantize(mant, exp) -> torch.Tensor:
    mant = _int(mant)
    exp = _int(exp, device=mant.device)
    return (mant.to(torch.float64) * _pow2(exp)[..., None]).to(torch.float32)


def quantize_weight(w: torch.Tensor) -> QuantWeight:
    w = torch.as_tensor(w).detach().to(torch.float64)
    if w.dim() != 2 or w.numel() == 0:
        raise ValueError(f"quantize_weight: expected a non-empty (d, d_h) matrix, got shape {tuple(w.shape)}")
    _check_len("d", w.shape[0])
    _check_len("d_h", w.shape[1])
    mant, exp = quantize_bfp(w.reshape(1, -1))
    mant = mant.reshape(w.shape)
    # The shift depends only on the integer mantissas; one definition serves both backends.
    s = F.shift_for_bound(F.MANT_MAX * int(mant.abs().sum(dim=0).max()))
    return QuantWeight(mant, int(exp[0]), s)


def project(qw: QuantWeight, x_mant, x_exp):
    w = _check("weight mantissas", qw.mant, 2, -F.MANT_MAX, F.MANT_MAX)
    x = _int(x_mant, device=w.device)
    x = _check("input mantissas", x, max(x.dim(), 1), -F.MANT_MAX, F.MANT_MAX)
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"project: input length {x.shape[-1]} does not match weight rows d={w.shape[0]}")
    xe = _check("input exponents", _int(x_exp, device=w.device), x.dim() - 1, F.EXP_MIN, F.EXP_MAX)
    acc = _exact_matmul(x, w)
    y = _saturate(round_shift(acc, qw.shift), F.PROJ_BITS)
    return y, xe + qw.exp + qw.shift


def scores(q, q_exp, k, k_exp, dk=None) -> torch.Tensor:
    q = _check("query mantissas", q, 2, -(1 << 15), (1 << 15) - 1)
    k = _check("key mantissas", _int(k, device=q.device), 2, -(1 << 15), (1 << 15) - 1)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"scores: query dim {q.shape[1]} != key dim {k.shape[1]}")
    _check_len("vector length", q.shape[1])
    dk = q.shape[1] if dk is None else dk
    qe = _check("query exponents", _int(q_exp, device=q.device), 1, *_EXP_ANY)
    ke = _check("key exponents", _int(k_exp, device=q.device), 1, *_EXP_ANY)
    if qe.shape[0] != q.shape[0] or ke.shape[0] != k.shape[0]:
        raise ValueError("scores: one exponent per query row and per key row is required")
    mult, shift = F.score_scale(dk)
    acc = _exact_matmul(q, k.T)
    sh = shift - F.SCORE_FRAC - qe[:, None] - ke[None, :]
    return shift_round_sat(acc * mult, sh, F.SCORE_BITS)


def _mask(mask, shape, device) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    mask = torch.as_tensor(mask, device=device).to(torch.bool)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} != {tuple(shape)}")
    return mask


# --- the passes of fixed.py's section "the softmax and weighted sum as passes over keys" ----------
_NONE = torch.iinfo(_I64).min


def row_max(t, keep) -> torch.Tensor:
    return torch.where(keep, t, _NONE).amax(dim=1)


def value_exp_max(keep, v_exp) -> torch.Tensor:
    return torch.where(keep, v_exp[None, :], _NONE).amax(dim=1)


def exp_terms(t, keep, m) -> torch.Tensor:
    lut = torch.tensor(F.exp2_lut(), dtype=_I64, device=t.device)
    v = torch.where(keep, (m[:, None] - t).clamp(min=0), 0)
    n = v >> F.SCORE_FRAC
    r = v & ((1 << F.SCORE_FRAC) - 1)
    return torch.where(keep & (n < F.EXP2_CUTOFF), round_shift(lut[r], n.clamp(max=F.EXP2_CUTOFF)), 0)


def probabilities(e, total) -> torch.Tensor:
    total = total[:, None]
    recip = torch.div(torch.full_like(total, 1 << F.RECIP_BITS), total, rounding_mode="floor")
    return round_shift(e * recip, F.RECIP_BITS - F.PROB_BITS).clamp(max=F.PROB_MAX)


def weight_acc(p, keep, v, v_exp, big_e) -> torch.Tensor:
    align = torch.where(keep, big_e[:, None] - v_exp[None, :], F.ALIGN_CUTOFF).clamp(0, F.ALIGN_CUTOFF)
    return _exact_matmul(torch.where(keep, round_shift(p, align), 0), v)


def finish_weighted_sum(acc, big_e):
    return _saturate(round_shift(acc, F.OUT_SHIFT), F.OUT_BITS), big_e - (F.PROB_BITS - F.OUT_SHIFT)


def softmax(t, mask=None) -> torch.Tensor:
    t = _check("scores", t, 2, -(1 << 31), (1 << 31) - 1)
    if t.shape[1] == 0:
        raise ValueError("softmax: no keys (empty cache)")
    _check_len("number of keys", t.shape[1], 1, F.KEYS_MAX)
    keep = _mask(mask, t.shape, t.device)
    if not bool(keep.any(dim=1).all()):
        raise ValueError("softmax: a query row attends to no key")
    e = exp_terms(t, keep, row_max(t, keep))
    return probabilities(e, e.sum(dim=1))


def weighted_sum(p, mask, v, v_exp):
    p = _check("probabilities", p, 2, 0, F.PROB_MAX)
    v = _check("value mantissas", _int(v, device=p.device), 2, -F.MANT_MAX, F.MANT_MAX)
    ve = _check("value exponents", _int(v_exp, device=p.device), 1, *_EXP_ANY)
    if p.shape[1] != v.shape[0] or ve.shape[0] != v.shape[0]:
        raise ValueError(f"weighted_sum: {p.shape[1]} probabilities per row but {v.shape[0]} value rows")
    keep = _mask(mask, p.shape, p.device)
    big_e = value_exp_max(keep, ve)
    return finish_weighted_sum(weight_acc(p, keep, v, ve, big_e), big_e)


def attend(q_mant, q_exp, k_mant, k_exp, v_mant, v_exp, mask=None):
    """See :func:`fixed.attend`; returns int64 tensors (out, out_exp, probs)."""
    q = _int(q_mant)
    k = _int(k_mant, device=q.device)
    v = _int(v_mant, device=q.device)
    if k.dim() != 2 or v.dim() != 2 or k.shape[0] != v.shape[0]:
        raise ValueError(f"attend: keys {tuple(k.shape)} and values {tuple(v.shape)} must be 2-D with the same rows")
    if k.shape[0] == 0:
        raise ValueError("attend: no keys (empty cache)")
    if mask is not None:
        mask = _mask(mask, (q.shape[0], k.shape[0]), q.device)
    t = scores(q, q_exp, k, k_exp)
    p = softmax(t, mask)
    out, out_exp = weighted_sum(p, mask, v, v_exp)
    return out, out_exp, p


def attend_tiled(q_mant, q_exp, k_mant, k_exp, v_mant, v_exp, mask=None, tile: int = 64):
    """See :func:`fixed.attend_tiled`; returns int64 tensors (out, out_exp, probs)."""
    if not (isinstance(tile, int) and tile >= 1):
        raise ValueError(f"attend_tiled: tile must be a positive number of keys, got {tile!r}")
    q = _int(q_mant)
    k = _int(k_mant, device=q.device)
    if k.dim() != 2 or k.shape[0] == 0:
        raise ValueError(f"attend_tiled: keys {tuple(k.shape)} must be 2-D with at least one row")
    v = _check("value mantissas", _int(v_mant, device=q.device), 2, -F.MANT_MAX, F.MANT_MAX)
    ve = _check("value exponents", _int(v_exp, device=q.device), 1, *_EXP_ANY)
    ke = _int(k_exp, device=q.device)
    if v.shape[0] != k.shape[0] or ve.shape[0] != k.shape[0]:
        raise ValueError(f"attend_tiled: keys {tuple(k.shape)} and values {tuple(v.shape)} must have the same rows")
    nq, nk = q.shape[0], k.shape[0]
    _check_len("number of keys", nk, 1, F.KEYS_MAX)
    keep = _mask(mask, (nq, nk), q.device)
    if not bool(keep.any(dim=1).all()):
        raise ValueError("attend_tiled: a query row attends to no key")
    tiles = [slice(b, min(b + tile, nk)) for b in range(0, nk, tile)]
    t = [scores(q, q_exp, k[sl], ke[sl]) for sl in tiles]
    m = torch.stack([row_max(t[j], keep[:, sl]) for j, sl in enumerate(tiles)]).amax(dim=0)
    big_e = torch.stack([value_exp_max(keep[:, sl], ve[sl]) for sl in tiles]).amax(dim=0)
    e = [exp_terms(t[j], keep[:, sl], m) for j, sl in enumerate(tiles)]
    total = torch.stack([x.sum(dim=1) for x in e]).sum(dim=0)
    p = [probabilities(x, total) for x in e]
    acc = torch.stack([weight_acc(p[j], keep[:, sl], v[sl], ve[sl], big_e) for j, sl in enumerate(tiles)]).sum(dim=0)
    out, out_exp = finish_weighted_sum(acc, big_e)
    return out, out_exp, torch.cat(p, dim=1)


def causal_mask(n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    return torch.as_tensor(F.causal_mask(n_queries, n_keys), device=device)


def recall(qw_q: QuantWeight, s_mant, s_exp, k_mant, k_exp, m_mant, m_exp):
    """See :func:`fixed.recall`; returns (P_n int64 [d], exponent int, probs int64 [n])."""
    dev = qw_q.mant.device
    k = _int(k_mant, device=dev)
    if k.dim() != 2 or k.shape[0] == 0:
        raise ValueError(f"recall: empty cache (keys shape {tuple(k.shape)})")
    s = _int(s_mant, device=dev)
    q, qe = project(qw_q, s[None, :], _int(s_exp, device=dev).reshape(1))
    m = _int(m_mant, device=dev)
    if m.shape[1] != qw_q.d:
        raise ValueError(f"recall: memories have length {m.shape[1]}, weights expect d={qw_q.d}")
    out, oe, p = attend(q, qe, k, k_exp, m, m_exp)
    return out[0], int(oe[0]), p[0]


# --- contract 2 ----------------------------------------------------------------------------------
def fold_shift(acc: torch.Tensor) -> torch.Tensor:
    """See :func:`fixed.fold_shift`."""
    zero = torch.zeros((), dtype=_I64, device=acc.device)
    hi = torch.maximum(acc.amax(dim=-1), zero) if acc.shape[-1] else zero.expand(acc.shape[:-1])
    lo = torch.minimum(acc.amin(dim=-1), zero) if acc.shape[-1] else zero.expand(acc.shape[:-1])
    s = torch.zeros_like(hi)
    while True:
        bad = (round_shift(hi, s) > F.MANT_MAX) | (round_shift(lo, s) < -F.MANT_MAX)
        if not bool(bad.any()):
            return s
        s = s + bad.to(_I64)


def fold_key(qw_q: QuantWeight, k_mant, k_exp):
    """See :func:`fixed.fold_key`; returns int64 tensors (mantissas [..., d], exponents)."""
    w = _check("weight mantissas", qw_q.mant, 2, -F.MANT_MAX, F.MANT_MAX)
    k = _int(k_mant, device=w.device)
    k = _check("key mantissas", k, max(k.dim(), 1), -(1 << 15), (1 << 15) - 1)
    if k.shape[-1] != w.shape[1]:
        raise ValueError(f"fold_key: key length {k.shape[-1]} does not match weight columns d_h={w.shape[1]}")
    ke = _check("key exponents", _int(k_exp, device=w.device), k.dim() - 1, *_EXP_ANY)
    acc = _exact_matmul(k, w.T)
    s = fold_shift(acc)
    return round_shift(acc, s[..., None]), ke + qw_q.exp + s


def recall_folded(s_mant, s_exp, kf_mant, kf_exp, m_mant, m_exp, d_h: int):
    """See :func:`fixed.recall_folded`; returns (P_n int64 [d], exponent int, probs int64 [n])."""
    kf = _int(kf_mant)
    if kf.dim() != 2 or kf.shape[0] == 0:
        raise ValueError(f"recall: empty cache (folded keys shape {tuple(kf.shape)})")
    kf = _check("folded key mantissas", kf, 2, -F.MANT_MAX, F.MANT_MAX)
    s = _check("S mantissas", _int(s_mant, device=kf.device).reshape(1, -1), 2, -F.MANT_MAX, F.MANT_MAX)
    if kf.shape[1] != s.shape[1]:
        raise ValueError(f"recall: folded keys have length {kf.shape[1]}, S_n has d={s.shape[1]}")
    se = _check("S exponent", _int(s_exp, device=kf.device).reshape(1), 1, F.EXP_MIN, F.EXP_MAX)
    t = scores(s, se, kf, kf_exp, dk=d_h)
    p = softmax(t)
    out, oe = weighted_sum(p, None, m_mant, m_exp)
    return out[0], int(oe[0]), p[0]
