"""Measured error of each fixed-point operation against float64, and numpy/torch bit identity.

Used by ``bench/arith_error.py`` (the table in docs/arithmetic.md) and ``hmtx selfcheck``.
Errors are "arithmetic only" unless the row says otherwise: the float64 reference runs on the
*dequantized* integer inputs, so the row isolates what the operation itself loses.
"""

import math

import numpy as np
import torch

from . import fixed as F
from . import fixed_torch as T
from .configs import CONFIGS, EngineConfig

__all__ = ["measure_errors", "check_bit_identity", "hidden_state_like"]


def hidden_state_like(rng, n, d):
    """Random vectors with the statistics seen on SmolLM2's final hidden states (../shared/DATA.md):
    most channels |x| ~ 1-3, a few outlier channels ~ 15-20x larger."""
    x = rng.normal(0, 1, (n, d))
    outliers = rng.choice(d, size=max(1, d // 100), replace=False)
    x[:, outliers] *= 17.0
    return x


def weight_std(d):
    """Std of random projection weights that give scores of about unit spread on
    hidden-state-like inputs, as a trained memory search would (sharper scores amplify every
    input error; the bench documents this choice)."""
    return 1.0 / math.sqrt(4.0 * d)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _float_attend(q, k, v, mask=None):
    s = q @ k.T / math.sqrt(q.shape[1])
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p @ v, p


def measure_errors(cfg: EngineConfig, trials: int = 20, seed: int = 0) -> dict:
    """Median and worst case over ``trials`` random draws of each operation's error."""
    rng = np.random.default_rng(seed)
    # the tiled rows draw from their own stream, so the other rows' draws stay as they were
    rng_tiled = np.random.default_rng([seed, 11])
    seen: dict[str, list] = {}

    def note(key, value):
        seen.setdefault(key, []).append(float(value))

    for _ in range(trials):
        x = hidden_state_like(rng, cfg.n_slots, cfg.d)
        m, e = F.quantize_bfp(x)
        note("quantize_bfp_rel_l2 (hidden-state-like, vs float input)", _rel(F.dequantize(m, e), x))
        note("quantize_bfp_max_abs_lsb", (np.abs(F.dequantize(m, e) - x) / 2.0 ** e[:, None]).max())

        w_float = rng.normal(0, weight_std(cfg.d), (cfg.d, cfg.d_h))
        qw = F.quantize_weight(w_float)
        wd = qw.mant * 2.0 ** qw.exp
        note("quantize_weight_rel_l2 (Gaussian, vs float input)", _rel(wd, w_float))
        y, ye = F.project(qw, m, e)
        exact = F.dequantize(m, e).astype(np.float64) @ wd
        note("project_max_abs_lsb", (np.abs(y * 2.0 ** ye[:, None] - exact) / 2.0 ** ye[:, None]).max())
        note("project_rel_l2", _rel(y * 2.0 ** ye[:, None], exact))

        s, se = F.quantize_bfp(hidden_state_like(rng, 1, cfg.d))
        q, qe = F.project(qw, s, se)
        t = F.scores(q, qe, y, ye)
        exact_t = (q * 2.0 ** qe[:, None]) @ (y * 2.0 ** ye[:, None]).T
        exact_t *= math.log2(math.e) / math.sqrt(cfg.d_h) * 2 ** F.SCORE_FRAC
        note("scores_max_abs_lsb (1 LSB = 2^-8 in log2 units)", np.abs(t - exact_t).max())

        p = F.softmax(t)
        ref_p = 2.0 ** (t / 2 ** F.SCORE_FRAC - t.max() / 2 ** F.SCORE_FRAC)
        ref_p /= ref_p.sum()
        note("softmax_max_abs (probability units)", np.abs(p / 2 ** F.PROB_BITS - ref_p).max())

        out, oe = F.weighted_sum(p, None, m, e)
        exact_out = (p / 2.0 ** F.PROB_BITS) @ F.dequantize(m, e).astype(np.float64)
        note("weighted_sum_rel_l2", _rel(out * 2.0 ** oe[:, None], exact_out))

        # The whole recall: arithmetic only, and including quantization of float inputs.
        qwq = F.quantize_weight(rng.normal(0, weight_std(cfg.d), (cfg.d, cfg.d_h)))
        rec, rec_e, rec_p = F.recall(qwq, s[0], se[0], y, ye, m, e)
        got = F.dequantize(rec, np.array(rec_e)).astype(np.float64)
        sd = F.dequantize(s, se).astype(np.float64)[0]
        md = F.dequantize(m, e).astype(np.float64)
        ref, ref_pr = _float_attend((sd @ (qwq.mant * 2.0 ** qwq.exp))[None], md @ wd, md)
        mem_norm = float(np.sqrt((md ** 2).sum(axis=1).mean()))
        note("recall_err_l2 / memory norm (arithmetic only)", np.linalg.norm(got - ref[0]) / mem_norm)
        note("recall_probs_max_abs (arithmetic only)", np.abs(rec_p / 2 ** F.PROB_BITS - ref_pr[0]).max())
        # contract 2: the same recall through the folded keys K'_i = W_q K_i (BFP8)
        kf, kfe = F.fold_key(qwq, y, ye)
        exact_kf = (y * 2.0 ** ye[:, None]) @ (qwq.mant * 2.0 ** qwq.exp).T
        note("fold_key_max_abs_lsb (contract 2)", (np.abs(kf * 2.0 ** kfe[:, None] - exact_kf) / 2.0 ** kfe[:, None]).max())
        rec_f, rec_fe, rec_fp = F.recall_folded(s[0], se[0], kf, kfe, m, e, cfg.d_h)
        note("recall_err_l2 / memory norm (contract 2, arithmetic only)",
             np.linalg.norm(F.dequantize(rec_f, np.array(rec_fe)).astype(np.float64) - ref[0]) / mem_norm)
        note("recall_probs_max_abs (contract 2, arithmetic only)", np.abs(rec_fp / 2 ** F.PROB_BITS - ref_pr[0]).max())
        s_float = hidden_state_like(rng, 1, cfg.d)[0]
        wq_float = rng.normal(0, weight_std(cfg.d), (cfg.d, cfg.d_h))
        wk_float = wd
        qwq2 = F.quantize_weight(wq_float)
        s2, se2 = F.quantize_bfp(s_float)
        rec2, rec2_e, _ = F.recall(qwq2, s2, se2, y, ye, m, e)
        ref2, _ = _float_attend((s_float @ wq_float)[None], x @ wk_float, x)
        note("recall_err_l2 / memory norm (incl. quantizing float S, M, W)",
             np.linalg.norm(F.dequantize(rec2, np.array(rec2_e)) - ref2[0]) / mem_norm)

        nq = cfg.max_queries
        mask = F.causal_mask(nq, cfg.max_keys)
        qs = [F.quantize_bfp(rng.normal(0, sd_, (rows, cfg.head_dim)))
              for sd_, rows in ((1, nq), (2, cfg.max_keys), (1, cfg.max_keys))]
        ao, aoe, _ = F.attend(*[z for pair in qs for z in pair], mask=mask)
        deq = [F.dequantize(*pair).astype(np.float64) for pair in qs]
        ref_a, _ = _float_attend(*deq, mask=mask)
        note("attention_rel_l2 (arithmetic only, causal)", _rel(F.dequantize(ao, aoe), ref_a))
        # a row longer than the engine's tile (four tiles and two keys), composed of tiles
        # (attend_tiled: bit-identical to attend on the whole row, so this is attend's error there)
        nk = 4 * cfg.max_keys + 2
        qs = [F.quantize_bfp(rng_tiled.normal(0, sd_, (rows, cfg.head_dim)))
              for sd_, rows in ((1, nq), (2, nk), (1, nk))]
        mask = F.causal_mask(nq, nk)
        to, toe, _ = F.attend_tiled(*[z for pair in qs for z in pair], mask=mask, tile=cfg.max_keys)
        ref_t, _ = _float_attend(*[F.dequantize(*pair).astype(np.float64) for pair in qs], mask=mask)
        note("attention_rel_l2 (arithmetic only, causal, 4 tiles + 2 keys per row, tiled)",
             _rel(F.dequantize(to, toe), ref_t))
    return {k: {"median": float(np.median(v)), "max": float(np.max(v))} for k, v in seen.items()}


def check_bit_identity(cfg: EngineConfig, trials: int = 5, seed: int = 0, device: str = "cpu") -> int:
    """Run the numpy and torch golden models on the same random inputs; return the number of
    compared output elements, raising AssertionError on the first differing bit."""
    rng = np.random.default_rng(seed)
    compared = 0
    for trial in range(trials):
        w = rng.normal(0, rng.uniform(0.01, 1), (2, cfg.d, cfg.d_h))
        n = int(rng.integers(1, cfg.n_slots + 1))
        x = hidden_state_like(rng, n + 1, cfg.d) * rng.uniform(0.01, 10)
        qwq, qwk = F.quantize_weight(w[0]), F.quantize_weight(w[1])
        tq, tk = T.quantize_weight(torch.tensor(w[0], device=device)), T.quantize_weight(torch.tensor(w[1], device=device))
        m, e = F.quantize_bfp(x)
        tm, te = T.quantize_bfp(torch.tensor(x, device=device))
        k, ke = F.project(qwk, m[1:], e[1:])
        tkk, tke = T.project(tk, tm[1:], te[1:])
        a = F.recall(qwq, m[0], e[0], k, ke, m[1:], e[1:])
        b = T.recall(tq, tm[0], int(te[0]), tkk, tke, tm[1:], te[1:])
        fa = F.fold_key(qwq, k, ke)
        fb = T.fold_key(tq, tkk, tke)
        ra = F.recall_folded(m[0], e[0], *fa, m[1:], e[1:], cfg.d_h)
        rb = T.recall_folded(tm[0], int(te[0]), *fb, tm[1:], te[1:], cfg.d_h)
        # a causal attention row of several tiles (section 11), tiled in torch, whole in numpy
        nq, nk = cfg.max_queries, 3 * cfg.max_keys + 1
        rows = [F.quantize_bfp(rng.normal(0, sd_, (r_, cfg.head_dim))) for sd_, r_ in ((1, nq), (2, nk), (1, nk))]
        aa = F.attend(*[z for pair in rows for z in pair], mask=F.causal_mask(nq, nk))
        ab = T.attend_tiled(*[torch.as_tensor(z.astype(np.int64), device=device) for pair in rows for z in pair],
                            mask=T.causal_mask(nq, nk, device=device), tile=cfg.max_keys)
        pairs = [(tq.mant, qwq.mant), (tm, m), (te, e), (tkk, k), (tke, ke), (b[0], a[0]), (b[2], a[2]),
                 (fb[0], fa[0]), (fb[1], fa[1]), (rb[0], ra[0]), (rb[2], ra[2]),
                 (ab[0], aa[0]), (ab[1], aa[1]), (ab[2], aa[2])]
        for got, want in pairs:
            got = got.cpu().numpy()
            if got.shape != np.shape(want) or not (got == want).all():
                raise AssertionError(f"numpy/torch ({device}) differ: config {cfg.name}, seed {seed}, trial {trial}")
            compared += got.size
        if b[1] != a[1] or rb[1] != ra[1]:
            raise AssertionError(f"numpy/torch ({device}) exponents differ: config {cfg.name}, seed {seed}, trial {trial}")
    return compared


def all_configs():
    return list(CONFIGS.values())
