"""Issue 25, items 3-6 and 8: every bad input gets one clear line and its documented exit code
(2 bad input, 1 mismatch, 3 device error), before any slow work, and a detected mismatch or
device error is reported even when its case file cannot be saved."""

import errno
import json
import math
import os
import random
import shutil

import numpy as np
import pytest

import hmt_testlib  # noqa: F401  (one torch thread: the 2-core machine is shared)
from hmtx.host import cli_options, cmd_run, runtime
from hmtx.host.backends import GoldenTransport
from hmtx.host.cli import main
from hmtx.host.device import Device, ProtocolError
from hmtx.model import fixed
from hmtx.model.configs import get_config

TINY = ["--backbone", "tiny", "--quiet"]
SEED = int(os.environ.get("HMTX_SEED", random.randrange(1 << 30)))


@pytest.fixture(autouse=True)
def _print_seed():
    print(f"HMTX_SEED={SEED}")


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the command gets as far as loading a backbone."""
    import hmtx.model.backbone as bb

    def refuse(*a, **k):
        raise AssertionError("the backbone was loaded before the bad input was refused")
    monkeypatch.setattr(bb, "load_backbone", refuse)


def _one_line_error(err: str, *needles):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def run_cli(capsys, *argv):
    rc = main(["run", *TINY, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --- item 5: timeouts ----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
def test_non_finite_or_non_positive_timeout_is_refused(capsys, value, no_model_load, tmp_path):
    rc, _, err = run_cli(capsys, "--device", "golden", f"--timeout={value}")
    assert rc == 2
    _one_line_error(err, "--timeout", "finite number of seconds > 0")
    case = tmp_path / "c.json"
    case.write_text("{}")
    assert main(["replay", str(case), f"--timeout={value}"]) == 2
    _one_line_error(capsys.readouterr().err, "--timeout")


@pytest.mark.parametrize("value", [math.nan, math.inf, 0.0, -2.0])
def test_device_refuses_a_timeout_that_never_or_always_expires(value):
    with pytest.raises(ValueError, match="finite number of seconds > 0"):
        Device(GoldenTransport(get_config("tiny")), timeout=value)


# --- item 4: output paths checked before the run ------------------------------------------------------
def _bad_paths(tmp_path):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    adir = tmp_path / "adir"
    adir.mkdir()
    return afile, adir


def test_output_paths_are_checked_before_the_run(capsys, tmp_path, no_model_load):
    afile, adir = _bad_paths(tmp_path)
    cases = [("--json", str(adir), "is a folder"),
             ("--json", str(afile / "r.json"), "is not a folder"),
             ("--json", "/proc/hmtx-nope/r.json", "cannot write there"),
             ("--case", str(adir), "is a folder"),
             ("--case", str(afile / "sub" / "c.json"), "is not a folder"),
             ("--plot", str(afile), "exists and is not a folder"),
             ("--plot", "/proc/hmtx-nope", "cannot write there")]
    for flag, path, why in cases:
        rc, _, err = run_cli(capsys, "--device", "golden", flag, path)
        assert rc == 2, (flag, path, err)
        _one_line_error(err, flag, why)
    assert sorted(os.listdir(tmp_path)) == ["adir", "afile.txt"]      # the check left nothing behind
    assert os.listdir(adir) == []


def test_check_output_path_accepts_what_can_be_written_and_creates_nothing(tmp_path):
    new = tmp_path / "a" / "b" / "r.json"
    assert cli_options.check_output_path(str(new), "--json") == str(new)
    assert cli_options.check_output_path(str(tmp_path / "plots"), "--plot", folder=True)
    existing = tmp_path / "old.json"
    existing.write_text("keep")
    cli_options.check_output_path(str(existing), "--json")
    assert existing.read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["old.json"]
    assert cli_options.check_output_path(None, "--json") is None
    with pytest.raises(ValueError, match="ends in '/'"):
        cli_options.check_output_path(str(tmp_path / "x") + "/", "--json")
    with pytest.raises(ValueError, match="cannot write there"):
        cli_options.check_output_path("/proc/x.json", "--json")
    with pytest.raises(ValueError, match="cannot write there"):
        cli_options.check_output_path(str(tmp_path / ("n" * 300 + ".json")), "--json")


def test_gen_out_checked_first(capsys, tmp_path):
    afile, _ = _bad_paths(tmp_path)
    assert main(["gen", "--config", "tiny", "--out", str(afile)]) == 2
    _one_line_error(capsys.readouterr().err, "--out", "not a folder")


# --- item 3: the report survives a case file that cannot be written ---------------------------------
def _unwritable(monkeypatch):
    def fail(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(runtime, "save_case", fail)


def test_mismatch_is_reported_when_the_case_cannot_be_saved(capsys, tmp_path, monkeypatch):
    _unwritable(monkeypatch)
    rc, out, err = run_cli(capsys, "--device", "golden", "--segments", "5", "--inject-fault", "3:5:2",
                           "--case", str(tmp_path / "c.json"), "--json", str(tmp_path / "r.json"))
    assert rc == 1, err
    assert "STOPPED at the first mismatch" in out and "hmtx run summary" in out
    mm = err.index("MISMATCH at segment 3, op RECALL: p_mant[5]")
    save = err.index("could not save the failing case: ")
    assert mm < save and "No space left on device" in err[save:] and "Traceback" not in err
    assert json.loads((tmp_path / "r.json").read_text())["mismatches"] == 1     # the JSON still written


def _failing_recall(monkeypatch, after: int):
    real = runtime.CheckedDevice.recall
    calls = {"n": 0}

    def recall(self, *a):
        calls["n"] += 1
        if calls["n"] > after:
            raise ProtocolError("RECALL: no response from golden within 5 s")
        return real(self, *a)
    monkeypatch.setattr(runtime.CheckedDevice, "recall", recall)


@pytest.mark.parametrize("saving", ["works", "fails"])
def test_device_error_is_reported_then_the_case(capsys, tmp_path, monkeypatch, saving):
    _failing_recall(monkeypatch, after=1)
    if saving == "fails":
        _unwritable(monkeypatch)
    case = tmp_path / "c.json"
    rc, _, err = run_cli(capsys, "--device", "golden", "--segments", "5", "--case", str(case))
    assert rc == 3 and "Traceback" not in err
    dev = err.index("hmtx run: device error: RECALL: no response")
    if saving == "works":
        assert err.index(f"failing case saved: {case}") > dev
        assert runtime.load_case(str(case))["error"].startswith("ProtocolError")
    else:
        assert err.index("could not save the failing case:") > dev and not case.exists()


def test_default_case_lands_in_the_source_tree_not_the_current_folder(capsys, tmp_path, monkeypatch):
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    repo.mkdir()
    elsewhere.mkdir()
    monkeypatch.setattr(cmd_run, "CASES_DIR", repo / "build" / "cases")
    monkeypatch.chdir(elsewhere)
    rc, _, err = run_cli(capsys, "--device", "golden", "--segments", "4", "--inject-fault", "2:0:0")
    assert rc == 1
    saved = list((repo / "build" / "cases").glob("run-*.json"))
    assert len(saved) == 1 and f"failing case saved: {saved[0]}" in err
    assert os.listdir(elsewhere) == []


# --- item 8: everything the user can get wrong, before the model load -------------------------------
def test_bad_inputs_refused_before_the_model_load(capsys, tmp_path, no_model_load):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    cases = [(["--device", "sim:wide"], "unknown engine 'wide'"),
             (["--device", "fpga"], "unknown device 'fpga'"),
             (["--device", "serial:/dev/hmtx-no-such-tty"], "no such serial port"),
             (["--device", "serial:/dev/x@fast"], "baud rate"),
             (["--text", str(empty)], "no text"),
             (["--text", str(tmp_path / "none.txt")], "no such file"),
             (["--device", "golden", "--segments", "6", "--inject-fault", "6:0:0"], "is not reached by a run of --segments 6"),
             (["--device", "golden", "--inject-fault", "3:32:0"], "element 32 >= d=32"),
             (["--device", "golden", "--segments", "0"], "--segments must be a positive integer")]
    for argv, why in cases:
        rc, _, err = run_cli(capsys, "--case", str(tmp_path / "c.json"), *argv)
        assert rc == 2, (argv, err)
        _one_line_error(err, why)
    assert not (tmp_path / "c.json").exists()                   # no bogus case file


def test_checkpoint_that_does_not_fit_the_engine_is_refused_before_the_load(capsys, tmp_path, no_model_load):
    from hmt_testlib import tiny_hmt
    from hmtx.model.hmt import save_checkpoint
    save_checkpoint(tiny_hmt(), str(tmp_path / "ck"))              # N=2, d_h=8: not the tiny engine's
    rc, _, err = run_cli(capsys, "--device", "golden", "--checkpoint", str(tmp_path / "ck"))
    assert rc == 2
    _one_line_error(err, "does not fit engine config")


@pytest.mark.parametrize("damage", ["truncate", "flip", "config"])
def test_damaged_checkpoint_one_line_exit_2(capsys, tmp_path, damage, no_model_load):
    from hmtx.model.defaults import DEFAULT_CHECKPOINT
    ck = tmp_path / "ck"
    shutil.copytree(DEFAULT_CHECKPOINT, ck)
    w = ck / ("hmt_config.json" if damage == "config" else "hmt.safetensors")
    data = bytearray(w.read_bytes())
    if damage == "truncate":
        data = data[:100]
    elif damage == "flip":
        data[-5] ^= 0x10
    else:
        data = data.replace(b'"segment_length": 256', b'"segment_length": 40')
    w.write_bytes(bytes(data))
    for cmd in (["run", "--device", "golden", "--backbone", "smollm2"],
                ["eval", "--text", "data/wikitext-2/test.txt", "--backbone", "smollm2"]):
        assert main([*cmd, "--checkpoint", str(ck), "--quiet"]) == 2
        _one_line_error(capsys.readouterr().err, str(w), "manifest.json")


# --- item 6: replay validates the case format --------------------------------------------------------
CFG = get_config("tiny")


def _good_case(tmp_path) -> dict:
    rng = np.random.default_rng(SEED)
    chk = runtime.CheckedDevice(Device(GoldenTransport(CFG), CFG), CFG)
    chk.segment = 0
    chk.reset()
    chk.load_weights(*[fixed.quantize_weight(rng.normal(size=(CFG.d, CFG.d_h))) for _ in range(2)])
    for _ in range(3):
        m, e = fixed.quantize_bfp(rng.normal(size=CFG.d))
        chk.write(m, int(e))
    s, e = fixed.quantize_bfp(rng.normal(size=CFG.d))
    chk.recall(s, int(e))
    chk.check_cache()
    path = runtime.save_case(str(tmp_path / "good.json"), CFG, chk.log,
                             runtime.Mismatch(2, "RECALL", None, "p_mant", 3, 10, 12))
    return json.loads(open(path).read())


def _mutations(good):
    def m(fn):
        case = json.loads(json.dumps(good))
        fn(case)
        return case
    return {
        "top-level list": [good],
        "ops not a list": m(lambda c: c.update(ops={"op": "reset"})),
        "op not an object": m(lambda c: c["ops"].insert(1, "reset")),
        "unknown op": m(lambda c: c["ops"][1].update(op="explode")),
        "op missing": m(lambda c: c["ops"][1].pop("op")),
        "write without m_mant": m(lambda c: c["ops"][2].pop("m_mant")),
        "m_mant not base64": m(lambda c: c["ops"][2].update(m_mant="***")),
        "m_mant a number": m(lambda c: c["ops"][2].update(m_mant=5)),
        "m_mant too short": m(lambda c: c["ops"][2].update(m_mant="AAAA")),
        "m_exp a string": m(lambda c: c["ops"][2].update(m_exp="3")),
        "recall s_exp null": m(lambda c: c["ops"][5].update(s_exp=None)),
        "weights a dict": m(lambda c: c["ops"][1].update(weights={})),
        "one weight": m(lambda c: c["ops"][1]["weights"].pop()),
        "weight shape": m(lambda c: c["ops"][1]["weights"][0].update(shape=[4, 4])),
        "weight no exp": m(lambda c: c["ops"][1]["weights"][1].pop("exp")),
        "segment a string": m(lambda c: c["ops"][2].update(segment="two")),
        "write before weights": m(lambda c: c["ops"].pop(1)),
        "mismatch a list": m(lambda c: c.update(mismatch=[1])),
        "mismatch keys": m(lambda c: c["mismatch"].pop("field")),
        "mismatch element": m(lambda c: c["mismatch"].update(element="x")),
        "error a number": m(lambda c: c.update(error=7)),
        "config missing": m(lambda c: c.pop("config")),
        "config a list": m(lambda c: c.update(config=[1])),
        "config field": m(lambda c: c["config"].update(d="32")),
        "config extra": m(lambda c: c["config"].update(colour="red")),
    }


def test_replay_good_case_then_every_wrong_structure_exits_2(capsys, tmp_path):
    good = _good_case(tmp_path)
    assert main(["replay", str(tmp_path / "good.json")]) == 0
    capsys.readouterr()
    for name, case in _mutations(good).items():
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(case))
        rc = main(["replay", str(path)])
        out, err = capsys.readouterr()
        assert rc == 2, (name, out, err)
        _one_line_error(err, str(path))
    for raw in (b"", b"\xff\xfe binary", b"{not json"):
        (tmp_path / "raw.json").write_bytes(raw)
        assert main(["replay", str(tmp_path / "raw.json")]) == 2
        _one_line_error(capsys.readouterr().err, "cannot read case file")


def test_replay_random_damage_never_tracebacks(capsys, tmp_path):
    """Seeded random edits of a good case: drop, retype or rewrite any field at any depth. Each
    replay ends with a documented status (0, 1 or 2), never an exception."""
    rng = random.Random(SEED)
    good = _good_case(tmp_path)
    junk = [None, True, -1, 0, 2 ** 40, 1.5, "", "x", "AAAA", [], {}, [1, 2], {"op": "reset"}]
    path = tmp_path / "fuzz.json"
    outcomes = {}
    for i in range(int(os.environ.get("HMTX_REPLAY_FUZZ", "150"))):
        case = json.loads(json.dumps(good))
        for _ in range(rng.randint(1, 3)):
            node, key = case, None
            while True:                                     # walk to a random field
                keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
                if not keys:
                    break
                key = rng.choice(keys)
                child = node[key]
                if isinstance(child, (dict, list)) and child and rng.random() < 0.6:
                    node = child
                    continue
                break
            if key is None:
                continue
            if isinstance(node, dict) and rng.random() < 0.3:
                node.pop(key)
            else:
                node[key] = json.loads(json.dumps(rng.choice(junk)))     # a fresh copy
        path.write_text(json.dumps(case))
        try:
            rc = main(["replay", str(path)])
        except BaseException as e:                          # noqa: BLE001
            raise AssertionError(f"seed {SEED}, case {i}: {type(e).__name__}: {e}\n{json.dumps(case)[:400]}")
        out, err = capsys.readouterr()
        assert rc in (0, 1, 2, 3), (i, rc)
        if rc == 3:
            assert "hmtx replay: device error: device answered" in err, err   # e.g. EMPTY_CACHE
        outcomes[rc] = outcomes.get(rc, 0) + 1
    print(f"replay fuzz outcomes (exit status: count): {outcomes}")
    assert outcomes.get(2, 0) > 50


def test_other_commands_check_their_outputs_first(capsys, tmp_path):
    afile, adir = _bad_paths(tmp_path)
    for argv, flag in ((["bench", "--quick", "--json", str(adir)], "--json"),
                       (["bench", "--quick", "--json", str(tmp_path / "b.json"), "--plots", str(afile)], "--plots"),
                       (["synth", "--board", "ulx3s-85f", "--config", "tiny", "--json", str(adir)], "--json"),
                       (["synth", "--board", "ulx3s-85f", "--config", "tiny", "--out", str(afile)], "--out"),
                       (["sweep", "--board", "ulx3s-85f", "--config", "tiny", "--out", str(afile)], "--out"),
                       (["export-onnx", "--out", str(adir), "--d", "8", "--d-h", "4", "--cache-size", "2"], "--out")):
        assert main(argv) == 2, argv
        _one_line_error(capsys.readouterr().err, flag)
    assert sorted(os.listdir(tmp_path)) == ["adir", "afile.txt"]
