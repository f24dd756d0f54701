"""`hmtx train` on the tiny backbone: learning, exact resume, checkpoints, errors, DDP (slow)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hmt_testlib import SEED
from hmtx.host.cli import main as cli_main
from hmtx.model.backbone import tiny_llama
from hmtx.model.checkpoint_files import write_manifest
from hmtx.model.hmt import HMTConfig, load_checkpoint
from hmtx.model.train import (TokenStream, TrainConfig, WindowLoss, load_trained, prepare_model,
                              read_training_meta, train, trainable_parameters)

# L=16, k=3 -> B=11 tokens per segment; N=2 so the cache wraps inside a depth-4 window.
SIZES = dict(segment_length=16, sensory=3, cache_size=2, d_h=8, summary_length=4)
TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def _config(backbone, seed=SEED):
    return HMTConfig(backbone=backbone.name, d=backbone.d, seed=seed, **SIZES)


def _docs(text=TEXT):
    return [torch.tensor(list(text.encode()), dtype=torch.long)]


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _run(tmp, tc, stop_after=None, resume=None, init=None, bb=None, save_every=50):
    bb = bb or tiny_llama()            # training changes the backbone in place: a fresh one per run
    return train(bb, _config(bb), tc, _docs(), str(tmp), init=init, resume=resume, save_every=save_every,
                 progress=False, stop_after=stop_after)


def test_training_reduces_loss_on_repeated_text(tmp_path):
    tc = TrainConfig(stage=2, depth=3, steps=12, batch=1, lr=1e-2, mode="full", seed=SEED)
    _run(tmp_path, tc)
    log = read_training_meta(str(tmp_path))["log"]
    first, last = log[0]["loss"], sum(e["loss"] for e in log[-3:]) / 3
    assert len(log) == 12
    assert last < first - 0.5, f"loss {first:.3f} -> {last:.3f} (seed {SEED})"


def test_frozen_backbone_trains_only_hmt_parameters(tmp_path):
    bb = tiny_llama()
    before = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    tc = TrainConfig(stage=2, depth=3, steps=3, batch=1, lr=1e-2, mode="frozen", seed=SEED)
    model = _run(tmp_path, tc, bb=bb)
    assert all(torch.equal(before[n], p) for n, p in bb.model.named_parameters())
    fresh = prepare_model(tiny_llama(), _config(bb), tc)
    assert sorted(n for n, _ in trainable_parameters(fresh)) == ["memory_token", "prompt", "recall.w_k", "recall.w_q"]
    for k in ("memory_token", "recall.w_q", "recall.w_k", "prompt"):
        assert not torch.equal(model.hmt_state_dict()[k], fresh.hmt_state_dict()[k]), k


def test_stage1_reaches_only_the_memory_token(tmp_path):
    tc = TrainConfig(stage=1, depth=2, steps=2, batch=1, mode="frozen", seed=SEED)
    model = prepare_model(tiny_llama(), _config(tiny_llama()), tc)
    assert [n for n, _ in trainable_parameters(model)] == ["memory_token"]
    with pytest.raises(ValueError, match="stage 1 trains without memory search"):
        TrainConfig(stage=1, depth=3)
    with pytest.raises(ValueError, match="depth must be >= 3"):
        TrainConfig(stage=2, depth=2)
    with pytest.raises(ValueError, match="unknown training mode 'half'"):
        TrainConfig(mode="half")


@pytest.mark.parametrize("mode", ["lora", "frozen"])
def test_resume_equals_uninterrupted_run(tmp_path, mode):
    # LoRA dropout draws from the global RNG, so this also checks the RNG state is restored.
    tc = TrainConfig(stage=2, depth=3, steps=4, batch=2, lr=5e-3, lr_step=3, mode=mode, seed=SEED)
    straight = _params(_run(tmp_path / "a", tc))
    _run(tmp_path / "b", tc, stop_after=2)
    assert read_training_meta(str(tmp_path / "b"))["step"] == 2
    torch.manual_seed(12345)                        # a resumed process starts from another RNG state
    resumed = _params(_run(tmp_path / "c", tc, resume=str(tmp_path / "b")))
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), f"{k} differs after resume (seed {SEED})"
    log_a = read_training_meta(str(tmp_path / "a"))["log"]
    log_c = read_training_meta(str(tmp_path / "c"))["log"]
    assert [e["loss"] for e in log_a] == [e["loss"] for e in log_c]
    assert log_c[-1]["lr"] == pytest.approx(5e-3 * 0.5)          # the step decay continued


def test_checkpoint_round_trip_with_lora(tmp_path):
    tc = TrainConfig(stage=2, depth=3, steps=3, batch=1, lr=1e-2, mode="lora", seed=SEED)
    trained = _run(tmp_path, tc)
    assert {"hmt_config.json", "hmt.safetensors", "lora.safetensors", "train.json",
            "train_state.safetensors", "loss.png"} <= set(os.listdir(tmp_path))
    loaded = load_trained(str(tmp_path), tiny_llama()).eval()
    want = _params(trained)
    got = _params(loaded)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    ids = _docs()[0][: 3 * loaded.config.tokens_per_segment + 1]
    with torch.no_grad():
        a = WindowLoss(trained.eval(), 3)(ids)
        b = WindowLoss(loaded, 3)(ids)
    assert torch.equal(a, b)
    # The evaluation loader reads HMT's own tensors of the same folder (without the adapter).
    plain = load_checkpoint(str(tmp_path), tiny_llama())
    assert all(torch.equal(plain.hmt_state_dict()[k], trained.hmt_state_dict()[k]) for k in plain.hmt_state_dict())


def test_stage2_init_takes_memory_token_and_fresh_search(tmp_path):
    s1 = TrainConfig(stage=1, depth=2, steps=3, batch=1, lr=1e-2, mode="lora", seed=SEED)
    m1 = _run(tmp_path / "s1", s1)
    s2 = TrainConfig(stage=2, depth=3, steps=1, batch=1, mode="lora", seed=SEED)
    bb = tiny_llama()
    m2 = prepare_model(bb, _config(bb, seed=7), s2, init=str(tmp_path / "s1"))
    assert torch.equal(m2.memory_token, m1.memory_token)
    lora1 = {n: p for n, p in m1.lm.named_parameters() if "lora_" in n}
    lora2 = {n: p for n, p in m2.lm.named_parameters() if "lora_" in n}
    assert lora1 and all(torch.equal(lora1[n], lora2[n]) for n in lora1)
    fresh = prepare_model(tiny_llama(), _config(bb, seed=7), s2)
    assert torch.equal(m2.recall.w_q, fresh.recall.w_q) and torch.equal(m2.prompt, fresh.prompt)
    with pytest.raises(ValueError, match="trained with backbone mode 'lora', this run uses 'frozen'"):
        prepare_model(tiny_llama(), _config(bb), TrainConfig(stage=2, depth=3), init=str(tmp_path / "s1"))


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    tc = TrainConfig(stage=2, depth=3, steps=2, batch=1, mode="frozen", seed=SEED)
    _run(tmp_path / "ok", tc)
    with pytest.raises(ValueError, match="no such folder"):
        _run(tmp_path / "x", tc, resume=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="trained with different settings: lr=0.001 \\(now 0.5\\)"):
        _run(tmp_path / "x", TrainConfig(**{**tc.to_dict(), "lr": 0.5}), resume=str(tmp_path / "ok"))
    state = tmp_path / "ok" / "train_state.safetensors"
    state.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="train_state.safetensors: 8 bytes, manifest.json says"):
        _run(tmp_path / "x", tc, resume=str(tmp_path / "ok"))
    write_manifest(str(tmp_path / "ok"))                   # past the manifest: the file's own checks
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        _run(tmp_path / "x", tc, resume=str(tmp_path / "ok"))
    meta = tmp_path / "ok" / "train.json"
    meta.write_text(json.dumps({"format": "pickle-me"}))
    with pytest.raises(ValueError, match="train.json: .* manifest.json says"):
        _run(tmp_path / "x", tc, resume=str(tmp_path / "ok"))
    write_manifest(str(tmp_path / "ok"))
    with pytest.raises(ValueError, match="format 'pickle-me', expected 'hmtx-train-1'"):
        _run(tmp_path / "x", tc, resume=str(tmp_path / "ok"))
    meta.unlink()
    with pytest.raises(ValueError, match="missing train.json"):
        _run(tmp_path / "x", tc, resume=str(tmp_path / "ok"))


def test_token_stream_windows_are_deterministic_and_checked():
    s = TokenStream([torch.arange(100), torch.arange(50)], eos_id=999)
    assert len(s) == 152 and int(s.ids[100]) == 999
    a = s.window(30, 1, 5, 0)
    assert torch.equal(a, s.window(30, 1, 5, 0)) and not torch.equal(a, s.window(30, 1, 5, 1))
    with pytest.raises(ValueError, match="training text has 152 tokens, a window needs 200"):
        s.window(200, 0, 0, 0)
    with pytest.raises(ValueError, match="training text is empty"):
        TokenStream([torch.zeros(0, dtype=torch.long)], 0)


def test_cli_train_and_resume(tmp_path, capsys):
    text = tmp_path / "train.txt"
    text.write_text(TEXT)
    out = tmp_path / "ck"
    base = ["train", "--backbone", "tiny", "--text", str(text), "--out", str(out), "--quiet",
            "--segment-length", "16", "--sensory", "3", "--cache-size", "2", "--d-h", "8"]
    assert cli_main(base + ["--steps", "2"]) == 0
    assert cli_main(base + ["--steps", "3", "--resume", str(out)]) == 0
    assert read_training_meta(str(out))["step"] == 3
    capsys.readouterr()
    # without --steps a resumed run keeps the checkpoint's total, which it has reached: say so,
    # and leave the checkpoint as it was
    before = (out / "train.json").read_bytes()
    assert cli_main(base + ["--resume", str(out)]) == 2
    assert "has done 3 steps already, and this run asks for 3 in all: give --steps above 3" in capsys.readouterr().err
    assert cli_main(base + ["--steps", "2", "--resume", str(out)]) == 2
    assert (out / "train.json").read_bytes() == before
    assert cli_main(base + ["--stage", "2"]) == 2
    assert "give --init FOLDER" in capsys.readouterr().err


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from safetensors.torch import save_file
    from hmtx.model.backbone import tiny_llama
    from hmtx.model.hmt import HMTConfig
    from hmtx.model.train import TrainConfig, train
    torch.set_num_threads(1)
    out = sys.argv[1]
    bb = tiny_llama()
    cfg = HMTConfig(backbone="tiny", d=bb.d, segment_length=16, sensory=3, cache_size=2, d_h=8, summary_length=4)
    docs = [torch.tensor(list(("the quick brown fox jumps over the lazy dog. " * 40).encode()))]
    tc = TrainConfig(stage=2, depth=3, steps=3, batch=1, lr=1e-2, mode="lora", seed=3)
    model = train(bb, cfg, tc, docs, os.path.join(out, "ck"), progress=False)
    rank = os.environ["RANK"]
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, os.path.join(out, f"rank{rank}.safetensors"))
""")


@pytest.mark.slow
def test_ddp_two_cpu_ranks_end_identical(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(29500 + SEED % 400), str(script), str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a, b = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert a.keys() == b.keys() and any("lora_" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between ranks"
    meta = read_training_meta(str(tmp_path / "ck"))
    assert meta["world_size"] == 2 and meta["step"] == 3
    # Training moved the parameters (the ranks agree on something other than the initial state).
    init = prepare_model(tiny_llama(), HMTConfig(backbone="tiny", d=32, seed=0, **SIZES),
                         TrainConfig(stage=2, depth=3, mode="lora", seed=3))
    assert not torch.equal(a["memory_token"], init.memory_token.detach())


def test_shipped_checkpoint_is_the_documented_hardware_configuration():
    from hmtx.model.hmt import read_checkpoint
    from hmtx.model.defaults import default_checkpoint

    folder = default_checkpoint("smollm2")
    assert folder is not None and default_checkpoint("tiny") is None
    config, tensors = read_checkpoint(folder)
    assert (config.backbone, config.d, config.d_h, config.cache_size, config.sensory, config.segment_length) == \
        ("smollm2", 576, 256, 64, 32, 256)
    assert all(torch.isfinite(t).all() for t in tensors.values())
    # Only HMT's own parameters are shipped: a few MB, no optimizer state, no backbone weights.
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    assert size < 4_000_000 and not {"train_state.safetensors", "backbone.safetensors"} & set(os.listdir(folder))
    # Stage 2 trained the search: W_q and W_k are no longer the seed initialisation (drawn, as in
    # HMT.__init__, after T and the memory token). The RMT checkpoint trained only its memory token.
    from hmtx.model.recall import MemoryRecall
    gen = torch.Generator().manual_seed(config.seed)
    torch.randn(config.d, generator=gen), torch.randn(config.d, generator=gen)
    init = MemoryRecall(config.d, config.d_h, config.cache_size, generator=gen)
    assert not torch.equal(tensors["recall.w_q"], init.w_q.detach())
    assert not torch.equal(tensors["recall.w_k"], init.w_k.detach())
    # Stage 3 continued from the stage-2 folder: the memory token (all that the recall-off ablation
    # reads) is that folder's, bit for bit; the host-side read-out was trained from zero.
    assert read_training_meta_file(folder, "train_stage3.json")["train_config"]["stage"] == 3
    stage2_config, stage2 = read_checkpoint(os.path.join(os.path.dirname(folder), "smollm2-hmt-stage2"))
    assert read_training_meta_file(os.path.join(os.path.dirname(folder), "smollm2-hmt-stage2"),
                                   "train_stage2.json")["train_config"]["stage"] == 2
    assert torch.equal(tensors["memory_token"], stage2["memory_token"])
    assert config.readout == "linear" and stage2_config.readout == "none"
    assert float(tensors["readout.weight"].abs().max()) > 0
    rmt_config, rmt = read_checkpoint(default_checkpoint("smollm2", "rmt"))
    assert (rmt_config.segment_length, rmt_config.sensory) == (config.segment_length, config.sensory)
    gen = torch.Generator().manual_seed(rmt_config.seed)          # RMT's own initialisation
    torch.randn(config.d, generator=gen), torch.randn(config.d, generator=gen)
    rmt_init = MemoryRecall(config.d, config.d_h, config.cache_size, generator=gen)
    assert torch.equal(rmt["recall.w_q"], rmt_init.w_q.detach())
    assert not torch.equal(rmt["memory_token"], tensors["memory_token"])
    assert (stage2_config.segment_length, stage2_config.cache_size) == (config.segment_length, config.cache_size)


def read_training_meta_file(folder, name):
    with open(os.path.join(folder, name)) as f:
        meta = json.load(f)
    assert meta["format"] == "hmtx-train-1"
    return meta


def test_out_folder_with_foreign_files_is_refused_not_replaced(tmp_path):
    (tmp_path / "README.md").write_text("keep me")
    tc = TrainConfig(stage=1, depth=2, steps=1, batch=1, seed=SEED)
    with pytest.raises(ValueError, match="holds files that are not part of a training checkpoint \\(README.md\\)"):
        _run(tmp_path, tc)
    assert (tmp_path / "README.md").read_text() == "keep me"
