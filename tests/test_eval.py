"""`hmtx eval` on the tiny backbone: scored tokens, perplexity arithmetic, JSON, plot, bad input."""

import argparse
import json
import math

import pytest
import torch

from hmt_testlib import SEED, random_ids, tiny_hmt
from hmtx.host import cmd_eval
from hmtx.model.evaluate import evaluate
from hmtx.model.text import TokenDocument


def _parse(argv):
    parser = argparse.ArgumentParser()
    cmd_eval.register(parser.add_subparsers())
    return parser.parse_args(argv)


TINY_ARGS = ["--backbone", "tiny", "--segment-length", "24", "--sensory", "4", "--cache-size", "2",
             "--d-h", "8", "--quiet"]


def test_backbone_ppl_equals_direct_computation():
    model = tiny_hmt()
    B = model.config.tokens_per_segment
    docs = [TokenDocument("a", random_ids(3 * B + 5, SEED)), TokenDocument("b", random_ids(2 * B, SEED + 1)),
            TokenDocument("short", random_ids(B - 1, SEED + 2))]
    res = evaluate(model, docs, segments=3, variants=("backbone", "hmt_float"), progress=False)
    # Doc a is cut to 3 segments (3B tokens), doc b has 2; each scores len - 1 next-token targets.
    assert res["tokens"] == (3 * B - 1) + (2 * B - 1)
    assert res["documents"] == 2 and res["skipped_short_documents"] == 1
    assert res["per_segment"]["tokens"] == [2 * B, 2 * B - 1, B - 1]
    nll, n = 0.0, 0
    E = model.lm.get_input_embeddings()
    with torch.no_grad():
        for d in docs[:2]:
            ids = d.ids[:3 * B]
            for s in range(0, ids.numel(), B):
                logits = model.lm(inputs_embeds=E(ids[s:s + B])[None]).logits[0]
                tgt = ids[s + 1:s + B + 1]                        # crosses into the next segment
                nll -= float(torch.log_softmax(logits[:tgt.numel()], -1).gather(1, tgt[:, None]).sum())
                n += tgt.numel()
    assert n == res["tokens"]
    assert math.isclose(res["ppl"]["backbone"], math.exp(nll / n), rel_tol=1e-5)
    # Segment 0 of HMT is [mem || H_0 || mem]: different from backbone-only, same token count.
    assert res["ppl"]["hmt_float"] != res["ppl"]["backbone"]


def test_eval_command_json_and_plot(tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 6)      # 270 bytes = 13 segments of 20
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    args = _parse(["eval", "--text", str(text), "--segments", "4", "--json", str(out), "--plot", str(png)] + TINY_ARGS)
    assert args.func(args) == 0
    res = json.loads(out.read_text())
    assert set(res["ppl"]) == {"backbone", "sliding", "full", "rmt", "hmt_norecall", "hmt_first", "hmt_float",
                               "hmt_fixed"}
    per = res["per_segment"]
    # Segment 0 has no context in any variant but RMT's/HMT's memory token: the text-only ones agree,
    # and so do the three HMT ones (memory token, no sensory tokens, no search yet).
    assert per["backbone"][0] == per["sliding"][0] == per["full"][0]
    assert per["hmt_norecall"][0] == per["hmt_float"][0]
    # the first-memory ablation is HMT until its first search (P_1 = M_0 in both), then differs
    assert per["hmt_first"][:2] == per["hmt_float"][:2] and per["hmt_first"][2] != per["hmt_float"][2]
    gain = res["recall_gain"]["hmt_float"]
    assert gain["all"] == pytest.approx(1 - res["ppl"]["hmt_float"] / res["ppl"]["hmt_norecall"])
    assert [b["segments"] for b in gain["buckets"]] == [[0, 3]]
    assert res["tokens"] == 4 * 18 - 1
    assert res["per_segment"]["segment"] == [0, 1, 2, 3]
    assert all(len(res["per_segment"][v]) == 4 for v in res["ppl"])
    assert res["config"]["segment_length"] == 24 and res["config"]["tokens_per_segment"] == 18
    assert res["trained"] is False and "UNTRAINED" in res["note"]
    diff = res["recall_fixed_vs_float"]
    assert diff["recalls"] == 2 and diff["rel_l2_max"] < 0.1
    # Until a search runs (segments 0 and 1) fixed and float HMT are the same computation.
    assert res["per_segment"]["hmt_fixed"][:2] == res["per_segment"]["hmt_float"][:2]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "UNTRAINED" in capsys.readouterr().out


@pytest.mark.parametrize("content,message", [("", "no text"), ("too short", "shorter than one segment")])
def test_eval_command_bad_text(tmp_path, capsys, content, message):
    text = tmp_path / "t.txt"
    text.write_text(content)
    args = _parse(["eval", "--text", str(text), "--json", str(tmp_path / "r.json")] + TINY_ARGS)
    assert args.func(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_eval_rejects_bad_arguments():
    model = tiny_hmt()
    docs = [TokenDocument("a", random_ids(40))]
    with pytest.raises(ValueError, match="segments must be a positive integer"):
        evaluate(model, docs, segments=0, progress=False)
    with pytest.raises(ValueError, match="unknown variant 'lstm'"):
        evaluate(model, docs, segments=1, variants=("lstm",), progress=False)


def _tiny_checkpoint(folder, seed, **sizes):
    from hmtx.model.backbone import tiny_llama
    from hmtx.model.hmt import HMT, save_checkpoint

    save_checkpoint(HMT.from_backbone(tiny_llama(), **{"segment_length": 24, "sensory": 4, "cache_size": 2,
                                                       "d_h": 8, **sizes}, seed=seed), str(folder))
    return str(folder)


def test_rmt_column_runs_the_rmt_checkpoint(tmp_path):
    # The RMT column must come from the RMT checkpoint's memory token, not the HMT's: RMT run through
    # `--checkpoint HMT --rmt-checkpoint RMT` equals RMT run alone from the RMT checkpoint.
    text = tmp_path / "doc.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 6)
    hmt, rmt = _tiny_checkpoint(tmp_path / "hmt", seed=1), _tiny_checkpoint(tmp_path / "rmt", seed=2)
    common = ["eval", "--text", str(text), "--segments", "4", "--backbone", "tiny", "--quiet"]
    results = {}
    for name, extra in (("pair", ["--checkpoint", hmt, "--rmt-checkpoint", rmt]),
                        ("alone", ["--checkpoint", rmt, "--rmt-checkpoint", "none", "--variants", "rmt"]),
                        ("shared", ["--checkpoint", hmt, "--rmt-checkpoint", "none", "--variants", "rmt"])):
        out = tmp_path / f"{name}.json"
        args = _parse(common + extra + ["--json", str(out)])
        assert args.func(args) == 0
        results[name] = json.loads(out.read_text())
    assert results["pair"]["ppl"]["rmt"] == results["alone"]["ppl"]["rmt"]
    assert results["pair"]["ppl"]["rmt"] != results["shared"]["ppl"]["rmt"]
    assert results["pair"]["config"]["rmt_checkpoint"] == rmt and results["pair"]["trained"] is True
    assert "note" not in results["pair"] and "not a baseline trained the same way" in results["shared"]["note"]


def test_eval_checkpoint_options(tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 6)
    ck = _tiny_checkpoint(tmp_path / "ck", seed=1)
    other = _tiny_checkpoint(tmp_path / "other", seed=1, segment_length=20)
    base = ["eval", "--text", str(text), "--backbone", "tiny", "--quiet"]
    for extra, message in ((["--checkpoint", ck, "--untrained"], "exclude each other"),
                           (["--checkpoint", ck, "--segment-length", "30"], "--segment-length 30 (checkpoint: 24)"),
                           (["--checkpoint", ck, "--rmt-checkpoint", other], "its segment_length is 20"),
                           (["--untrained", "--rmt-checkpoint", ck], "needs a trained HMT"),
                           (["--checkpoint", str(tmp_path / "missing")], "no such folder")):
        args = _parse(base + extra)
        assert args.func(args) == 2, extra
        assert message in capsys.readouterr().err, extra
    # Repeating the checkpoint's own sizes is allowed.
    args = _parse(base + ["--checkpoint", ck, "--segment-length", "24", "--variants", "backbone"])
    assert args.func(args) == 0


def test_shipped_checkpoints_are_the_defaults():
    from hmtx.host import cli_options, cmd_run
    from hmtx.model.defaults import DEFAULT_CHECKPOINT, default_checkpoint

    assert cmd_run.DEFAULT_CHECKPOINT == DEFAULT_CHECKPOINT
    args = _parse(["eval", "--text", "x"])
    assert cli_options.resolve_checkpoint(args) == default_checkpoint("smollm2") == str(DEFAULT_CHECKPOINT)
    assert cli_options.resolve_checkpoint(_parse(["eval", "--text", "x", "--untrained"])) is None
    assert cli_options.resolve_checkpoint(_parse(["eval", "--text", "x", "--checkpoint", "none"])) is None
    assert cli_options.resolve_checkpoint(_parse(["eval", "--text", "x", "--backbone", "tiny"])) is None
    assert default_checkpoint("smollm2", "rmt") is not None and default_checkpoint("tiny", "rmt") is None


def test_merge_of_disjoint_variant_runs_equals_one_run(tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 6)
    common = ["eval", "--text", str(text), "--segments", "4"] + TINY_ARGS
    outs = {}
    for name, variants in (("all", "backbone,sliding,hmt_norecall,hmt_float"), ("a", "backbone,sliding"),
                           ("b", "hmt_norecall,hmt_float")):
        outs[name] = tmp_path / f"{name}.json"
        args = _parse(common + ["--variants", variants, "--json", str(outs[name])])
        assert args.func(args) == 0
    merged = tmp_path / "m.json"
    args = _parse(["eval", "--merge", str(outs["a"]), str(outs["b"]), "--json", str(merged), "--quiet"])
    assert args.func(args) == 0
    one, two = json.loads(outs["all"].read_text()), json.loads(merged.read_text())
    assert two["ppl"] == one["ppl"] and two["per_segment"] == one["per_segment"]
    assert two["recall_gain"] == one["recall_gain"]
    # FILE:VARIANTS takes a part of a result: here the baselines of the full run and HMT from b.
    args = _parse(["eval", "--merge", f"{outs['all']}:backbone,sliding", str(outs["b"]), "--json", str(merged)])
    assert args.func(args) == 0
    assert json.loads(merged.read_text())["ppl"] == one["ppl"]
    # The same variant twice, or another document set, is refused.
    args = _parse(["eval", "--merge", str(outs["a"]), str(outs["all"])])
    assert args.func(args) == 2 and "more than one result" in capsys.readouterr().err
    other = json.loads(outs["b"].read_text())
    other["documents_used"] = ["something else"]
    (tmp_path / "o.json").write_text(json.dumps(other))
    args = _parse(["eval", "--merge", str(outs["a"]), str(tmp_path / "o.json")])
    assert args.func(args) == 2 and "documents_used" in capsys.readouterr().err


def test_bad_output_path_or_variant_fails_before_any_work(tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 6)
    for extra, message in ((["--json", str(text / "r.json")], "--json"),
                           (["--plot", str(tmp_path)], "--plot"),
                           (["--variants", "hmt_float,bogus"], "bogus"),
                           (["--variants", "backbone", "--age-plot", str(tmp_path / "a.png")], "--age-plot")):
        args = _parse(["eval", "--text", str(text)] + TINY_ARGS + extra)
        assert args.func(args) == 2
        assert message in capsys.readouterr().err
