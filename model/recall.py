"""HMT memory recall (paper eq. 2): one module, three interchangeable implementations.

    Q_n = S_n W_q,   K_i = M_i W_k,   P_n = softmax(Q_n K^T / sqrt(d_h)) M      (W_q, W_k: d x d_h)

:class:`MemoryRecall` owns the learnable W_q and W_k. A document's long-term memory lives in a
:class:`RecallCache` (created by :meth:`MemoryRecall.new_cache`), which is part of the streaming
state, so one model can serve many documents and variants at once. Every cache shares the ring
bookkeeping of :class:`~hmtx.model.ring.RingSlots` (slot = write count mod N, fill count, age order), as
do the golden device and the host runtime's mirror of the device, so the float, fixed and device
implementations cannot disagree about which memories are searched.

Implementations (``RecallCache.impl``):

``"float"``
    torch fp32, the paper's equation. Keys are re-projected from the cached M at every read (a
    d x d_h product per slot; negligible next to the backbone) so W_k receives gradients through
    every cached memory, as in the reference training code. Scale 1/sqrt(d_h) always (the reference
    code's 1/d_h quirk for d, d_h >= 4096 is not reproduced).
``"fixed"``
    The golden integer arithmetic of :mod:`hmtx.model.fixed_torch` (docs/arithmetic.md): S_n and M_i
    are quantized to BFP8 vectors, W_q and W_k to BFP8 blocks; K_i = project(W_k, M_i) is computed
    ONCE when M_i is written and cached next to it (the hardware's ring buffer); recall runs on the
    cached integers; P_n is dequantized to float for the backbone. ``MemoryRecall.contract`` picks
    the arithmetic contract: 1 (the chip's today) or 2 (docs/arithmetic.md section 10: the cache
    holds the folded key K'_i = W_q K_i instead of K_i, and the recall scores S_n against it).
``"device"``
    The same integers, computed by an injected object (the host runtime drives the FPGA with it).
    The device holds its own N-slot cache and must implement::

        reset()                          # empty the cache (new document)
        load_weights(qw_q, qw_k)         # QuantWeight of W_q and W_k (fixed_torch.quantize_weight)
        write(m_mant, m_exp)             # M_i as BFP8 ([d] int, int exponent); the device
                                         #   computes K_i (contract 2: then K'_i = W_q K_i) and
                                         #   stores M_i with it in slot (#writes mod N)
        recall(s_mant, s_exp) -> (p_mant, p_exp, probs)
                                         # S_n as BFP8; P_n as int16 mantissas [d] + exponent,
                                         #   probs: Q0.15 [fill], indexed by SLOT (0..fill-1),
                                         #   or None (a device not asked for them)

    Results must be bit-identical to the "fixed" implementation of the same contract (tests check
    this with a software device built on fixed_torch, :class:`SoftwareDevice`); a device's contract
    is its protocol's major version (docs/protocol.md).

After each read, ``cache.last_probs`` holds the recall probabilities (float, summing to ~1) indexed
by slot (None when a device did not send them) and ``cache.slot_segment`` the segment index stored in each slot (for heatmaps).
"""

import math

import torch
from torch import nn

from hmtx.model.ring import RingSlots

__all__ = ["RingSlots", "RecallCache", "MemoryRecall", "FloatRecallCore", "SoftwareDevice", "IMPLS", "CONTRACTS"]

IMPLS = ("float", "fixed", "device")
CONTRACTS = (1, 2)


def _fixed():
    from hmtx.model import fixed_torch
    return fixed_torch


class RecallCache:
    """One document's long-term memory for one implementation. Create with MemoryRecall.new_cache."""

    def __init__(self, impl: str, n_slots: int, d: int, d_h: int, device=None, hw=None, contract: int = 1):
        if contract not in CONTRACTS:
            raise ValueError(f"unknown arithmetic contract {contract!r}; choose one of {CONTRACTS}")
        if impl not in IMPLS:
            raise ValueError(f"unknown recall implementation {impl!r}; choose one of {', '.join(IMPLS)}")
        if impl == "device" and hw is None:
            raise ValueError("recall implementation 'device' needs a device object (hw=...)")
        self.impl, self.contract = impl, contract
        self.ring = RingSlots(n_slots)
        self.hw = hw
        self.last_probs = None          # float [fill], by slot, of the last read
        self.last_query = None          # S_n of the last read (float [d])
        if impl == "float":
            self.m = [None] * n_slots   # float [d] tensors (may carry autograd history)
        else:
            self.m_mant = torch.zeros(n_slots, d, dtype=torch.int64, device=device)
            self.m_exp = torch.zeros(n_slots, dtype=torch.int64, device=device)
            # the keys K_i (contract 1) or the folded keys K'_i = W_q K_i (contract 2)
            self.k_mant = torch.zeros(n_slots, d_h if contract == 1 else d, dtype=torch.int64, device=device)
            self.k_exp = torch.zeros(n_slots, dtype=torch.int64, device=device)
        self.qw = None                  # (qw_q, qw_k) frozen at the first write (fixed / device)

    @property
    def fill(self) -> int:
        return self.ring.fill

    @property
    def slot_segment(self) -> list[int]:
        return self.ring.slot_segment[: self.fill]

    def memories(self) -> torch.Tensor:
        """Cached memories in slot order as float [fill, d] (dequantized for fixed/device)."""
        if self.impl == "float":
            return torch.stack(self.m[: self.fill])
        ft = _fixed()
        return ft.dequantize(self.m_mant[: self.fill], self.m_exp[: self.fill])


class MemoryRecall(nn.Module):
    """The learnable memory search: W_q, W_k (d x d_h, bias-free) and the read/write operations."""

    def __init__(self, d: int, d_h: int, n_slots: int, generator: torch.Generator | None = None):
        super().__init__()
        for name, v in (("d", d), ("d_h", d_h), ("N", n_slots)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"recall: {name} must be a positive integer, got {v!r}")
        self.d, self.d_h, self.n_slots = d, d_h, n_slots
        # nn.Linear's default init (uniform +-1/sqrt(d)), stored as d x d_h so that Q = S W_q reads
        # like the paper and W feeds fixed_torch.quantize_weight unchanged.
        bound = 1.0 / math.sqrt(d)
        self.w_q = nn.Parameter((torch.rand(d, d_h, generator=generator) * 2 - 1) * bound)
        self.w_k = nn.Parameter((torch.rand(d, d_h, generator=generator) * 2 - 1) * bound)
        self.contract = 1               # the fixed implementation's arithmetic contract (CONTRACTS)

    # -- caches -----------------------------------------------------------------------------
    def new_cache(self, impl: str = "float", hw=None) -> RecallCache:
        cache = RecallCache(impl, self.n_slots, self.d, self.d_h, device=self.w_q.device, hw=hw,
                            contract=self.contract)
        if impl == "device":
            hw.reset()
        return cache

    def quantized_weights(self):
        ft = _fixed()
        return ft.quantize_weight(self.w_q.detach()), ft.quantize_weight(self.w_k.detach())

    def _check_vec(self, name, x):
        if x.dim() != 1 or x.shape[0] != self.d:
            raise ValueError(f"recall: {name} must be a vector of length d={self.d}, got shape {tuple(x.shape)}")

    def write(self, cache: RecallCache, m: torch.Tensor, segment: int) -> None:
        """Push M_n (float [d]) into the cache, overwriting the oldest memory when full."""
        self._check_vec("M_n", m)
        slot = cache.ring.write_ptr
        if cache.impl == "float":
            cache.m[slot] = m
        else:
            ft = _fixed()
            if cache.qw is None:
                cache.qw = self.quantized_weights()
                if cache.impl == "device":
                    cache.hw.load_weights(*cache.qw)
            m_mant, m_exp = ft.quantize_bfp(m.detach().float())
            if cache.impl == "fixed":
                # K_i once, at write time, as the hardware does.
                k_mant, k_exp = ft.project(cache.qw[1], m_mant, m_exp)
                if cache.contract == 2:
                    k_mant, k_exp = ft.fold_key(cache.qw[0], k_mant, k_exp)
                cache.k_mant[slot], cache.k_exp[slot] = k_mant, k_exp
            else:
                cache.hw.write(m_mant, m_exp)
            cache.m_mant[slot], cache.m_exp[slot] = m_mant, m_exp
        cache.ring.advance(segment)

    def read(self, cache: RecallCache, s: torch.Tensor) -> torch.Tensor:
        """P_n = softmax(S W_q (M W_k)^T / sqrt(d_h)) M over the filled slots (float [d])."""
        self._check_vec("S_n", s)
        n = cache.fill
        if n == 0:
            raise ValueError("recall: the memory cache is empty (segment 0 uses the memory token instead)")
        cache.last_query = s.detach()
        if cache.impl == "float":
            p, probs = float_recall(s.float(), torch.stack(cache.m[:n]).float(), self.w_q, self.w_k)
            cache.last_probs = probs.detach()
            return p
        ft = _fixed()
        s_mant, s_exp = ft.quantize_bfp(s.detach().float())
        if cache.impl == "fixed" and cache.contract == 2:
            p_mant, p_exp, probs = ft.recall_folded(
                s_mant, s_exp, cache.k_mant[:n], cache.k_exp[:n], cache.m_mant[:n], cache.m_exp[:n], self.d_h)
        elif cache.impl == "fixed":
            p_mant, p_exp, probs = ft.recall(
                cache.qw[0], s_mant, s_exp, cache.k_mant[:n], cache.k_exp[:n], cache.m_mant[:n], cache.m_exp[:n])
        else:
            p_mant, p_exp, probs = cache.hw.recall(s_mant, s_exp)
            p_mant = torch.as_tensor(p_mant, dtype=torch.int64, device=s.device)
            if probs is not None:
                probs = torch.as_tensor(probs, dtype=torch.int64, device=s.device)
            if p_mant.shape != (self.d,) or (probs is not None and probs.shape != (n,)):
                raise ValueError(f"device recall returned P of shape {tuple(p_mant.shape)} and probs of "
                                 f"shape {None if probs is None else tuple(probs.shape)}; expected ({self.d},) "
                                 f"and ({n},) or None")
        cache.last_probs = None if probs is None else probs.to(torch.float32) / float(1 << 15)
        p_exp = torch.as_tensor(p_exp, dtype=torch.int64, device=s.device)
        return ft.dequantize(p_mant, p_exp).to(s.dtype)

    def recall_once(self, impl: str, s: torch.Tensor, memories: torch.Tensor):
        """Recall over a fresh cache holding ``memories`` [n, d] (slot order): (P, probs). For
        comparisons between implementations on the same inputs."""
        cache = self.new_cache(impl)
        for i, m in enumerate(memories):
            self.write(cache, m, i)
        p = self.read(cache, s)
        return p, cache.last_probs


def float_recall(s, m, w_q, w_k):
    """The paper's equation in fp32: returns (P [d], probs [n])."""
    q = s @ w_q
    k = m @ w_k
    probs = torch.softmax((k @ q) / math.sqrt(w_q.shape[1]), dim=-1)
    return probs @ m, probs


class FloatRecallCore(nn.Module):
    """The float recall as a pure function of (S, M, mask), for ONNX export.

    ``mask`` (bool [N], True = slot filled) lets one fixed-shape graph serve a partly filled cache.
    """

    def __init__(self, recall: MemoryRecall):
        super().__init__()
        self.w_q = nn.Parameter(recall.w_q.detach().clone())
        self.w_k = nn.Parameter(recall.w_k.detach().clone())

    def forward(self, s, m, mask):
        q = s @ self.w_q                                   # [d_h]
        k = m @ self.w_k                                   # [N, d_h]
        t = (k @ q) / math.sqrt(self.w_q.shape[1])
        t = torch.where(mask, t, torch.full_like(t, float("-inf")))
        probs = torch.softmax(t, dim=-1)
        return probs @ m, probs


class SoftwareDevice:
    """A reference implementation of the device interface on fixed_torch (an N-slot ring of BFP8
    memories and their keys). The host runtime's FPGA driver must behave exactly like this."""

    def __init__(self, n_slots: int, contract: int = 1):
        if contract not in CONTRACTS:
            raise ValueError(f"unknown arithmetic contract {contract!r}; choose one of {CONTRACTS}")
        self.n_slots, self.contract = n_slots, contract
        self.ring = RingSlots(n_slots)
        self.reset()

    def reset(self):
        self.qw_q = self.qw_k = None
        self.slots = []                 # [(m_mant, m_exp, k_mant, k_exp)] by slot
        self.ring.reset()

    def load_weights(self, qw_q, qw_k):
        self.qw_q, self.qw_k = qw_q, qw_k

    def write(self, m_mant, m_exp):
        ft = _fixed()
        k_mant, k_exp = ft.project(self.qw_k, m_mant, m_exp)
        if self.contract == 2:
            k_mant, k_exp = ft.fold_key(self.qw_q, k_mant, k_exp)
        entry = (m_mant, torch.as_tensor(m_exp), k_mant, torch.as_tensor(k_exp))
        slot = self.ring.advance()
        if slot < len(self.slots):
            self.slots[slot] = entry
        else:
            self.slots.append(entry)

    def recall(self, s_mant, s_exp):
        ft = _fixed()
        m_mant, m_exp, k_mant, k_exp = (torch.stack([e[i] for e in self.slots]) for i in range(4))
        if self.contract == 2:
            return ft.recall_folded(s_mant, s_exp, k_mant, k_exp, m_mant, m_exp, self.qw_q.d_h)
        return ft.recall(self.qw_q, s_mant, s_exp, k_mant, k_exp, m_mant, m_exp)
