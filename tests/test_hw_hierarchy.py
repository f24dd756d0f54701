"""Per-module costs (hmtx.hw.flow.hierarchy): parsed from a saved real ``-noflatten`` statistics
file of the up5k HmtxTop build, and one real Yosys run on a small core."""

import os
import re

import pytest

from hmtx.hw.flow.hierarchy import costs_table, module_costs, parse_hierarchy_stat, run_hierarchy
from hmtx.model.paths import REPO

ROOT = str(REPO)
SAVED = os.path.join(ROOT, "tests", "data", "synth_logs", "ice40_up5k_hmtx_hierarchy", "hierarchy_stat.txt")


def _saved():
    with open(SAVED) as f:
        return f.read()


def _flat_totals(text):
    """The whole design's primitive counts as Yosys itself sums them (its last block)."""
    tail = text[text.index("=== design hierarchy ==="):]
    return {c: int(n) for n, c in re.findall(r"^\s+(\d+)\s+(SB_[A-Z0-9_]+)\s*$", tail, re.M)}


def test_module_sums_agree_with_yosys_totals():
    text = _saved()
    modules = parse_hierarchy_stat(text)
    assert "top" in modules and "top.bridge.core.engine.mac" in modules
    flat = _flat_totals(text)
    # the subtree of "top" adds up, cell type by cell type, to Yosys's own design totals
    for cell, n in flat.items():
        assert sum(m.get(cell, 0) for m in modules.values()) == n, cell
    costs = module_costs(modules, "ice40")
    top = costs["top"]["total"]
    assert top["lut"] == flat["SB_LUT4"] and top["carry"] == flat["SB_CARRY"]
    assert top["ff"] == sum(n for c, n in flat.items() if c.startswith("SB_DFF"))
    assert top["bram"] == flat.get("SB_RAM40_4K", 0)
    # a subtree is its own cells plus its children's
    eng = costs["top.bridge.core.engine"]
    children = [p for p in costs if p.startswith("top.bridge.core.engine.")]
    assert eng["total"]["lut"] == eng["own"]["lut"] + sum(costs[p]["own"]["lut"] for p in children)
    assert costs["top.bridge.core.engine.mac"]["total"]["lut"] > 0


def test_table_lists_the_big_modules_in_hierarchy_order():
    costs = module_costs(parse_hierarchy_stat(_saved()), "ice40")
    whole = costs["top"]["total"]["lut"]
    table = costs_table(costs, depth=6, min_share=0.05, markdown=True)
    rows = table.splitlines()[2:]
    names = [r.split("|")[1].replace("&nbsp;", "").strip() for r in rows]
    assert names[:2] == ["top", "bridge"] and rows[0].rstrip().endswith("| 100.0 |")
    assert {"core", "engine", "mac"} <= set(names)
    for r in rows:
        assert float(r.rstrip(" |").rsplit("|", 1)[-1]) >= 5.0
    big = [p for p in costs if p.count(".") < 6 and costs[p]["total"]["lut"] >= 0.05 * whole]
    assert len(rows) == len(big)
    # the text form: one line per row under a header, the engine indented below the core
    text = costs_table(costs, depth=6, min_share=0.05).splitlines()
    assert text[0].split()[:2] == ["module", "lut"] and len(text) == len(rows) + 1
    core = next(line for line in text if line.strip().startswith("core "))
    engine = next(line for line in text if line.strip().startswith("engine "))
    assert len(engine) - len(engine.lstrip()) == len(core) - len(core.lstrip()) + 2


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no '=== module ===' sections"):
        parse_hierarchy_stat("Printing statistics.\n")
    with pytest.raises(ValueError, match="unknown family"):
        module_costs({"top": {}}, "xc7")
    with pytest.raises(ValueError, match="no top module"):
        costs_table({"a.b": {"own": {"lut": 1}, "total": {"lut": 1}}})


@pytest.mark.parametrize("family,opts", [("ice40", []), ("ecp5", ["-nolutram"])])
def test_real_yosys_run_on_a_small_core(family, opts):
    from amaranth.back import rtlil

    from hmtx.hw.board import UartBridge, EchoCore
    from hmtx.hw.flow.synth import tool_env

    out = os.path.join("build", "test_hierarchy", family)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "top.il"), "w") as f:
        f.write(rtlil.convert(UartBridge(EchoCore(lanes=2), 12e6, 1_000_000), name="top"))
    costs = module_costs(run_hierarchy(out, family, opts, yosys=tool_env()["YOSYS"]), family)
    assert {"top", "top.core", "top.uart_rx", "top.uart_tx"} <= set(costs)
    assert costs["top"]["total"]["lut"] == sum(c["own"]["lut"] for c in costs.values())
    assert costs["top.core"]["total"]["lut"] > 0 and costs["top.uart_rx"]["total"]["ff"] > 0
    # every primitive Yosys left has its resource
    assert costs["top"]["total"]["other"] == 0, costs["top"]
