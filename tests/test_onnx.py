"""The float memory recall exported to ONNX (`hmtx export-onnx`) matches torch under onnxruntime."""

import argparse

import torch

from hmt_testlib import SEED
from hmtx.host import cmd_export_onnx
from hmtx.model.onnx_export import check_onnx, random_recall
from hmtx.model.recall import FloatRecallCore


def test_export_command_and_onnxruntime_match(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cmd_export_onnx.register(parser.add_subparsers())
    path = tmp_path / "recall.onnx"
    args = parser.parse_args(["export-onnx", "--out", str(path), "--d", "48", "--d-h", "16",
                              "--cache-size", "8", "--seed", str(SEED), "--check"])
    assert args.func(args) == 0
    assert "onnxruntime vs torch" in capsys.readouterr().out
    recall = random_recall(48, 16, 8, seed=SEED)             # the weights the command exported
    g = torch.Generator().manual_seed(SEED)
    for fill in (8, 3, 1):                                   # full, partly filled, one slot
        s, m = torch.randn(48, generator=g) * 4, torch.randn(8, 48, generator=g) * 3
        mask = torch.arange(8) < fill
        err = check_onnx(recall, str(path), s, m, mask)
        assert err["p"] <= 1e-5 * max(1.0, err["p_ref_max"]), f"HMTX_SEED={SEED} fill={fill}: {err}"
        assert err["probs"] <= 1e-6, f"HMTX_SEED={SEED} fill={fill}: {err}"
        with torch.no_grad():
            p, probs = FloatRecallCore(recall)(s, m, mask)
            p_ref, _ = recall.recall_once("float", s, m[:fill])
        assert float(probs[fill:].abs().sum()) == 0.0        # empty slots get no weight
        torch.testing.assert_close(p, p_ref)
