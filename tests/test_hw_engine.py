"""Engine (memories + sequencer + MAC) vs hmtx.model.fixed (tests/engine_testlib.py: writes that
wrap the ring, recalls and attention tiles, garbage in every padding lane), on configs whose
loops have partial blocks, several lane groups and interleaved key words."""

import collections
import re

import pytest
from amaranth.back import rtlil

from hmtx.hw.engine import Engine
from hmtx.model.configs import CONFIGS, EngineConfig
from engine_testlib import check_engine_against_golden

# d, d_h and head_dim not multiples of P: every loop has a partial last block
ODD = EngineConfig("odd20", d=20, d_h=12, n_slots=3, lanes=8, head_dim=12, max_queries=3, max_keys=5)
# P=16: two lane groups (hw/fanout.py's per-group control copies), partial blocks again
WIDE = EngineConfig("wide16", d=40, d_h=20, n_slots=3, lanes=16, head_dim=20, max_queries=2, max_keys=4)
# 32 lanes: key words interleave q's halves in blocks of 4 lanes (Engine.KBL = 4 < KP = 16), and
# d_h = 40 leaves the last q word's second half with no element at all
WIDE32 = EngineConfig("wide32", d=40, d_h=40, n_slots=2, lanes=32, head_dim=20, max_queries=2, max_keys=3)


# wide16 also stores ``w`` in rows of 16 words (8 rows, the last partial), as smollm's 4608
# words are stored in 9 rows of 512
@pytest.mark.parametrize("config,extreme,w_rows", [(CONFIGS["tiny"], False, 512), (ODD, False, 512), (ODD, True, 512),
                                                   (WIDE, False, 16), (WIDE32, False, 512)],
                         ids=["tiny", "odd20", "odd20-extreme", "wide16", "wide32"])
@pytest.mark.parametrize("contract", [1, 2])
def test_engine_matches_golden(config, extreme, w_rows, contract):
    dut = Engine(config, w_row_depth=w_rows, contract=contract)
    assert len(dut.w_rows) == -(-2 * config.d_h * dut.CB // w_rows)
    collisions = ([("dat", dut._dat_r, dut._dat_w), ("wm", dut.softmax.wm_r, dut.softmax.wm_w),
                   ("sc", dut.softmax.sc_r, dut.softmax.sc_w)]
                  + ([("key", dut._key_r, dut._key_w)] if contract == 1 else [])
                  + [(f"w{k}", rp, wp) for k, (rp, wp) in enumerate(zip(dut._w_r, dut._w_w))])
    check_engine_against_golden(dut, config, extreme=extreme, seed=20, collisions=collisions, contract=contract)


def test_floorplan_names_stay_at_the_engine():
    """hw/flow/floorplan.py finds the lane block RAMs as ``engine.dat``, ``engine.key``,
    ``engine.w<r>`` and the lane multipliers as ``engine.mac.prod<l>``: those stay directly in
    the engine (the units reach the memories through ports), the unit memories in their units."""
    dut = Engine(WIDE, w_row_depth=16)
    text = rtlil.convert(dut, name="engine")
    where, module, wires = {}, None, collections.defaultdict(set)
    for line in text.splitlines():
        if line.startswith("module "):
            module = line.split()[1].lstrip("\\")
        elif line.lstrip().startswith(("memory ", "wire ")):
            name = line.split()[-1].lstrip("\\")
            if line.lstrip().startswith("memory "):
                where[name] = module
            else:
                wires[module].add(name)
    rows = [f"w{r}" for r in range(len(dut.w_rows))]
    assert len(rows) == 8 and all(where[n] == "engine" for n in ["dat", "key", *rows])
    assert {where[n] for n in ("sc", "pm", "wm", "lut")} == {"engine.softmax"}
    assert where["oexp"] == "engine.exps"
    assert {f"prod{l}" for l in range(dut.P)} <= wires["engine.mac"]
    assert re.search(r"^module \\engine\.score$", text, re.M) and "sc0_p1" in wires["engine.score"]
