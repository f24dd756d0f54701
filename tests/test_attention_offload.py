"""Backbone attention heads in the contract's arithmetic (hmtx.model.attention_offload)."""

import numpy as np
import pytest
import torch

from hmt_testlib import SEED
from hmtx.model import fixed as F
from hmtx.model.attention_offload import OffloadStats, _attention, offloaded_attention, parse_offload_spec
from hmtx.model.backbone import tiny_llama


def test_spec_grammar():
    assert parse_offload_spec("29", 30, 9) == {29: frozenset(range(9))}
    assert parse_offload_spec("0-2", 30, 9) == {k: frozenset(range(9)) for k in range(3)}
    assert parse_offload_spec("29:0,3", 30, 9) == {29: frozenset({0, 3})}
    assert parse_offload_spec("all", 2, 4) == {0: frozenset(range(4)), 1: frozenset(range(4))}
    assert parse_offload_spec("1:0+0-1:3", 2, 4) == {0: frozenset({3}), 1: frozenset({0, 3})}
    for bad, match in (("", "empty SPEC"), ("30", r"layers 30 outside 0..29"), ("3-1", "outside"),
                       ("29:9", r"head 9 outside 0..8"), ("x", "item 'x' is not LAYERS"), ("29:", "not LAYERS")):
        with pytest.raises(ValueError, match=match):
            parse_offload_spec(bad, 30, 9)


class _Head:
    """What the attention function reads of a transformers attention module."""

    def __init__(self, heads, groups):
        self.layer_idx, self.num_key_value_groups, self.training = 7, groups, False
        self._hmtx_offload_heads, self._hmtx_offload_stats = frozenset(heads), OffloadStats()


def test_offloaded_heads_are_the_contract_bit_for_bit_and_the_others_float():
    g = torch.Generator().manual_seed(SEED)
    t, hd, groups = 11, 8, 2
    q = torch.randn(1, 4, t, hd, generator=g) * 3
    k = torch.randn(1, 2, t, hd, generator=g) * 3
    v = torch.randn(1, 2, t, hd, generator=g)
    causal = torch.triu(torch.full((t, t), torch.finfo(torch.float32).min), 1)[None, None]
    mod = _Head({1, 2}, groups)
    out, _ = _attention(mod, q, k, v, causal, hd ** -0.5)
    plain, _ = _attention(_Head(set(), groups), q, k, v, causal, hd ** -0.5)
    for h in range(4):
        if h in (1, 2):
            kv = h // groups          # GQA: the query head's KV head
            qs = [F.quantize_bfp(x[0, i].double().numpy()) for x, i in ((q, h), (k, kv), (v, kv))]
            want, we, _ = F.attend(*[z for pair in qs for z in pair], mask=F.causal_mask(t, t))
            assert np.array_equal(out[0, :, h].numpy(), F.dequantize(want, we).astype(np.float32)), f"head {h}"
        else:
            assert torch.equal(out[0, :, h], plain[0, :, h]), f"head {h}"
    st = mod._hmtx_offload_stats
    assert (st.heads, st.rows, st.pairs) == (2, 2 * t, 2 * t * (t + 1) // 2)


@torch.no_grad()
def test_offload_in_a_model_changes_only_what_it_should():
    lm = tiny_llama(layers=2).model.eval()
    ids = torch.randint(0, 200, (1, 30), generator=torch.Generator().manual_seed(SEED))
    saved = lm.config._attn_implementation
    lm.config._attn_implementation = "eager"
    eager = lm(input_ids=ids).logits
    lm.config._attn_implementation = saved
    with offloaded_attention(lm, None) as st:
        base = lm(input_ids=ids).logits
    assert torch.equal(base, eager) and st.heads == 0                   # nothing offloaded: the eager path
    with offloaded_attention(lm, "1:0") as st:
        one = lm(input_ids=ids).logits
    assert st.per_layer == {1: 1} and not torch.equal(one, base)
    rel = float((one - base).norm() / base.norm())
    assert rel < 0.05, f"seed {SEED}: one int8 head moved the logits by {rel:.3f}"
    assert lm.config._attn_implementation == saved and not hasattr(lm.model.layers[0].self_attn, "_hmtx_offload_heads")
    with pytest.raises(ValueError, match="layers 2 outside 0..1"):
        with offloaded_attention(lm, "2"):
            pass
