"""Damaged checkpoints (issue 25, item 2): one line naming the file and the problem, exit 2; the
manifest of file hashes is written with every checkpoint and checked on every load."""

import json
import os
import random
import shutil

import pytest

from hmt_testlib import tiny_hmt
from hmtx.model import checkpoint_files as cf
from hmtx.model.hmt import read_checkpoint, save_checkpoint
from hmtx.model.defaults import DEFAULT_CHECKPOINT, DEFAULT_RMT_CHECKPOINT

SHIPPED = [str(DEFAULT_CHECKPOINT), str(DEFAULT_RMT_CHECKPOINT)]


@pytest.mark.parametrize("folder", SHIPPED, ids=["hmt", "rmt"])
def test_shipped_checkpoints_carry_a_manifest_that_verifies(folder):
    assert cf.verify_manifest(folder, required=True)
    listed = cf.read_json(os.path.join(folder, cf.MANIFEST_FILE))["files"]
    assert {"hmt.safetensors", "hmt_config.json"} <= set(listed)
    read_checkpoint(folder)


@pytest.mark.parametrize("folder", SHIPPED, ids=["hmt", "rmt"])
def test_flipped_bit_in_a_shipped_checkpoint_is_caught(folder, tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    copy = tmp_path / "ck"
    shutil.copytree(folder, copy)
    path = copy / "hmt.safetensors"
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    pos = rng.randrange(header, len(data))                 # a weight's byte: the file still parses
    data[pos] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"hmt.safetensors: sha256 differs from manifest.json \(the file is damaged"):
        read_checkpoint(str(copy))


def _saved(tmp_path):
    folder = tmp_path / "ck"
    save_checkpoint(tiny_hmt(), str(folder))
    return folder


def _damage(folder, name, how):
    p = folder / name
    data = p.read_bytes()
    if how == "zero":
        p.write_bytes(b"")
    elif how == "truncated":
        p.write_bytes(data[: len(data) // 2])
    elif how == "garbage-header":
        p.write_bytes(os.urandom(8) + data[8:])
    elif how == "broken-header":
        p.write_bytes(data[:8] + b"{\x01\x02" + data[11:])
    elif how == "no-config":
        p.write_text(json.dumps({"format": "hmtx-hmt-1"}))
    elif how == "broken-json":
        p.write_text('{"format": "hmtx-hmt-1", "config": {')
    elif how == "config-list":
        p.write_text(json.dumps({"format": "hmtx-hmt-1", "config": [1, 2]}))
    elif how == "config-type":
        meta = json.loads(data)
        meta["config"]["d"] = "576"
        p.write_text(json.dumps(meta))
    elif how == "nan":
        from safetensors.torch import load_file, save_file
        t = load_file(str(p))
        t["prompt"][3] = float("nan")
        save_file(t, str(p))
    else:
        raise AssertionError(how)


CASES = [("hmt.safetensors", "zero", "empty file"),
         ("hmt.safetensors", "truncated", "not a readable safetensors file"),
         ("hmt.safetensors", "garbage-header", "not a readable safetensors file"),
         ("hmt.safetensors", "broken-header", "not a readable safetensors file"),
         ("hmt.safetensors", "nan", "tensor prompt holds 1 NaN/infinite"),
         ("hmt_config.json", "no-config", 'no "config" object'),
         ("hmt_config.json", "broken-json", "not valid JSON"),
         ("hmt_config.json", "config-list", 'no "config" object'),
         ("hmt_config.json", "config-type", "HMTConfig.d must be a positive integer")]


@pytest.mark.parametrize("name,how,problem", CASES, ids=[c[1] for c in CASES])
def test_damaged_file_is_named_with_and_without_the_manifest(tmp_path, name, how, problem):
    folder = _saved(tmp_path)
    _damage(folder, name, how)
    # The manifest sees any change first ...
    with pytest.raises(cf.CheckpointError, match=rf"{name}: .*(manifest\.json says|differs from manifest\.json)"):
        read_checkpoint(str(folder))
    # ... and without it (an old checkpoint, or the manifest rewritten) the file's own checks do.
    os.remove(folder / cf.MANIFEST_FILE)
    with pytest.raises(ValueError) as e:
        read_checkpoint(str(folder))
    msg = str(e.value)
    assert "\n" not in msg and str(folder / name) in msg and problem in msg, msg


def test_manifest_lists_new_files_and_refuses_unlisted_ones(tmp_path, capsys):
    folder = _saved(tmp_path)
    (folder / "adapter.safetensors").write_bytes((folder / "hmt.safetensors").read_bytes())
    with pytest.raises(cf.CheckpointError, match="adapter.safetensors: not listed in manifest.json"):
        cf.verify_manifest(str(folder))
    cf.write_manifest(str(folder))
    assert "adapter.safetensors" in cf.read_json(str(folder / cf.MANIFEST_FILE))["files"]
    assert cf.verify_manifest(str(folder))
    (folder / "eval_results.json").write_text("{}")         # reports beside a checkpoint are not covered
    (folder / "README.md").write_text("notes")
    assert cf.verify_manifest(str(folder))
    (folder / "adapter.safetensors").unlink()
    with pytest.raises(cf.CheckpointError, match="adapter.safetensors: listed in manifest.json but missing"):
        cf.verify_manifest(str(folder))
    (folder / cf.MANIFEST_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(cf.CheckpointError, match="manifest.json: not an hmtx-manifest-1 manifest"):
        cf.verify_manifest(str(folder))
    os.remove(folder / cf.MANIFEST_FILE)
    assert cf.verify_manifest(str(folder)) is False          # an old checkpoint: loads, with a warning
    assert "has no manifest.json" in capsys.readouterr().err
    with pytest.raises(cf.CheckpointError, match="no manifest.json"):
        cf.verify_manifest(str(folder), required=True)


def test_manifest_check_command(tmp_path, capsys):
    folder = _saved(tmp_path)
    assert cf._main([str(folder)]) == 0
    _damage(folder, "hmt.safetensors", "truncated")
    assert cf._main([str(folder)]) == 2
    assert "hmt.safetensors" in capsys.readouterr().err
    assert cf._main(["--write", str(folder)]) == 0 and cf._main([str(folder)]) == 0
