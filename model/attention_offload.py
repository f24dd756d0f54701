"""The backbone's attention heads computed in the chip's integer arithmetic.

``--offload-attention SPEC`` (``hmtx eval``, ``hmtx run``) replaces the attention of the
chosen layers and heads of the backbone by the contract's ATTENTION operation
(``fixed_torch.attend``, docs/arithmetic.md section 7): every query, key and value row of a head
is quantized to BFP8 (one exponent per row), the scores, the integer softmax and the weighted sum
are computed to the bit, and the int16 output rows are dequantized and fed back into the
backbone, whose other heads and layers run in float. What that costs the model is a PPL
difference against the same run without offload (both through the same eager attention path).

The softmax of one query row runs over every key the row attends (a whole segment: up to
``fixed.KEYS_MAX`` keys), exactly as ``fixed.attend`` defines it; a device composes such a row
from the key tiles it holds in passes that give these bits (``fixed.attend_tiled``). Who computes
a head is a parameter: ``fixed_torch.attend`` by default, or a ``head_fn`` (``hmtx run`` passes
the device's, ``hmtx.host.attention_tiles``).

SPEC: items joined by ``+``, each ``LAYERS`` or ``LAYERS:HEADS``; LAYERS is ``N``, ``N-M`` or
``all``, HEADS a comma list of query heads (default: all). E.g. ``29``, ``0-29``, ``29:0,3``,
``all``, ``0-3+29:0,3``.

The offload is hooked in through transformers' own extension points: an attention function and
its mask function registered under :data:`IMPLEMENTATION` in ``AttentionInterface`` /
``AttentionMaskInterface``, selected on the model's config for the duration of
:func:`offloaded_attention`; the chosen heads are marked on each layer's attention module.
"""

import contextlib
import re
from dataclasses import dataclass, field

import torch

from . import fixed as F
from . import fixed_torch as T

__all__ = ["IMPLEMENTATION", "check_offload_spec", "parse_offload_spec", "offloaded_attention", "OffloadStats",
           "golden_head"]

IMPLEMENTATION = "hmtx_fixed"
_ITEM = re.compile(r"^(all|\d+(?:-\d+)?)(?::(\d+(?:,\d+)*))?$")


def _items(spec: str) -> list[tuple[str, list | None]]:
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("--offload-attention: empty SPEC (e.g. 29, 0-29, 29:0,3, all)")
    items = []
    for item in spec.strip().split("+"):
        m = _ITEM.match(item.strip())
        if not m:
            raise ValueError(f"--offload-attention {spec!r}: item {item!r} is not LAYERS[:HEADS] "
                             f"(LAYERS: N, N-M or all; HEADS: a comma list)")
        layers_s, heads_s = m.groups()
        items.append((layers_s, None if heads_s is None else [int(h) for h in heads_s.split(",")]))
    return items


def check_offload_spec(spec: str) -> None:
    """The SPEC's syntax (before a backbone is loaded to know its sizes); ValueError names the bad item."""
    _items(spec)


def parse_offload_spec(spec: str, n_layers: int, n_heads: int) -> dict[int, frozenset]:
    """{layer: frozenset of query heads} of an offload SPEC (module docstring) for a backbone of
    ``n_layers`` layers of ``n_heads`` query heads; ValueError names the bad item."""
    plan: dict[int, set] = {}
    for layers_s, heads in _items(spec):
        if layers_s == "all":
            layers = range(n_layers)
        else:
            lo, _, hi = layers_s.partition("-")
            lo, hi = int(lo), int(hi or lo)
            if not 0 <= lo <= hi < n_layers:
                raise ValueError(f"--offload-attention {spec!r}: layers {layers_s} outside 0..{n_layers - 1}")
            layers = range(lo, hi + 1)
        heads = range(n_heads) if heads is None else heads
        bad = [h for h in heads if not 0 <= h < n_heads]
        if bad:
            raise ValueError(f"--offload-attention {spec!r}: head {bad[0]} outside 0..{n_heads - 1}")
        for layer in layers:
            plan.setdefault(layer, set()).update(heads)
    return {layer: frozenset(h) for layer, h in sorted(plan.items())}


@dataclass
class OffloadStats:
    """What went through the contract: head-segments (one head over one forward pass), query rows
    and scored (query, key) pairs."""

    heads: int = 0
    rows: int = 0
    pairs: int = 0
    per_layer: dict = field(default_factory=dict)


def golden_head(layer, head, qm, qe, km, ke, vm, ve, keep):
    """The default head function: ``fixed_torch.attend`` on the BFP8 rows -> (out, out_exp)."""
    out, oe, _ = T.attend(qm, qe, km, ke, vm, ve, mask=keep)
    return out, oe


def _attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    from transformers.models.llama.modeling_llama import eager_attention_forward

    out, weights = eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    heads = getattr(module, "_hmtx_offload_heads", None)
    if not heads:
        return out, weights
    if abs(scaling - query.shape[-1] ** -0.5) > 1e-9:
        raise ValueError(f"offloaded attention: layer {module.layer_idx} scales scores by {scaling}, the "
                         f"contract by 1/sqrt(head_dim) = {query.shape[-1] ** -0.5}")
    b, _, tq, _ = query.shape
    tk = key.shape[2]
    if attention_mask is None:
        keep = torch.ones(b, 1, tq, tk, dtype=torch.bool, device=query.device)
    else:
        keep = attention_mask[..., :tk] == 0 if attention_mask.dtype != torch.bool else attention_mask[..., :tk]
    groups = module.num_key_value_groups
    stats = module._hmtx_offload_stats
    head_fn = getattr(module, "_hmtx_offload_head_fn", None) or golden_head
    out = out.clone()
    for batch in range(b):
        mask = keep[batch, 0]
        kv_rows = {}
        for h in sorted(heads):
            # GQA: query head h reads KV head h // groups, whose rows are quantized once
            kv = h // groups
            if kv not in kv_rows:
                kv_rows[kv] = (*T.quantize_bfp(key[batch, kv].double()), *T.quantize_bfp(value[batch, kv].double()))
            qm, qe = T.quantize_bfp(query[batch, h].double())
            o, oe = head_fn(module.layer_idx, h, qm, qe, *kv_rows[kv], mask)
            out[batch, :, h] = T.dequantize(torch.as_tensor(o), torch.as_tensor(oe)).to(out.dtype)
            stats.heads += 1
            stats.rows += tq
            stats.pairs += int(mask.sum())
            stats.per_layer[module.layer_idx] = stats.per_layer.get(module.layer_idx, 0) + 1
    return out, weights


def _register():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPLEMENTATION, _attention)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)


def _attention_modules(lm):
    mods = [m for m in lm.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")]
    if not mods:
        raise ValueError("offloaded attention: the backbone has no Llama-style attention modules")
    return {m.layer_idx: m for m in mods}


@contextlib.contextmanager
def offloaded_attention(lm, spec: str | None, head_fn=None):
    """Within the block, ``lm`` (a transformers causal LM) runs the heads of ``spec`` in the
    contract and every other head through the eager attention; ``spec=None`` runs every head
    eagerly (the baseline of the same code path). ``head_fn(layer, head, q_mant, q_exp, k_mant,
    k_exp, v_mant, v_exp, keep) -> (out_mant, out_exp)`` computes one head on BFP8 rows (default
    :func:`golden_head`). Yields :class:`OffloadStats`."""
    stats = OffloadStats()
    cfg = lm.config
    mods = _attention_modules(lm)
    n_heads = cfg.num_attention_heads
    plan = parse_offload_spec(spec, len(mods), n_heads) if spec else {}
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    if plan and head_dim > F.D_MAX:
        raise ValueError(f"offloaded attention: head_dim {head_dim} exceeds fixed.D_MAX={F.D_MAX}")
    _register()
    saved = cfg._attn_implementation
    cfg._attn_implementation = IMPLEMENTATION
    for layer, mod in mods.items():
        mod._hmtx_offload_heads = plan.get(layer, frozenset())
        mod._hmtx_offload_stats = stats
        mod._hmtx_offload_head_fn = head_fn or golden_head
    try:
        yield stats
    finally:
        cfg._attn_implementation = saved
        for mod in mods.values():
            del mod._hmtx_offload_heads, mod._hmtx_offload_stats, mod._hmtx_offload_head_fn
