"""Attention heads on the device: rows longer than the engine's tile, in ATTN_PASS passes, every
answer checked to the bit.

A head's query rows are cut into tiles of ``max_queries`` rows and its keys into tiles of
``max_keys``. Per query tile the host runs three passes over the key tiles the tile's rows reach
(docs/arithmetic.md section 11, docs/protocol.md 0x21): pass 1 returns each row's largest kept
score ``m`` and value exponent ``E`` of a key tile, which the host combines by max; pass 2, given
``m``, the sum of the row's exp2 terms, which the host adds up; pass 3, given ``m``, ``E`` and the
sum, accumulates the weighted values on the device and after the last key tile returns the
output rows. The Q rows go with the first op of a query tile and are held by the device for the
rest. Every pass-1 and pass-2 answer is compared with the golden passes on that tile, and the
outputs with ``fixed.attend`` over the whole rows, so a wrong bit names the head, the rows, the
key tile and the pass.
"""

import numpy as np

from hmtx.model import fixed
from hmtx.model.protocol import ATTN_NONE_E, ATTN_NONE_M

from .mismatch import _b64, _first_diff

__all__ = ["CheckedAttention", "tile_plan"]


def tile_plan(n_q: int, n_k: int, max_queries: int, max_keys: int, causal: bool):
    """[(query offset, rows, [(key offset, keys, diag)])] for a block of ``n_q`` query rows over
    ``n_k`` keys (causal: query a attends keys b <= a + n_k - n_q). Key tiles that no row of a
    query tile reaches are left out; ``diag`` is the tile's mask offset (0 without causal)."""
    if causal and n_q > n_k:
        raise ValueError(f"causal attention: {n_q} queries need at least as many keys, got {n_k}")
    plan = []
    for qa in range(0, n_q, max_queries):
        nq = min(max_queries, n_q - qa)
        reach = qa + nq - 1 + n_k - n_q if causal else n_k - 1      # last key the tile's last row keeps
        tiles = [(kb, min(max_keys, n_k - kb), qa - kb + n_k - n_q if causal else 0)
                 for kb in range(0, reach + 1, max_keys)]
        plan.append((qa, nq, tiles))
    return plan


class CheckedAttention:
    """Heads of attention on the device behind ``chk`` (a :class:`CheckedDevice`: its device,
    segment, log and check count are shared, so a mismatch stops the run, and is saved and
    replayed, as a recall's is). ``heads`` and ``ops`` count what went through."""

    def __init__(self, chk):
        self.chk = chk
        cfg = chk.config
        self.head_dim, self.max_queries, self.max_keys = cfg.head_dim, cfg.max_queries, cfg.max_keys
        self.heads = 0
        self.ops = 0

    def head(self, q_mant, q_exp, k_mant, k_exp, v_mant, v_exp, keep, where: str = "head"):
        """One head: Q [Tq, hd], K/V [Tk, hd] BFP8 rows (int arrays, one exponent per row),
        ``keep`` [Tq, Tk] the mask, which must be causal (``fixed.causal_mask``) or keep every
        key. Returns (out_mant int64 [Tq, hd], out_exp int64 [Tq]) from the device, checked."""
        q, qe, k, ke, v, ve = (np.asarray(x, dtype=np.int64) for x in (q_mant, q_exp, k_mant, k_exp, v_mant, v_exp))
        keep = np.asarray(keep, dtype=bool)
        n_q, n_k = q.shape[0], k.shape[0]
        if q.shape[1:] != (self.head_dim,) or k.shape != v.shape or k.shape[1:] != (self.head_dim,):
            raise ValueError(f"{where}: Q {q.shape}, K {k.shape}, V {v.shape}: rows must be the device's "
                             f"head_dim = {self.head_dim} wide, as many V rows as K rows")
        causal = not keep.all()
        if keep.shape != (n_q, n_k) or (causal and (n_q > n_k or not np.array_equal(keep, fixed.causal_mask(n_q, n_k)))):
            raise ValueError(f"{where}: the device masks causally or not at all; this mask of shape {keep.shape} "
                             f"is neither (a {n_q} x {n_k} causal block was expected)")
        self.chk.settle()
        try:
            out = self._head(q, qe, k, ke, v, ve, keep, causal, where)
        except Exception:
            # What replays this head (the recall history before it is in the log already).
            self.chk.log.append({"op": "attention", "segment": self.chk.segment, "where": where, "causal": causal,
                                 "shape": [n_q, n_k], "q_mant": _b64(q, np.int8), "q_exp": qe.tolist(),
                                 "k_mant": _b64(k, np.int8), "k_exp": ke.tolist(),
                                 "v_mant": _b64(v, np.int8), "v_exp": ve.tolist()})
            raise
        self.heads += 1
        return out

    def _head(self, q, qe, k, ke, v, ve, keep, causal, where):
        dev, seg = self.chk.device, self.chk.segment
        outs, out_exps = [], []
        for qa, nq, tiles in tile_plan(q.shape[0], k.shape[0], self.max_queries, self.max_keys, causal):
            rows = slice(qa, qa + nq)
            qt = (q[rows], qe[rows])
            parts = []                          # per key tile: its keys, mask, golden scores, name, diag
            m = np.full(nq, ATTN_NONE_M, np.int64)
            big_e = np.full(nq, ATTN_NONE_E, np.int64)
            for i, (kb, nk, diag) in enumerate(tiles):
                ks = slice(kb, kb + nk)
                name = f"{where} rows {qa}-{qa + nq - 1} keys {kb}-{kb + nk - 1}"
                tk = keep[rows, ks]
                t = fixed.scores(qt[0], qt[1], k[ks], ke[ks])
                parts.append((ks, tk, t, name, diag))
                kept = tk.any(axis=1)
                want_m = np.where(kept, fixed.row_max(t, tk), ATTN_NONE_M)
                want_e = np.where(kept, fixed.value_exp_max(tk, ve[ks]), ATTN_NONE_E)
                got_m, got_e = dev.attn_pass(1, k[ks], ke[ks], q=qt if i == 0 else None, n_q=nq, v_exp=ve[ks],
                                             causal=causal, diag=diag)
                self._count()
                _first_diff(seg, "ATTN_PASS", None, f"{name}: pass 1 m", want_m, got_m)
                _first_diff(seg, "ATTN_PASS", None, f"{name}: pass 1 E", want_e, got_e)
                m, big_e = np.maximum(m, got_m), np.maximum(big_e, got_e)
            total = np.zeros(nq, np.int64)
            for ks, tk, t, name, diag in parts:
                got = dev.attn_pass(2, k[ks], ke[ks], n_q=nq, m=m, causal=causal, diag=diag)
                self._count()
                _first_diff(seg, "ATTN_PASS", None, f"{name}: pass 2 sum", fixed.exp_terms(t, tk, m).sum(axis=1), got)
                total += got
            for i, (ks, tk, t, name, diag) in enumerate(parts):
                got = dev.attn_pass(3, k[ks], ke[ks], n_q=nq, m=m, big_e=big_e, total=total, v_mant=v[ks],
                                    v_exp=ve[ks], causal=causal, diag=diag, first=i == 0, last=i == len(parts) - 1)
                self._count()
            # The outputs against attend over the whole rows (independent of the tiling).
            kend = tiles[-1][0] + tiles[-1][1]
            want, want_e, _ = fixed.attend(qt[0], qt[1], k[:kend], ke[:kend], v[:kend], ve[:kend], keep[rows, :kend])
            name = f"{where} rows {qa}-{qa + nq - 1}: pass 3 output"
            _first_diff(seg, "ATTN_PASS", None, f"{name} exponent", want_e, got[1])
            for r in range(nq):
                _first_diff(seg, "ATTN_PASS", None, f"{name} row {qa + r}", want[r], got[0][r])
            outs.append(got[0])
            out_exps.append(got[1])
        return np.concatenate(outs), np.concatenate(out_exps)

    def _count(self):
        self.ops += 1
        self.chk.ops_checked += 1
