"""The baselines and the ablation beside HMT: sliding window, full context, recall off; the host-side
read-out; stage-3 streaming BPTT. Each variant is checked against the computation it names, done
directly on the tiny backbone."""

import pytest
import torch

from hmt_testlib import SEED, backbone, random_ids, tiny_hmt
from hmtx.model.backbone import tiny_llama
from hmtx.model.evaluate import evaluate, recall_gains
from hmtx.model.hmt import HMTConfig, load_checkpoint, read_checkpoint, save_checkpoint
from hmtx.model.text import TokenDocument
from hmtx.model.train import StreamFeeder, TokenStream, TrainConfig, read_training_meta, train


def _outs(model, variant, ids):
    with torch.no_grad():
        return model.feed(model.new_state(variant), ids, final=True)


def test_sliding_reads_the_l_minus_b_tokens_before_each_segment():
    model = tiny_hmt()
    b, before = model.config.tokens_per_segment, model.config.segment_length - model.config.tokens_per_segment
    ids = random_ids(6 * b)
    outs = _outs(model, "sliding", ids)
    with torch.no_grad():
        for n, out in enumerate(outs):
            start = max(0, n * b - before)
            ref = model.lm(input_ids=ids[start:(n + 1) * b][None]).logits[0, n * b - start:]
            assert torch.equal(out.logits, ref), f"segment {n} (seed {SEED})"


def test_full_equals_one_pass_over_the_document():
    model = tiny_hmt()
    ids = random_ids(5 * model.config.tokens_per_segment + 3)
    got = torch.cat([o.logits for o in _outs(model, "full", ids)])
    with torch.no_grad():
        ref = model.lm(input_ids=ids[None]).logits[0]
    assert torch.allclose(got, ref, atol=1e-5, rtol=0), f"seed {SEED}"


def test_full_restarts_its_prefix_at_the_context_limit(monkeypatch):
    model = tiny_hmt()
    b = model.config.tokens_per_segment
    monkeypatch.setattr(model.lm.config, "max_position_embeddings", 2 * b + 2)
    ids = random_ids(4 * b)
    outs = _outs(model, "full", ids)
    with torch.no_grad():
        # Segment 2 would need 3b positions: its prefix is cut to the last b + 2 tokens.
        ref = model.lm(input_ids=ids[b - 2: 3 * b][None]).logits[0, b + 2:]
    assert torch.allclose(outs[2].logits, ref, atol=1e-5, rtol=0)


def test_norecall_reads_the_memory_token_in_every_segment():
    model = tiny_hmt()
    k, b = model.config.sensory, model.config.tokens_per_segment
    ids = random_ids(4 * b)
    outs = _outs(model, "hmt_norecall", ids)
    emb = model.lm.get_input_embeddings()
    with torch.no_grad():
        p = model.memory_token[None]
        x = torch.cat([p, emb(ids[2 * b - k: 2 * b]), emb(ids[2 * b: 3 * b]), p])[None]
        ref = model.lm(inputs_embeds=x).logits[0, 1 + k: -1]
    assert torch.allclose(outs[2].logits, ref, atol=1e-6, rtol=0)
    hmt = _outs(model, "hmt", ids)
    assert torch.equal(outs[0].logits, hmt[0].logits)             # segment 0: the same input
    assert not torch.allclose(outs[2].logits, hmt[2].logits)      # segment 2: HMT's search differs


def test_zero_readout_is_exactly_the_ablation_and_a_trained_one_is_not():
    model = tiny_hmt(readout="linear")
    ids = random_ids(5 * model.config.tokens_per_segment)
    for a, b in zip(_outs(model, "hmt", ids), _outs(model, "hmt_norecall", ids)):
        assert torch.equal(a.logits, b.logits)
    with torch.no_grad():
        model.readout.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(SEED))
    hmt, off = _outs(model, "hmt", ids), _outs(model, "hmt_norecall", ids)
    assert not torch.allclose(hmt[3].logits, off[3].logits)
    # What the chip returns is unchanged: P_n is still the raw weighted sum of cached memories.
    assert torch.allclose(hmt[3].recalled, model.recall.recall_once("float", hmt[3].query,
                          torch.stack([o.memory for o in hmt[1:3]]))[0], atol=1e-5)


def test_readout_checkpoint_round_trip(tmp_path):
    model = tiny_hmt(readout="linear")
    with torch.no_grad():
        model.readout.weight.uniform_(-0.1, 0.1)
    save_checkpoint(model, str(tmp_path))
    config, tensors = read_checkpoint(str(tmp_path))
    assert config.readout == "linear" and tensors["readout.weight"].shape == (config.d, config.d)
    again = load_checkpoint(str(tmp_path), backbone())
    assert torch.equal(again.readout.weight, model.readout.weight)
    with pytest.raises(ValueError, match="readout"):
        HMTConfig(readout="mlp")


def test_recall_gain_buckets_are_token_weighted():
    result = {"ppl": {"hmt_float": 9.0, "hmt_norecall": 10.0},
              "per_segment": {"segment": [0, 1, 4], "tokens": [10, 10, 20],
                              "hmt_float": [10.0, 8.0, 9.0], "hmt_norecall": [10.0, 10.0, 10.0]}}
    g = recall_gains(result)["hmt_float"]
    assert g["all"] == pytest.approx(0.1)
    assert [b["segments"] for b in g["buckets"]] == [[0, 3], [4, 7]]
    assert g["buckets"][0]["gain"] == pytest.approx(1 - (10 * 8) ** 0.5 / 10)
    assert g["buckets"][1]["gain"] == pytest.approx(0.1)
    assert recall_gains({"ppl": {"hmt_float": 1.0}, "per_segment": {}}) == {}


def test_evaluate_reports_recall_mass_by_age_and_full_memory():
    model = tiny_hmt()
    b = model.config.tokens_per_segment
    docs = [TokenDocument("a", random_ids(5 * b)), TokenDocument("b", random_ids(5 * b, seed=SEED + 1))]
    r = evaluate(model, docs, 5, variants=("full", "hmt_norecall", "hmt_float"), min_segments=5, progress=False)
    mass = r["recall_mass_by_age"]
    assert mass["searches"] == 2 * 3                              # segments 2, 3, 4 of each document
    assert mass["age"][0] == 1 and sum(mass["mass"]) == pytest.approx(1.0, abs=1e-5)
    assert len(mass["age"]) == model.config.cache_size            # N = 2: ages 1 and 2 only
    # Every search holds the previous segment's memory; segment 2 holds ages 1-2, later ones too (N=2).
    assert mass["present"] == [6, 6]
    assert sum(m * n for m, n in zip(mass["mass_when_present"], mass["present"])) == pytest.approx(6, abs=1e-4)
    assert mass["oldest_mass"] == pytest.approx(mass["mass_when_present"][1], abs=1e-6)
    lm = model.lm.config
    per_token = 2 * lm.num_hidden_layers * lm.num_key_value_heads * (lm.hidden_size // lm.num_attention_heads) * 4
    assert r["full_context"]["kv_cache_bytes_max"] == 5 * b * per_token
    assert "recall_gain" in r


def test_document_windows_never_cross_a_document():
    stream = TokenStream([torch.arange(100, 130), torch.arange(200, 260), torch.arange(300, 305)], eos_id=0)
    for i in range(50):
        w = stream.document_window(40, SEED, i)
        assert w.numel() == 40 and int(w.min()) >= 200 and int(w.max()) < 260     # only the 60-token one
    with pytest.raises(ValueError, match="no training document"):
        stream.document_window(61, SEED, 0)


def _stage2_folder(tmp_path, bb):
    cfg = HMTConfig(backbone=bb.name, d=bb.d, segment_length=12, sensory=3, cache_size=3, summary_length=3,
                    d_h=8, seed=SEED)
    from hmtx.model.hmt import HMT
    folder = str(tmp_path / "s2")
    save_checkpoint(HMT(bb.model, cfg), folder)
    return folder, HMTConfig.from_dict({**cfg.to_dict(), "readout": "linear"})


def test_stage3_trains_search_and_readout_with_the_memory_token_frozen(tmp_path):
    bb = tiny_llama()
    init, cfg = _stage2_folder(tmp_path, bb)
    _, before = read_checkpoint(init)
    docs = [random_ids(9 * 7, seed=SEED + i) for i in range(3)]
    tc = TrainConfig(stage=3, depth=6, steps=6, batch=2, lr=1e-2, readout_lr=1e-2, seed=SEED)
    model = train(bb, cfg, tc, docs, str(tmp_path / "s3"), init=init, progress=False)
    config, after = read_checkpoint(str(tmp_path / "s3"))
    assert config.readout == "linear"
    assert torch.equal(after["memory_token"], before["memory_token"])
    assert float(after["readout.weight"].abs().max()) > 0
    for name in ("prompt", "recall.w_q", "recall.w_k"):
        assert not torch.equal(after[name], before[name]), name
    log = read_training_meta(str(tmp_path / "s3"))["log"]
    assert len(log) == 6 and all(e["loss"] > 0 for e in log)
    assert model.config.readout == "linear"


def test_stage3_feeder_grades_each_segment_from_the_first_search():
    model = tiny_hmt(readout="linear", cache_size=3)
    stream = TokenStream([random_ids(7 * 7)], eos_id=0)
    feeder = StreamFeeder(model, stream, depth=5, seed=SEED)
    losses = [feeder.graded_loss() for _ in range(4)]
    # Window 0 grades segments 2, 3, 4; the fourth loss comes from segment 2 of window 1.
    assert feeder.window == 2 and feeder.n == 3
    assert all(l.requires_grad for l in losses)
    assert all(m is None or not m.requires_grad for m in feeder.state.cache.m)   # memories are constants
    with pytest.raises(ValueError, match="stage 3"):
        TrainConfig(stage=3, depth=2)


def test_first_memory_variant_reads_the_oldest_cached_memory_through_the_readout():
    """hmt_first: HMT with the search replaced by 'read the oldest memory' (M_0 until the ring
    wraps): the same as HMT up to segment 1 (P_1 = M_0 in both), then P_n = the oldest cached
    memory exactly, the wrap included; fixed recall is refused."""
    model = tiny_hmt(readout="linear")
    with torch.no_grad():
        model.readout.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(SEED))
    n_slots = model.config.cache_size
    ids = random_ids((n_slots + 3) * model.config.tokens_per_segment)
    first, hmt = _outs(model, "hmt_first", ids), _outs(model, "hmt", ids)
    for n in (0, 1):
        assert torch.equal(first[n].logits, hmt[n].logits), f"segment {n} (seed {SEED})"
    for n in range(2, len(first)):
        oldest = max(0, n - n_slots)                  # the ring keeps the last N memories
        assert torch.equal(first[n].recalled, first[oldest].memory), f"segment {n} (seed {SEED})"
        assert first[n].probs is None
    assert not torch.allclose(first[2].logits, hmt[2].logits)     # the search mixes M_0 and M_1
    with pytest.raises(ValueError, match="'hmt_first' .* recall must be 'float'"):
        model.new_state("hmt_first", "fixed")
