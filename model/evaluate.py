"""Token-weighted perplexity of HMT (float and fixed recall) against its baselines and its ablation.

Variants (``VARIANT_SPECS``): ``backbone`` (H_n alone), ``sliding`` (the L - B document tokens
before H_n, then H_n: HMT's token budget without memory), ``full`` (the whole document prefix, up to
the backbone's context limit: the upper reference), ``rmt``, ``hmt_norecall`` (HMT with the memory
token in place of every recalled P_n: the ablation of what the chip accelerates), ``hmt_first``
(P_n = the oldest cached memory instead of the search's mix: the ablation of the search alone),
``hmt_float`` and ``hmt_fixed``. ``recall gain = 1 - PPL(hmt) / PPL(hmt_norecall)`` is what the
memory recall itself is worth, ``search gain = 1 - PPL(hmt_float) / PPL(hmt_first)`` what the
search adds over always reading the first memory; a gain over ``backbone`` that ``sliding`` also
has is not HMT's.

Every variant sees the same segmentation (B = L - 2 - k tokens per segment) and scores the same
targets: each position of a segment predicts the next token of the document, the last position of
a segment predicting the first token of the next one (HMT's "logits at [1+k, -1)"). A document is
cut to its first ``segments * B`` tokens, so it contributes ``len - 1`` scored tokens.
PPL = exp(sum of NLL / number of scored tokens), per segment index and overall.

While HMT-float runs, every memory search is repeated with the fixed-point recall on the same S_n
and the same cached memories, and the difference of the two P_n is reported.
"""

import math
from collections import deque

import torch

from hmtx.model import fixed_torch as ft
from hmtx.model.hmt import HMT, full_context_limit, kv_cache_bytes
from hmtx.model.text import TokenDocument

__all__ = ["VARIANT_SPECS", "evaluate", "merge_results", "recall_gains", "plot_per_segment", "plot_recall_age", "format_table"]

# name -> (HMT variant, recall implementation)
VARIANT_SPECS = {
    "backbone": ("backbone", "float"),
    "sliding": ("sliding", "float"),
    "full": ("full", "float"),
    "rmt": ("rmt", "float"),
    "hmt_norecall": ("hmt_norecall", "float"),
    "hmt_first": ("hmt_first", "float"),
    "hmt_float": ("hmt", "float"),
    "hmt_fixed": ("hmt", "fixed"),
}
BUCKET = 4          # segments per bucket in the recall-gain table


def _select_documents(docs: list[TokenDocument], model: HMT, segments: int, max_docs: int | None,
                      min_segments: int):
    b = model.config.tokens_per_segment
    usable = [d for d in docs if d.ids.numel() >= min_segments * b]
    if not usable:
        longest = max((d.ids.numel() for d in docs), default=0)
        what = "one segment" if min_segments == 1 else f"{min_segments} segments"
        raise ValueError(f"text shorter than {what}: the longest document has {longest} tokens, "
                         f"a segment holds B = L - 2 - k = {b}")
    skipped = len(docs) - len(usable)
    if max_docs is not None:
        usable = usable[:max_docs]
    return [TokenDocument(d.name, d.ids[: segments * b]) for d in usable], skipped


@torch.no_grad()
def evaluate(model: HMT, docs: list[TokenDocument], segments: int, variants=tuple(VARIANT_SPECS),
             max_docs: int | None = None, min_segments: int = 1, progress: bool = True,
             rmt_model: HMT | None = None) -> dict:
    """Perplexities of ``variants`` over the first ``segments`` segments of each document.

    Documents shorter than ``min_segments`` full segments are skipped (counted in the result);
    ValueError if none is left. ``max_docs`` then keeps the first ones. ``rmt_model`` (an RMT trained
    on its own, i.e. its own memory token) runs the ``rmt`` variant instead of ``model``; it must cut
    documents into the same segments.
    """
    if rmt_model is not None and rmt_model.config.tokens_per_segment != model.config.tokens_per_segment:
        raise ValueError(f"rmt_model has {rmt_model.config.tokens_per_segment} tokens per segment, the HMT "
                         f"{model.config.tokens_per_segment}: they would not score the same tokens")
    if not isinstance(segments, int) or segments < 1:
        raise ValueError(f"segments must be a positive integer, got {segments!r}")
    if not isinstance(min_segments, int) or not 1 <= min_segments <= segments:
        raise ValueError(f"min_segments must be in [1, segments={segments}], got {min_segments!r}")
    for v in variants:
        if v not in VARIANT_SPECS:
            raise ValueError(f"unknown variant {v!r}; choose from {', '.join(VARIANT_SPECS)}")
    docs, skipped = _select_documents(docs, model, segments, max_docs, min_segments)
    b = model.config.tokens_per_segment
    nll = {v: [0.0] * segments for v in variants}
    count = [0] * segments
    diffs = []
    # hmt_float: probability mass by memory age, how often each age was in the cache, mass on the oldest
    age_mass, age_seen, recalls, oldest = [0.0] * model.config.cache_size, [0] * model.config.cache_size, 0, 0.0
    full_kv_bytes = 0
    total_steps = len(variants) * sum(math.ceil(d.ids.numel() / b) for d in docs)
    bar = _progress(total_steps, progress)
    for doc in docs:
        ids = doc.ids.to(model.device)
        for v in variants:
            variant, impl = VARIANT_SPECS[v]
            runner = rmt_model if v == "rmt" and rmt_model is not None else model
            state = runner.new_state(variant, impl)
            recent = deque(maxlen=model.config.cache_size)    # memories the next search sees
            for out in runner.segments(state, ids, final=True):
                start = out.segment * b
                targets = ids[start + 1: start + out.ids.numel() + 1]
                logp = torch.log_softmax(out.logits[: targets.numel()].float(), dim=-1)
                nll[v][out.segment] -= float(logp.gather(1, targets[:, None]).sum())
                if v == variants[0]:
                    count[out.segment] += targets.numel()
                if v == "hmt_float":
                    if out.probs is not None:
                        diffs.append(_recall_difference(model, out, torch.stack(list(recent))))
                        ages = [out.segment - seg - 1 for seg in out.slot_segment]
                        for age, p in zip(ages, out.probs.tolist()):
                            age_mass[age] += p
                            age_seen[age] += 1
                        oldest += float(out.probs[ages.index(max(ages))])
                        recalls += 1
                    recent.append(out.memory)
                if v == "full":
                    full_kv_bytes = max(full_kv_bytes, kv_cache_bytes(state.context[1]))
                bar.update(1)
    bar.close()
    used = [i for i in range(segments) if count[i]]
    tokens = sum(count)
    result = {
        "tokens": tokens,
        "documents": len(docs),
        "skipped_short_documents": skipped,
        "ppl": {v: math.exp(sum(nll[v]) / tokens) for v in variants},
        "per_segment": {"segment": used, "tokens": [count[i] for i in used],
                        **{v: [math.exp(nll[v][i] / count[i]) for i in used] for v in variants}},
        "config": {**model.config.to_dict(), "tokens_per_segment": b, "j": model.config.j,
                   "segments": segments},
        "documents_used": [d.name for d in docs],
    }
    gains = recall_gains(result)
    if gains:
        result["recall_gain"] = gains
    if recalls:
        last = max(i for i, m in enumerate(age_mass) if m > 0)
        result["recall_mass_by_age"] = {
            "age": list(range(1, last + 2)), "searches": recalls,
            "mass": [m / recalls for m in age_mass[: last + 1]],
            # mean probability of a memory of this age over the searches whose cache held one
            "mass_when_present": [m / max(1, n) for m, n in zip(age_mass[: last + 1], age_seen[: last + 1])],
            "present": age_seen[: last + 1],
            "oldest_mass": oldest / recalls}
    if "full" in variants:
        result["full_context"] = {"limit": full_context_limit(model.lm), "kv_cache_bytes_max": full_kv_bytes}
    if diffs:
        rel = [d["rel_l2"] for d in diffs]
        result["recall_fixed_vs_float"] = {
            "recalls": len(diffs),
            "max_abs": max(d["max_abs"] for d in diffs),
            "rel_l2_max": max(rel),
            "rel_l2_mean": sum(rel) / len(rel),
            "probs_max_abs": max(d["probs_max_abs"] for d in diffs),
            "p_float_max_abs": max(d["p_max_abs"] for d in diffs),
            "p_float_bfp8_rel_l2_mean": sum(d["bfp8_rel_l2"] for d in diffs) / len(diffs),
        }
    return result


def _recall_difference(model: HMT, out, memories: torch.Tensor) -> dict:
    """Fixed recall on the S_n and the memories (oldest first) that the float recall of ``out`` used."""
    p_fixed, probs_fixed = model.recall.recall_once("fixed", out.query, memories)
    p_float = out.recalled.float()
    by_age = torch.tensor(sorted(range(len(out.slot_segment)), key=out.slot_segment.__getitem__))
    return {
        "max_abs": float((p_fixed - p_float).abs().max()),
        "rel_l2": float((p_fixed - p_float).norm() / p_float.norm().clamp_min(1e-30)),
        "probs_max_abs": float((probs_fixed - out.probs.float()[by_age]).abs().max()),
        "p_max_abs": float(p_float.abs().max()),
        # The floor set by the number format alone: P_float rounded to one BFP8 vector.
        "bfp8_rel_l2": float((ft.dequantize(*ft.quantize_bfp(p_float)) - p_float).norm()
                             / p_float.norm().clamp_min(1e-30)),
    }


# Which checkpoint each variant's numbers depend on (merge_results keeps them apart).
_DEPENDS = {"backbone": None, "sliding": None, "full": None, "rmt": "rmt_checkpoint",
            "hmt_norecall": "checkpoint", "hmt_first": "checkpoint", "hmt_float": "checkpoint",
            "hmt_fixed": "checkpoint"}
# What decides which tokens are scored: merged runs must agree on these.
_SEGMENTATION = ("backbone", "d", "segment_length", "sensory", "tokens_per_segment", "segments", "text")


def merge_results(results: list[dict]) -> dict:
    """One result from evaluations of disjoint variant sets over the same documents and tokens (the
    variants are independent computations, so e.g. the baselines can run in one process and HMT in
    another). ValueError if they scored different tokens, repeat a variant, or take HMT variants
    from different checkpoints."""
    if len(results) < 2:
        raise ValueError("merging needs at least two evaluation results")
    base = results[0]
    same = lambda r, k: r.get(k) == base.get(k)
    cfg = lambda r: {k: r["config"].get(k) for k in _SEGMENTATION}
    for i, r in enumerate(results[1:], 2):
        for key in ("tokens", "documents", "documents_used"):
            if not same(r, key):
                raise ValueError(f"result {i} differs from result 1 in {key!r}: they did not score the same tokens")
        if r["per_segment"]["tokens"] != base["per_segment"]["tokens"] or cfg(r) != cfg(base):
            raise ValueError(f"result {i} differs from result 1 in its segments or configuration")
    merged = {k: v for k, v in base.items() if k not in ("ppl", "per_segment", "recall_gain", "note")}
    merged["ppl"], merged["per_segment"] = {}, {k: base["per_segment"][k] for k in ("segment", "tokens")}
    # The HMT sizes and parameters (cache, d_h, read-out, ...) are those of the HMT variants' run.
    hmt_run = next((r for r in results if any(v.startswith("hmt") for v in r["ppl"])), base)
    merged["config"] = {**hmt_run["config"], **cfg(base)}
    sources = {}
    for r in results:
        for v in r["ppl"]:
            if v in merged["ppl"]:
                raise ValueError(f"variant {v!r} is in more than one result")
            merged["ppl"][v] = r["ppl"][v]
            merged["per_segment"][v] = r["per_segment"][v]
            dep = _DEPENDS.get(v)
            if dep is not None:
                if dep in sources and sources[dep] != r["config"].get(dep):
                    raise ValueError(f"{v!r} comes from {dep} {r['config'].get(dep)!r}, another HMT variant from "
                                     f"{sources[dep]!r}: they would not describe one model")
                sources[dep] = r["config"].get(dep)
                merged["config"][dep] = sources[dep]
        for extra in ("recall_fixed_vs_float", "recall_mass_by_age", "full_context"):
            if extra in r and extra not in base:
                merged[extra] = r[extra]
        # ("trained" describes the HMT checkpoint: take it from a run of a variant that reads it)
        if "trained" in r and any(_DEPENDS.get(v) == "checkpoint" for v in r["ppl"]):
            merged["trained"] = r["trained"]
            if r.get("note"):
                merged["note"] = r["note"]
    order = [v for v in VARIANT_SPECS if v in merged["ppl"]]
    merged["ppl"] = {v: merged["ppl"][v] for v in order}
    gains = recall_gains(merged)
    if gains:
        merged["recall_gain"] = gains
    merged["merged_from"] = [sorted(r["ppl"]) for r in results]
    return merged


def recall_gains(result: dict) -> dict:
    """``1 - PPL(hmt) / PPL(hmt_norecall)`` overall and per bucket of ``BUCKET`` segments, for the
    HMT variants present; {} without ``hmt_norecall``."""
    ppl, per = result["ppl"], result["per_segment"]
    if "hmt_norecall" not in ppl:
        return {}
    out = {}
    for v in ("hmt_first", "hmt_float", "hmt_fixed"):
        if v not in ppl:
            continue
        buckets = []
        for lo in range(0, max(per["segment"]) + 1, BUCKET):
            idx = [i for i, s in enumerate(per["segment"]) if lo <= s < lo + BUCKET]
            tok = sum(per["tokens"][i] for i in idx)
            ppl_of = lambda name: math.exp(sum(math.log(per[name][i]) * per["tokens"][i] for i in idx) / tok)
            buckets.append({"segments": [lo, lo + BUCKET - 1], "gain": 1 - ppl_of(v) / ppl_of("hmt_norecall")})
        out[v] = {"all": 1 - ppl[v] / ppl["hmt_norecall"], "buckets": buckets}
    return out


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc="eval segments", unit="seg", disable=not enabled)


def format_table(result: dict) -> str:
    variants = list(result["ppl"])
    per = result["per_segment"]
    head = f"{'segment':>8} {'tokens':>7} " + " ".join(f"{v:>10}" for v in variants)
    lines = [head]
    for i, seg in enumerate(per["segment"]):
        lines.append(f"{seg:>8} {per['tokens'][i]:>7} " + " ".join(f"{per[v][i]:>10.3f}" for v in variants))
    lines.append(f"{'all':>8} {result['tokens']:>7} " + " ".join(f"{result['ppl'][v]:>10.3f}" for v in variants))
    for v, g in result.get("recall_gain", {}).items():
        parts = ", ".join(f"{b['segments'][0]}-{b['segments'][1]}: {100 * b['gain']:+.2f} %" for b in g["buckets"])
        lines.append(f"recall gain of {v} (1 - PPL / PPL hmt_norecall): {100 * g['all']:+.2f} % ({parts})")
    ppl = result["ppl"]
    if "hmt_first" in ppl and "hmt_float" in ppl:
        lines.append(f"search gain of hmt_float (1 - PPL / PPL hmt_first): {100 * (1 - ppl['hmt_float'] / ppl['hmt_first']):+.2f} %")
    return "\n".join(lines)


def plot_per_segment(result: dict, path: str, title: str = "") -> None:
    """PPL per segment index for every variant; with ``hmt_norecall`` present, a second panel with
    each variant's PPL relative to it (what the recall and each baseline are worth per segment)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result["per_segment"]
    ref = "hmt_norecall" if "hmt_norecall" in result["ppl"] else None
    fig, axes = plt.subplots(1, 2 if ref else 1, figsize=(12 if ref else 6, 4.2), squeeze=False)
    ax = axes[0][0]
    # one colour per variant in both panels
    colour = {v: f"C{i}" for i, v in enumerate(result["ppl"])}
    for v in result["ppl"]:
        ax.plot(per["segment"], per[v], marker="o", color=colour[v], label=f"{v} ({result['ppl'][v]:.2f})")
    ax.set_xticks(per["segment"])
    ax.set_xlabel("segment index")
    ax.set_ylabel("perplexity (token-weighted)")
    ax.set_title(title or f"PPL per segment, {result['documents']} document(s), {result['tokens']} tokens")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if ref:
        ax = axes[0][1]
        for v in result["ppl"]:
            if v in ("rmt", "backbone"):
                continue                    # tens of percent off: they would flatten the rest
            rel = [100 * (p / r - 1) for p, r in zip(per[v], per[ref])]
            ax.plot(per["segment"], rel, marker="o", color=colour[v],
                    label=f"{v} ({100 * (result['ppl'][v] / result['ppl'][ref] - 1):+.2f} %)")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(per["segment"])
        ax.set_xlabel("segment index")
        ax.set_ylabel(f"PPL relative to {ref} (%)")
        ax.set_title("below 0: better than HMT with the recall off")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_recall_age(result: dict, path: str, title: str = "") -> None:
    """Where the float recall's probability mass goes, by memory age (1 = the previous segment): the
    mean probability of a memory of each age over the searches whose cache held one."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mass = result["recall_mass_by_age"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    if "mass_when_present" in mass:
        ax.bar(mass["age"], mass["mass_when_present"], color="tab:purple")
        ax.set_ylabel("mean probability when in the cache")
        ax.set_title(title or f"recall probability by memory age\n({mass['searches']} searches; "
                              f"{100 * mass['oldest_mass']:.0f} % of the mass on the oldest memory)", fontsize=10)
    else:
        ax.bar(mass["age"], mass["mass"], color="tab:purple")
        ax.set_ylabel("mean recall probability")
        ax.set_title(title or f"recall probability mass by memory age ({mass['searches']} searches)")
    ax.set_xlabel("memory age (segments back; 1 = previous segment)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
