"""`hmtx bench`: the quick suite writes well-formed, consistent JSON; the consistency checker and
the statistics catch what they must; one memory point measures a real peak."""

import json
import math
from pathlib import Path

import pytest

from hmtx.bench import stats, validate


def test_summarize_median_and_quartiles():
    s = stats.summarize([5, 1, 4, 2, 3])
    assert (s.median, s.q1, s.q3, s.min, s.max, s.n) == (3, 2, 4, 1, 5, 5)
    inv = s.inverted(60)
    assert inv.median == 20 and inv.min == 12 and inv.max == 60 and inv.q1 == 15 and inv.q3 == 30
    assert stats.fmt_stat(s, ".0f") == "3 [2–4]"
    with pytest.raises(ValueError, match="no samples"):
        stats.summarize([])


def test_time_calls_measures_a_known_sleep():
    import time
    s = stats.time_calls(lambda: time.sleep(0.002), repeats=3, inner=2)
    assert 0.002 <= s.median < 0.2 and s.n == 3


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `hmtx bench --quick` run through the CLI (shared by the checks below)."""
    from hmtx.host.cli import main

    out = tmp_path_factory.mktemp("bench")
    path = out / "bench.json"
    rc = main(["bench", "--json", str(path), "--quick", "--plots", str(out / "plots"),
               "--markdown", str(out / "bench.md")])
    with open(path) as f:
        return rc, json.load(f), out


def test_quick_bench_json_is_consistent(quick):
    rc, res, _ = quick
    assert validate.problems(res) == [], validate.problems(res)
    assert rc == 0
    tiny = res["device"]["tiny"]
    for op in ("recall", "write"):
        e = tiny[op]
        assert e["cycles"] >= e["ideal"] > 0
        assert 0 < e["utilization"] <= 100
        assert math.isclose(e["utilization"], 100 * e["ideal"] / e["cycles"])
    # tiny: d=24, d_h=8, N=4, P=4 -> ideal recall ceil((24*8 + 4*8 + 4*24) / 4) = 80, write 48
    assert tiny["recall"]["ideal"] == 80 and tiny["write"]["ideal"] == 48
    assert res["us_per_recall"]["torch_cpu"] > 0
    assert res["run_tokens_per_s"]["golden"] > 0
    assert res["run_tokens_per_s"]["sim"] is None and "run_tokens_per_s.sim" in res["reasons"]
    assert isinstance(res["machine"], str) and "cores" in res["machine"]
    assert {(r["N"], r["P"]) for r in res["device_sweep"]} == {(8, 4), (4, 8)}
    # the tiny backbone's sizes (L = 24, k = 4: j = 9) on tiny's 4 x 8 tiles
    a = res["attention"]
    assert [(b["what"], b["positions"]) for b in a["blocks"]] == [("segment pass", 24), ("representation pass", 11)]
    assert a["attention_utilization"] == tiny["attention"]["ideal"] / tiny["attention"]["cycles"]
    assert a["per_segment"]["torch_cpu_head_us"] > 0 and a["per_segment"]["ideal_cycles"] > 0


def test_quick_bench_writes_tables_and_plots(quick):
    _, res, out = quick
    md = (out / "bench.md").read_text()
    assert res["date"] in md and "Device efficiency" in md and "| tiny |" in md
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "utilization.png" in pngs and "recall_us.png" in pngs and "run_time_split.png" in pngs
    for p in (out / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("n", [1, 4, 11, 24, 37])
def test_attention_plan_counts_what_the_golden_device_counts(n):
    """bench.attention_speed's plan of a causal head (ops, ideal cycles) is what the host sends
    and the golden device's CYCLES adds up, op by op."""
    import numpy as np
    from hmtx.bench.attention_speed import head_plan
    from hmtx.host.attention_tiles import CheckedAttention
    from hmtx.host.backends import GoldenTransport
    from hmtx.host.device import Device
    from hmtx.host.runtime import CheckedDevice
    from hmtx.model import fixed, protocol
    from hmtx.model.configs import get_config
    from hmtx.model.golden_device import GoldenDevice

    cfg = get_config("tiny")
    g = GoldenDevice(cfg, version=protocol.VERSIONS[1])
    att = CheckedAttention(CheckedDevice(Device(GoldenTransport(cfg, g), cfg), cfg))
    rng = np.random.default_rng(n)
    q, k, v = ((rng.integers(-127, 128, (n, cfg.head_dim)), rng.integers(-8, 2, n)) for _ in range(3))
    att.head(*q, *k, *v, fixed.causal_mask(n, n))
    plan = head_plan(cfg, n)
    assert (att.ops, g.cycles.total) == (plan["ops"], plan["ideal_cycles"])


def _sound():
    op = {"cycles": 100, "ideal": 80, "utilization": 80.0}
    return {"device": {"x": {"recall": dict(op), "write": dict(op)}}, "fmax_mhz": {"x": None},
            "us_per_recall": {"device": None, "torch_cpu": 12.0, "torch_cuda": None},
            "sim_cycles_per_s": 5e4, "run_tokens_per_s": {"golden": 3.0, "sim": None},
            "machine": "cpu, 2 cores",
            "reasons": {"us_per_recall.device": "not synthesized yet", "us_per_recall.torch_cuda": "no GPU",
                        "run_tokens_per_s.sim": "skipped"}}


@pytest.mark.parametrize("breakage, message", [
    (lambda r: r["device"]["x"]["recall"].update(cycles=70, utilization=100 * 80 / 70), "< ideal"),
    (lambda r: r["device"]["x"]["write"].update(utilization=95.0), "!= 100 * ideal / cycles"),
    (lambda r: r.update(sim_cycles_per_s=-1.0), "sim_cycles_per_s"),
    (lambda r: r.update(sim_cycles_per_s=None), "without a reason"),
    (lambda r: r["reasons"].pop("us_per_recall.device"), "us_per_recall.device is null without a reason"),
    (lambda r: r["run_tokens_per_s"].update(golden=float("nan")), "run_tokens_per_s.golden"),
    (lambda r: r.pop("machine"), "missing key 'machine'"),
])
def test_validate_catches_inconsistencies(breakage, message):
    assert validate.problems(_sound()) == []
    r = _sound()
    breakage(r)
    bad = validate.problems(r)
    assert any(message in b for b in bad), bad


def test_quick_bench_of_contract_2_measures_the_contract_2_engine(tmp_path, capsys):
    """`hmtx bench --contract 2`: the cycles are the contract-2 engine's (its recall formula,
    docs/hardware.md), the ideal its 2·n·d / P, the golden recall `fixed.recall_folded`; and it
    refuses to merge into a JSON of contract 1."""
    from hmtx.host.cli import main
    from hmtx.model.configs import get_config
    from hmtx.sim.perf import cycles_per_recall
    path = tmp_path / "c2.json"
    assert main(["bench", "--json", str(path), "--quick", "--contract", "2"]) == 0
    res = json.loads(path.read_text())
    tiny, cfg = res["device"]["tiny"], get_config("tiny")
    assert res["contract"] == 2 and "contract 2" in capsys.readouterr().out
    assert tiny["recall"]["cycles"] == cycles_per_recall(cfg, contract=2)
    assert tiny["recall"]["ideal"] == math.ceil(2 * cfg.n_slots * cfg.d / cfg.lanes)
    assert res["recall_speed"]["tiny"]["golden_numpy_us"]["median"] > 0
    # a result of some sections stands on its own: only their keys are required
    part = tmp_path / "part.json"
    assert main(["bench", "--json", str(part), "--quick", "--only", "device", "--contract", "2"]) == 0
    assert validate.problems(json.loads(part.read_text())) == []
    c1 = tmp_path / "c1.json"
    c1.write_text(json.dumps({"contract": 1, "device": {}}))
    assert main(["bench", "--json", str(c1), "--quick", "--only", "device", "--contract", "2"]) == 2
    assert "holds contract 1's results" in capsys.readouterr().err


def test_bench_rejects_bad_arguments(tmp_path, capsys):
    from hmtx.host.cli import main
    assert main(["bench", "--json", str(tmp_path / "x.json"), "--only", "device,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["bench", "--json", str(tmp_path / "x.json"), "--lengths", "12,abc"]) == 2


def test_memory_point_reports_a_real_peak():
    """One point in its own process, as the sweep runs it: the peak covers the loaded model and
    at least the logits tensor the pass must hold (2048 positions x 257 x 4 bytes = 2 MiB)."""
    from hmtx.bench import memory

    (p,) = memory.run_points("tiny", [2048], modes=("full",), timeout_s=120)
    assert "error" not in p, p
    assert p["mode"] == "full" and p["length"] == 2048 and p["segments"] == 1
    assert p["peak_rss_mb"] >= p["baseline_rss_mb"] > 10
    assert p["growth_mb"] >= 2048 * 257 * 4 / 2**20


def test_memory_point_rejects_bad_input(tmp_path):
    import numpy as np

    from hmtx.bench import memory

    ids = tmp_path / "ids.npy"
    np.save(ids, np.arange(64, dtype=np.int32))
    with pytest.raises(ValueError, match="unknown memory mode"):
        memory.measure_point("bogus", 16, "tiny", str(ids))
    with pytest.raises(ValueError, match="needs 128"):
        memory.measure_point("full", 128, "tiny", str(ids))


def test_cuda_parity_replay_snapshots_each_segment_and_catches_one_flipped_bit():
    """bench/cuda_parity's CPU replay (what a GPU run is compared with): per-segment snapshots of
    the wrapped ring must not alias the live cache, and one changed integer must be reported."""
    import torch

    from hmtx.bench import cuda_parity
    from hmt_testlib import SEED

    g = torch.Generator().manual_seed(SEED)
    d, d_h, segs = 24, 8, 7
    w_q, w_k = torch.randn(d, d_h, generator=g), torch.randn(d, d_h, generator=g)
    m = [torch.randn(d, generator=g) for _ in range(segs)]
    s = [None, None] + [torch.randn(d, generator=g) for _ in range(segs - 2)]
    a = cuda_parity.replay(w_q, w_k, s, m, 3, "cpu")
    b = cuda_parity.replay(w_q, w_k, s, m, 3, "cpu")
    assert cuda_parity._diff(a, b) == []
    # Slot 0 after segment 0 holds M_0, although segment 3 overwrote that slot later.
    assert a["m_mant.0"].shape == (1, d) and not torch.equal(a["m_mant.0"][0], a["m_mant.6"][0])
    assert sorted(k for k in a if k.startswith("p.")) == [f"p.{n}" for n in range(2, segs)]
    b["probs.4"] = b["probs.4"].clone()
    b["probs.4"][0] += 2.0 ** -15
    assert cuda_parity._diff(a, b) == ["probs.4"], f"seed {SEED}"


def test_slack_histogram_counts_the_bins_nextpnr_drew():
    from hmtx.bench import slack_histogram

    log = ("Info: Max frequency for clock '$glbnet$clk': 54.39 MHz (FAIL at 100.00 MHz)\n\n"
           "Info: Slack histogram:\nInfo:  legend: * represents 10 endpoint(s)\n"
           "Info:          + represents [1,10) endpoint(s)\n"
           "Info: [ -5000,  -4000) |**+\nInfo: [ -4000,  -2000) |***\n"
           "Info: [ -2000,   1000) |***+\nInfo: [  1000,   4000) |*****\nInfo: Checksum: 0x1\n")
    s = slack_histogram.summarise(log)
    assert s["fmax_mhz"] == [54.39] and s["worst_ps"] == -5000
    assert s["endpoints"] == 25 + 30 + 35 + 50
    assert s["short_by_4ns"] == 25 and s["short_by_2ns"] == 55
    assert s["failing"] == 25 + 30 + round(35 * 2000 / 3000)
    with pytest.raises(ValueError, match="no 'Slack histogram'"):
        slack_histogram.summarise("Info: Program finished normally.\n")


def test_placed_arcs_ranks_nets_by_the_ecp5_distance_estimate():
    from hmtx.bench import placed_arcs

    def cell(kind, bel, conns):
        return {"type": kind, "attributes": {"NEXTPNR_BEL": bel, "src": f"x.py:{len(bel)}"},
                "port_directions": {p: d for p, (d, _) in conns.items()},
                "connections": {p: [b] for p, (_, b) in conns.items()}}

    net = {"modules": {"top": {"attributes": {"top": 1}, "cells": {
        "ff_a": cell("TRELLIS_FF", "X10/Y10/SLICEA", {"Q": ("output", 5)}),
        "near": cell("TRELLIS_COMB", "X11/Y10/SLICEA", {"A": ("input", 5), "F": ("output", 6)}),
        "far": cell("TRELLIS_COMB", "X70/Y50/SLICEB", {"A": ("input", 5)}),
        "ff_b": cell("TRELLIS_FF", "X11/Y11/SLICEC", {"DI": ("input", 6)}),
    }}}}
    rows = placed_arcs.net_arcs(net)
    assert [r[3] for r in rows] == ["ff_a", "near"]
    assert rows[0][1] == 2 and rows[0][6] == "far"
    # 60 x 40 tiles: 3 + 55 + 35 + 2 * (5 + 5) units of 120 ps
    assert abs(rows[0][0] - 0.120 * (3 + 55 + 35 + 20)) < 1e-9
    assert abs(rows[1][0] - 0.120 * (3 + 2 * 1)) < 1e-9


def test_routed_nets_groups_late_register_inputs_by_signal():
    """On a real excerpt of nextpnr's detailed timing report (smollm, 85.32 MHz)."""
    from hmtx.bench import routed_nets

    data = Path(__file__).parent / "data" / "synth_logs"
    report = json.loads((data / "ecp5_smollm_routed_nets.json").read_text())
    netlist = json.loads((data / "ecp5_smollm_routed_cells.json").read_text())
    rows = routed_nets.endpoints(report, routed_nets.register_inputs(netlist))
    assert rows == sorted(rows, key=lambda r: -r[0])
    # the worst endpoint: ex1's input, on a net driven from pr1's register logic
    assert rows[0][1].startswith("bridge.core.engine.ex1") and abs(rows[0][0] - 11.54) < 0.01
    groups = {sig: (n, worst) for n, worst, sig in routed_nets.failing_by_signal(rows, 10.0)}
    # the three write-data bits of one block RAM count as one signal; early FIFO registers do not fail
    assert groups["bridge.core.engine.wm.0.0"][0] == 3
    assert set(groups) == {"bridge.core.engine.ex1", "bridge.core.engine.pr1", "bridge.core.engine.wm.0.0",
                           "bridge.core.engine.sc0_ke"}
    assert not routed_nets.failing_by_signal(rows, 12.0)
    assert routed_nets.signal_of("bridge.core.engine.w0_wr_en_d1_TRELLIS_FF_Q_49") == "bridge.core.engine.w0_wr_en_d1"
    with pytest.raises(ValueError, match="detailed-timing"):
        routed_nets.endpoints({"fmax": {}})


def test_quick_bench_link_section(quick):
    """The link: the divisor table at the boards' clocks and the per-segment model at 1 Mbaud and
    the default rate (bench/link.py)."""
    _, res, out = quick
    div = {(r["board"], r["baud"]): r for r in res["link_divisors"]}
    assert div[("ulx3s-85f", 3_000_000)]["divisor"] == 33 and div[("icebreaker", 3_000_000)]["divisor"] == 8
    assert div[("ulx3s-85f", 12_000_000)]["divisor"] is None            # < 4 clocks per bit
    by_baud = {m["baud"]: m for m in res["link"] if m["config"] == "tiny"}
    slow, fast = by_baud[1_000_000], by_baud[3_000_000]
    assert slow["bytes"] == fast["bytes"] and fast["work_s"] < slow["work_s"]
    assert math.isclose(slow["work_wire_s"], 3 * fast["work_wire_s"])
    assert res["link_measured"] is None and "link_measured" in res["reasons"]
    assert "### The link" in (out / "bench.md").read_text()
    import copy
    broken = copy.deepcopy(res)
    broken["link"][0]["work_s"] = broken["link"][0]["work_wire_s"] / 2      # less than its wire time
    assert any(p.startswith("link[") for p in validate.problems(broken))


def test_link_model_overlapped_write_hides_only_the_write():
    """The overlapped schedule (bench/link.py): the posted WRITE_MEMORY's wire + device time is
    hidden up to the representation pass's length; the RECALL and the cache check stay."""
    from hmtx.bench import link as lk
    from hmtx.model.configs import get_config
    cfg = get_config("smollm")
    tr = lk.segment_traffic(cfg)
    cyc = {"recall": 3636, "write": 2328}
    for baud in (1_000_000, 3_000_000):
        blocking = lk.link_model(cfg, baud, 100e6, cyc, tr)
        assert "overlap_segment_s" not in blocking
        assert math.isclose(blocking["recall_s"] + blocking["write_s"], blocking["work_s"])
        assert math.isclose(blocking["write_s"], tr["ops"]["WRITE_MEMORY"]["out"] * 1e-5 * 1e6 / baud
                            + tr["ops"]["WRITE_MEMORY"]["in"] * 1e-5 * 1e6 / baud + 2328 / 100e6)
        long = lk.link_model(cfg, baud, 100e6, cyc, tr, representation_s=0.1)
        assert math.isclose(long["overlap_work_s"], long["recall_s"])                 # the whole write hidden
        assert math.isclose(long["overlap_segment_s"], long["segment_s"] - long["write_s"])
        assert math.isclose(long["overlap_segment_written_s"], long["recall_s"] + long["check_written_s"])
        short = lk.link_model(cfg, baud, 100e6, cyc, tr, representation_s=long["write_s"] / 4)
        assert math.isclose(short["overlap_hidden_s"], long["write_s"] / 4)
        assert validate._link_problems({"link": [long, short], "link_measured": None,
                                        "reasons": {"link_measured": "x"}}) == []
        broken = dict(long, overlap_segment_s=long["segment_s"] - 2 * long["write_s"])
        assert validate._link_problems({"link": [broken], "link_measured": None, "reasons": {"link_measured": "x"}})


def test_link_model_default_schedule_without_probabilities():
    """`hmtx run`'s default since protocol 1.2 (bench/link.py): RECALL without the probabilities,
    the written slot checked, the whole cache every K segments instead, spread over them."""
    from hmtx.bench import link as lk
    from hmtx.model.configs import get_config
    cfg = get_config("smollm")
    tr = lk.segment_traffic(cfg)
    ops = tr["ops"]
    # the flags byte out, the 2 x 64 probability bytes back no more (a probability byte may be escaped)
    assert ops["RECALL_NOPROBS"]["out"] == ops["RECALL"]["out"] + 1
    assert 2 * cfg.n_slots <= ops["RECALL"]["in"] - ops["RECALL_NOPROBS"]["in"] <= 4 * cfg.n_slots
    cyc = {"recall": 3636, "write": 2328}
    for k in (16, 1, 0):
        m = lk.link_model(cfg, 3_000_000, 100e6, cyc, tr, host_s_per_segment=2.0, representation_s=0.1,
                          full_check_every=k)
        assert math.isclose(m["default_recall_s"], (ops["RECALL_NOPROBS"]["out"] + ops["RECALL_NOPROBS"]["in"])
                            * 10 / 3e6 + 3636 / 100e6)
        assert m["default_write_s"] == 0                                   # hidden behind 0.1 s
        whole, written = m["check_s"], m["check_written_s"]
        want = {16: (15 * written + whole) / 16, 1: whole, 0: written}[k]
        assert math.isclose(m["default_check_s"], want)
        assert math.isclose(m["wait_share_default"], m["default_segment_s"] / (2.0 + m["default_segment_s"]))
        assert m["s_p_floor_s"] == (1 + cfg.d + 2 + 2 * cfg.d) * 10 / 3e6
        assert validate._link_problems({"link": [m], "link_measured": None, "reasons": {"link_measured": "x"}}) == []
    assert validate._link_problems({"link": [dict(m, default_recall_s=m["s_p_floor_s"] / 2)], "link_measured": None,
                                    "reasons": {"link_measured": "x"}})
