"""Streaming: a document fed in one call or in many chunks gives identical outputs."""

import pytest
import torch

from hmt_testlib import SEED, random_ids, tiny_hmt
from hmtx.model.recall import SoftwareDevice


def _run(model, variant, impl, ids, chunks):
    hw = SoftwareDevice(model.config.cache_size) if impl == "device" else None
    state = model.new_state(variant, impl, hw=hw)
    outs, start = [], 0
    for c in chunks:
        outs += model.feed(state, ids[start:start + c])
        start += c
    outs += model.feed(state, ids[start:], final=True)
    return outs, state


@pytest.mark.parametrize("variant,impl", [("hmt", "float"), ("hmt", "fixed"), ("hmt", "device"),
                                          ("rmt", "float"), ("backbone", "float")])
@torch.no_grad()
def test_one_call_equals_many_calls(variant, impl):
    model = tiny_hmt()
    B = model.config.tokens_per_segment
    ids = random_ids(5 * B + 3, SEED + 7)
    whole, _ = _run(model, variant, impl, ids, [])
    g = torch.Generator().manual_seed(SEED + 8)
    chunks = torch.randint(0, 2 * B, (8,), generator=g).tolist()     # incl. empty and > B chunks
    pieces, state = _run(model, variant, impl, ids, chunks)
    assert len(whole) == len(pieces) == 6, f"HMTX_SEED={SEED}"
    for a, b in zip(whole, pieces):
        assert a.segment == b.segment and torch.equal(a.ids, b.ids)
        assert torch.equal(a.logits, b.logits), f"HMTX_SEED={SEED} chunks={chunks} segment {a.segment}"
    assert state.segment == 6 and state.finished


@torch.no_grad()
def test_resume_segment_by_segment():
    """The host runtime's use: one segment per call, the state carried in between."""
    model = tiny_hmt()
    B = model.config.tokens_per_segment
    ids = random_ids(4 * B, SEED + 9)
    whole = model.feed(model.new_state("hmt", "fixed"), ids, final=True)
    state = model.new_state("hmt", "fixed")
    for n in range(4):
        (out,) = model.feed(state, ids[n * B:(n + 1) * B])
        assert torch.equal(out.logits, whole[n].logits)
        assert state.segment == n + 1 and state.cache.fill == min(n + 1, model.config.cache_size)
        assert torch.equal(state.sensory, ids[(n + 1) * B - model.config.sensory:(n + 1) * B])
    assert model.feed(state, ids[:0], final=True) == []


def test_stream_errors():
    model = tiny_hmt()
    with pytest.raises(ValueError, match="empty document"):
        model.feed(model.new_state("hmt"), [], final=True)
    state = model.new_state("backbone")
    with torch.no_grad():
        model.feed(state, random_ids(3), final=True)
    with pytest.raises(ValueError, match="already received its final tokens"):
        model.feed(state, random_ids(3))
    with pytest.raises(ValueError, match="unknown variant"):
        model.new_state("lstm")
