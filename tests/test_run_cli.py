"""`hmtx run` and `hmtx replay` end to end on the tiny backbone (golden and simulated device)."""

import json
import os

import pytest

import hmt_testlib  # noqa: F401  (one torch thread: the 2-core machine is shared)
from hmtx.host.cli import main

TINY = ["--backbone", "tiny", "--quiet"]


def run_cli(capsys, *argv):
    rc = main(["run", *TINY, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_golden_json_and_plots(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "--device", "golden", "--segments", "7", "--json", str(tmp_path / "r.json"),
                           "--plot", str(tmp_path / "plots"), "--fmax", "50", "--reference", "stream")
    assert rc == 0, err
    s = json.loads((tmp_path / "r.json").read_text())
    assert (s["segments"], s["mismatches"], s["device"]) == (7, 0, "golden")
    assert s["ops_checked"] > 7 and s["device_cycles"] > 0 and s["wall_s"] > 0
    assert set(s["ppl"]) >= {"backbone", "hmt_norecall", "hmt_float", "hmt_device"}
    assert s["ppl"]["hmt_device"] == s["ppl"]["hmt_fixed"]
    assert s["recall_gain"] == pytest.approx(1 - s["ppl"]["hmt_device"] / s["ppl"]["hmt_norecall"])
    assert "recall gain (device)" in out and "PPL HMT, recall off" in out
    assert s["device_time_s"] == pytest.approx(s["device_cycles"] / 50e6)
    assert "UNTRAINED" in s["note"] and "UNTRAINED" in out
    assert "mismatches" in out and "PPL HMT on device" in out
    for png in ("ppl_per_segment.png", "recall_heatmap.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000


def test_injected_fault_exits_nonzero_at_that_segment_and_element(capsys, tmp_path):
    case = tmp_path / "case.json"
    rc, out, err = run_cli(capsys, "--device", "golden", "--segments", "6", "--inject-fault", "4:17:3",
                           "--case", str(case), "--json", str(tmp_path / "r.json"))
    assert rc == 1
    assert "MISMATCH at segment 4, op RECALL: p_mant[17]" in err
    s = json.loads((tmp_path / "r.json").read_text())
    assert s["mismatches"] == 1 and s["mismatch"]["segment"] == 4 and s["mismatch"]["element"] == 17
    assert abs(s["mismatch"]["got"] - s["mismatch"]["expected"]) == 8
    assert "STOPPED at the first mismatch" in out
    # The saved case replays cleanly on a healthy device.
    assert main(["replay", str(case), "--device", "golden"]) == 0
    assert "no mismatch" in capsys.readouterr().out


def test_bad_arguments_exit_2(capsys, tmp_path):
    assert run_cli(capsys, "--device", "golden", "--inject-fault", "x")[0] == 2
    assert run_cli(capsys, "--device", "golden", "--text", str(tmp_path / "none.txt"))[0] == 2
    rc, _, err = run_cli(capsys, "--device", "fpga")
    assert rc == 2 and "unknown device" in err
    (tmp_path / "bad.json").write_text("[]")
    assert main(["replay", str(tmp_path / "bad.json")]) == 2


def test_run_sim_zero_mismatches(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "--device", "sim", "--segments", "6", "--json", str(tmp_path / "r.json"),
                           "--reference", "stream")
    assert rc == 0, err
    s = json.loads((tmp_path / "r.json").read_text())
    assert (s["segments"], s["mismatches"], s["device"]) == (6, 0, "sim")
    assert s["ppl"]["hmt_device"] == s["ppl"]["hmt_fixed"]
    assert s["device_cycles"] > 0


def test_run_sim_contract_2_zero_mismatches(capsys, tmp_path):
    """The gateware built for contract 2 (folded keys, protocol 2.1): every RECALL, WRITE_MEMORY
    and (the whole-cache check) READ_SLOT of K'_i equal to the golden device's."""
    rc, out, err = run_cli(capsys, "--device", "sim", "--contract", "2", "--segments", "4",
                           "--json", str(tmp_path / "r.json"), "--reference", "stream")
    assert rc == 0, err
    assert "protocol 2.2 (contract 2)" in err
    s = json.loads((tmp_path / "r.json").read_text())
    assert (s["segments"], s["mismatches"], s["device"], s["contract"]) == (4, 0, "sim", 2)
    assert s["ppl"]["hmt_device"] == s["ppl"]["hmt_fixed"]


def test_fmax_comes_from_the_engine_synth_report(tmp_path, monkeypatch):
    import json as _json

    from hmtx.host import cmd_run
    from hmtx.model.configs import get_config
    monkeypatch.setattr(cmd_run, "REPO", tmp_path)
    cfg = get_config("up5k")
    for name, core, fmax in (("echo", "EchoCore", 99.0), ("engine", "HmtxTop", 42.5)):
        d = tmp_path / "build" / "synth" / name
        d.mkdir(parents=True)
        (d / "synth_report.json").write_text(_json.dumps({"config": "up5k", "core": core, "lanes": cfg.lanes,
                                                          "fmax_mhz": fmax}))
    assert cmd_run.find_fmax(cfg)[0] == 42.5
    assert cmd_run.find_fmax(get_config("smollm")) is None
    # a contract-2 build is its own design: never the Fmax of contract 1's, and the other way round
    import os
    import time
    d = tmp_path / "build" / "synth" / "engine-c2"
    d.mkdir(parents=True)
    (d / "synth_report.json").write_text(_json.dumps({"config": "up5k", "core": "HmtxTop", "lanes": cfg.lanes,
                                                      "fmax_mhz": 40.0, "contract": 2}))
    later = time.time() + 10
    os.utime(d / "synth_report.json", (later, later))      # the newest report
    assert cmd_run.find_fmax(cfg)[0] == 42.5
    assert cmd_run.find_fmax(cfg, contract=2)[0] == 40.0


def test_cache_check_written_reads_fewer_slots(capsys, tmp_path):
    checked = {}
    for mode in ("full", "written"):
        rc, out, err = run_cli(capsys, "--device", "golden", "--segments", "5", "--cache-check", mode,
                               "--json", str(tmp_path / f"{mode}.json"))
        assert rc == 0, err
        s = json.loads((tmp_path / f"{mode}.json").read_text())
        assert s["mismatches"] == 0
        checked[mode] = s["ops_checked"]
    assert checked["written"] < checked["full"]


def test_no_overlap_gives_the_same_run(capsys, tmp_path):
    got = {}
    for flag in ((), ("--no-overlap",)):
        rc, out, err = run_cli(capsys, "--device", "golden", "--segments", "5", *flag,
                               "--json", str(tmp_path / "r.json"))
        assert rc == 0, err
        got[bool(flag)] = json.loads((tmp_path / "r.json").read_text())
    assert got[False]["overlap"] is True and got[True]["overlap"] is False
    for key in ("segments", "ops_checked", "mismatches", "ppl", "device_cycles", "per_segment", "recall_weights"):
        assert got[False][key] == got[True][key], key


def test_probabilities_only_on_request(capsys, tmp_path):
    got = {}
    for flag in ((), ("--probabilities",)):
        rc, out, err = run_cli(capsys, "--device", "golden", "--segments", "4", *flag,
                               "--json", str(tmp_path / "r.json"))
        assert rc == 0, err
        got[bool(flag)] = s = json.loads((tmp_path / "r.json").read_text())
        assert (s["cache_check"], s["full_check_every"], s["probabilities"]) == ("written", 16, bool(flag))
        assert ("probabilities asked for and checked" if flag else "probabilities not asked for") in err
        assert "written slot checked per segment, whole cache every 16 segments and at the end" in err
    assert got[False]["recall_weights"] == [None] * 4
    assert [w is None for w in got[True]["recall_weights"]] == [True, True, False, False]
    assert got[False]["ppl"] == got[True]["ppl"] and got[False]["ops_checked"] == got[True]["ops_checked"]
    from hmtx.host import cmd_run, runtime
    assert cmd_run.FULL_CHECK_EVERY == runtime.FULL_CHECK_EVERY       # the parser's copy of the default


def test_bad_full_check_every_is_refused_before_the_backbone_loads(capsys, monkeypatch):
    import hmtx.model.backbone as backbone

    def no_load(*a, **k):
        raise AssertionError("the backbone was loaded before --full-check-every was checked")
    monkeypatch.setattr(backbone, "load_backbone", no_load)
    rc, _, err = run_cli(capsys, "--device", "golden", "--full-check-every", "-1")
    assert rc == 2 and "--full-check-every must be >= 0" in err
