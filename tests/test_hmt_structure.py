"""HMT's per-segment equations (paper eq. 1-5) against a written-out direct computation."""

import math

import pytest
import torch

from hmt_testlib import SEED, backbone, random_ids, tiny_hmt
from hmtx.model.backbone import Backbone, ByteTokenizer
from hmtx.model.hmt import HMT


def _capture_inputs(lm):
    """Record every inputs_embeds the backbone is called with."""
    calls = []

    def hook(module, args, kwargs):
        calls.append(kwargs["inputs_embeds"].detach().clone())
    return calls, lm.register_forward_pre_hook(hook, with_kwargs=True)


def _direct_hmt(model: HMT, ids: torch.Tensor):
    """The paper's equations, written out with no shared code: logits of each segment's tokens and M_n."""
    cfg, lm = model.config, model.lm
    E = lm.get_input_embeddings().weight
    B, k, N, j = cfg.tokens_per_segment, cfg.sensory, cfg.cache_size, cfg.j
    segs = [ids[i:i + B] for i in range(0, ids.numel(), B)]
    memories, logits, inputs = [], [], []
    for n, seg in enumerate(segs):
        H = E[seg]
        if n == 0:
            P = model.memory_token
        elif n == 1:
            P = memories[0]
        else:
            T = model.prompt
            rep = lm(inputs_embeds=torch.cat([T[None], H[:j], T[None]])[None], output_hidden_states=True)
            S = rep.hidden_states[-1][0, -1]                         # eq. 1
            cache = torch.stack(memories[-N:])                        # FIFO of the last N
            Q = S @ model.recall.w_q                                  # eq. 2
            K = cache @ model.recall.w_k
            a = torch.softmax(Q @ K.T / math.sqrt(cfg.d_h), dim=-1)
            P = a @ cache
        sens = E[segs[n - 1][-k:]] if n > 0 else E[seg[:0]]          # previous segment's last k ids
        x = torch.cat([P[None], sens, H, P[None]])                    # eq. 3
        out = lm(inputs_embeds=x[None], output_hidden_states=True)
        logits.append(out.logits[0, 1 + sens.shape[0]:-1])           # positions [1+k, -1)
        memories.append(out.hidden_states[-1][0, -1])                 # eq. 4
        inputs.append(x)
    return logits, memories, inputs


@torch.no_grad()
def test_hmt_matches_direct_equations():
    model = tiny_hmt()
    B = model.config.tokens_per_segment
    ids = random_ids(5 * B + 4)                                       # 5 full segments + a partial one
    calls, handle = _capture_inputs(model.lm)
    try:
        outs = model.feed(model.new_state("hmt", "float"), ids, final=True)
    finally:
        handle.remove()
    ref_logits, ref_mem, ref_inputs = _direct_hmt(model, ids)
    assert len(outs) == len(ref_logits) == 6
    for n, out in enumerate(outs):
        assert torch.equal(out.ids, ids[n * B:(n + 1) * B])
        assert out.logits.shape == (out.ids.numel(), model.lm.config.vocab_size)
        torch.testing.assert_close(out.logits, ref_logits[n], rtol=1e-5, atol=1e-5, msg=f"segment {n} logits")
        torch.testing.assert_close(out.memory, ref_mem[n], rtol=1e-5, atol=1e-5, msg=f"segment {n} M_n")
    # The segment passes' inputs, token by token: [P || sensory || H || P].
    seg_inputs = [c[0] for c in calls if c.shape[1] != model.config.j + 2]
    assert len(seg_inputs) == 6
    for n, (x, ref) in enumerate(zip(seg_inputs, ref_inputs)):
        torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5, msg=f"segment {n} input layout")
    k = model.config.sensory
    assert seg_inputs[0].shape[0] == 1 + B + 1                        # segment 0: no sensory tokens
    assert all(x.shape[0] == 1 + k + B + 1 for x in seg_inputs[1:5])
    torch.testing.assert_close(seg_inputs[0][0], model.memory_token)  # P_0 = memory token
    torch.testing.assert_close(seg_inputs[1][0], outs[0].memory)      # P_1 = M_0
    assert outs[0].probs is None and outs[1].probs is None and outs[2].probs is not None


@torch.no_grad()
def test_search_and_representation_pass():
    model = tiny_hmt()
    cfg = model.config
    ids = random_ids(4 * cfg.tokens_per_segment, SEED + 1)
    calls, handle = _capture_inputs(model.lm)
    try:
        outs = model.feed(model.new_state("hmt", "float"), ids, final=True)
    finally:
        handle.remove()
    reps = [c[0] for c in calls if c.shape[1] == cfg.j + 2]
    assert len(reps) == 2                                              # segments 2 and 3 only
    E = model.lm.get_input_embeddings().weight
    for r, n in zip(reps, (2, 3)):
        seg = ids[n * cfg.tokens_per_segment:]
        torch.testing.assert_close(r[0], model.prompt)
        torch.testing.assert_close(r[-1], model.prompt)
        torch.testing.assert_close(r[1:-1], E[seg[:cfg.j]])
    # Segment 3 searched M_1 and M_2 (N=2: M_0 was evicted), slot of M_2 = 2 mod 2 = 0.
    assert outs[3].slot_segment == [2, 1]
    p = outs[3].probs
    assert p.shape == (2,) and abs(float(p.sum()) - 1) < 1e-5
    torch.testing.assert_close(outs[3].recalled, p[0] * outs[2].memory + p[1] * outs[1].memory)


def test_final_hidden_state_is_after_final_norm():
    """hidden_states[-1] is what the LM head reads (after the final RMSNorm) in transformers 5.x."""
    lm = backbone().model
    x = torch.randn(1, 5, lm.config.hidden_size)
    with torch.no_grad():
        out = lm(inputs_embeds=x, output_hidden_states=True)
        torch.testing.assert_close(lm.lm_head(out.hidden_states[-1]), out.logits)
        torch.testing.assert_close(out.hidden_states[-1], lm.model(inputs_embeds=x).last_hidden_state)
        pre = out.hidden_states[-1]
        rms = pre.pow(2).mean(-1).sqrt()
        # RMSNorm output has RMS ~= the norm weight's scale (1.0 at init), whatever the input scale.
        torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-3, atol=1e-3)


@torch.no_grad()
def test_baselines_layout():
    model = tiny_hmt()
    B = model.config.tokens_per_segment
    ids = random_ids(3 * B, SEED + 2)
    calls, handle = _capture_inputs(model.lm)
    try:
        rmt = model.feed(model.new_state("rmt"), ids, final=True)
        n_rmt = len(calls)
        bb = model.feed(model.new_state("backbone"), ids, final=True)
    finally:
        handle.remove()
    assert n_rmt == 3 and len(calls) == 6
    E = model.lm.get_input_embeddings().weight
    for n in range(3):
        x = calls[n][0]
        mem = model.memory_token if n == 0 else rmt[n - 1].memory     # RMT: memory passed directly
        assert x.shape[0] == B + 2
        torch.testing.assert_close(x[0], mem)
        torch.testing.assert_close(x[-1], mem)
        torch.testing.assert_close(x[1:-1], E[ids[n * B:(n + 1) * B]])
        torch.testing.assert_close(calls[3 + n][0], E[ids[n * B:(n + 1) * B]])  # backbone: H_n alone
        full = model.lm(inputs_embeds=E[ids[n * B:(n + 1) * B]][None]).logits[0]
        torch.testing.assert_close(bb[n].logits, full)


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=257, n_embd=32, n_layer=2, n_head=4, n_positions=128)).eval()


def _tiny_opt():
    from transformers import OPTConfig, OPTForCausalLM
    torch.manual_seed(0)
    # word_embed_proj_dim != hidden_size, as in OPT-350M: HMT's d is the 24-wide embedding.
    cfg = OPTConfig(vocab_size=257, hidden_size=32, word_embed_proj_dim=24, ffn_dim=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=128)
    return OPTForCausalLM(cfg).eval()


@pytest.mark.parametrize("make,d", [(_tiny_gpt2, 32), (_tiny_opt, 24)], ids=["gpt2", "opt"])
@torch.no_grad()
def test_other_backbone_families(make, d):
    lm = make()
    model = HMT.from_backbone(Backbone("other", lm, ByteTokenizer(), 256),
                              segment_length=12, sensory=3, cache_size=2, d_h=8).eval()
    assert model.config.d == d
    ids = random_ids(4 * model.config.tokens_per_segment, SEED + 3)
    outs = model.feed(model.new_state("hmt", "fixed"), ids, final=True)
    assert [o.memory.shape for o in outs] == [(d,)] * 4
    ref_logits, ref_mem, _ = _direct_hmt(model, ids)
    # Fixed recall differs from the float reference only from segment 2 on.
    torch.testing.assert_close(outs[1].logits, ref_logits[1], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(outs[3].logits).all()


@torch.no_grad()
def test_sensory_tokens_when_segments_are_shorter_than_k():
    model = tiny_hmt(segment_length=8, sensory=4, summary_length=None)   # B = 2 < k = 4
    ids = random_ids(7, SEED + 4)
    calls, handle = _capture_inputs(model.lm)
    try:
        model.feed(model.new_state("hmt", "float"), ids, final=True)
    finally:
        handle.remove()
    E = model.lm.get_input_embeddings().weight
    seg_inputs = [c[0] for c in calls if c.shape[1] != model.config.j + 2]
    # Segment 3 = [P || the 2 ids of segment 2 (all it has) || its 1 remaining id || P].
    assert [x.shape[0] for x in seg_inputs] == [4, 6, 6, 5]
    torch.testing.assert_close(seg_inputs[3][1:3], E[ids[4:6]])
    torch.testing.assert_close(seg_inputs[3][3:4], E[ids[6:7]])
