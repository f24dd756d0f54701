"""hmtx.hw.flow.floorplan: each lane quad's block RAMs and multipliers are pinned together, legally."""

import json
import re
import shutil

import pytest

from hmtx.hw.flow.floorplan import ECP5_85K, floorplan_engine
from hmtx.hw.flow.nextpnr_hook import main as hook_main

P = 64
E = "bridge.core.engine"


def _bram(width, addr_bit):
    return {"type": "DP16KD", "parameters": {"DATA_WIDTH_A": format(width, "032b")},
            "attributes": {}, "port_directions": {"ADB5": "input", "DOA0": "output"},
            "connections": {"ADB5": [addr_bit], "DOA0": [addr_bit + 1000]}}


def _mult(bit):
    return {"type": "MULT18X18D", "parameters": {}, "attributes": {},
            "port_directions": {"A0": "input", "P0": "output"},
            "connections": {"A0": [bit], "P0": [bit + 1]}}


def _engine_netlist(w_rows=9, lanes=P):
    """The engine's block RAMs as Yosys maps them at P=64: nine w row memories of 16 x 36-bit
    columns, dat as 32 x 18-bit columns, key as 16 x 36-bit columns (int16 lanes), plus small
    memories and the lane and scalar multipliers."""
    cells, bit = {}, 10
    mems = [(f"w{r}", lanes // 4, 36) for r in range(w_rows)] + [("dat", lanes // 2, 18),
                                                                  ("key", lanes // 4, 36)]
    for mem, cols, width in mems:
        for k in range(cols):
            cells[f"{E}.{mem}.0.{k}"] = _bram(width, bit)
            bit += 2
    for small in ("sc", "pm", "lut"):
        cells[f"{E}.{small}.0.0"] = _bram(36, bit)
        bit += 2
    for lane in range(lanes):
        cells[f"{E}.mac.prod{lane}_TRELLIS_FF_Q_{lane % 3}_DI_MULT18X18D_P{lane % 32}"] = _mult(bit)
        bit += 2
    cells[f"{E}.sc0_p1_TRELLIS_FF_Q_30_DI_MULT18X18D_P31"] = _mult(bit)
    return {"modules": {"top": {"attributes": {"top": "00000000000000000000000000000001"},
                                "ports": {}, "cells": cells, "netnames": {}}}}


def _quad_of(name):
    mem, k = re.match(rf"{E}\.(\w+)\.0\.(\d+)$", name).groups()
    k = int(k)
    if mem == "key":       # key lane 2k feeds q lanes 8 (2k // 4) + 2k % 4 (and 4 more)
        return (8 * (2 * k // 4) + 2 * k % 4) // 4
    return {"dat": k * 16 // 8 // 4}.get(mem, k * 32 // 8 // 4)


def _xy(bel):
    x, y, site = re.match(r"X(\d+)/Y(\d+)/(\w+)$", bel).groups()
    return int(x), int(y), site


def _all_bels(geometry):
    ebr = {geometry.bram_bel(y, p) for y in geometry.bram_rows for p in range(geometry.brams_per_row)}
    dsp = {geometry.dsp_bel(y, c, k) for y in geometry.dsp_rows
           for c in range(len(geometry.columns)) for k in range(4)}
    return ebr, dsp


def test_geometry_has_the_parts_block_ram_and_dsp_counts():
    ebr, dsp = _all_bels(ECP5_85K)
    assert len(ebr) == 208 and len(dsp) == 156
    # bel names as nextpnr's placement of this project wrote them (build/.../placed.json)
    assert "X10/Y22/EBR3" in ebr and "X100/Y46/EBR2" in ebr
    assert "X13/Y34/MULT18_0" in dsp and "X106/Y58/MULT18_1" in dsp and "X9/Y58/MULT18_5" in dsp


def _pinned(net, lanes):
    """Floorplan ``net``; check that every lane block RAM and multiplier got its own bel of the
    part; return (cells, {cell: bel}, lane block-RAM names)."""
    counts = floorplan_engine(net)
    cells = net["modules"]["top"]["cells"]
    bels = {n: c["attributes"]["BEL"] for n, c in cells.items() if "BEL" in c["attributes"]}
    lane_brams = [n for n in cells if re.search(r"\.(w\d+|dat|key)\.0\.\d+$", n)]
    assert counts == {"brams": len(lane_brams), "mults": lanes, "quads": lanes // 4}
    assert len(set(bels.values())) == len(bels), "two cells on one bel"
    ebr, dsp = _all_bels(ECP5_85K)
    assert all(b in ebr or b in dsp for b in bels.values())
    return cells, bels, lane_brams


def test_every_lane_quad_is_pinned_together():
    net = _engine_netlist()
    cells, bels, lane_brams = _pinned(net, P)
    # the small memories and the scalar multiplier stay with the placer
    assert not any(s in n for n in bels for s in (".sc.", ".pm.", ".lut.", "sc0_p1"))

    pos_of = {ECP5_85K.bram_bel(y, p): p for y in ECP5_85K.bram_rows
              for p in range(ECP5_85K.brams_per_row)}
    dsp_col_of = {ECP5_85K.dsp_bel(y, c, k): c for y in ECP5_85K.dsp_rows
                  for c in range(len(ECP5_85K.columns)) for k in range(4)}
    by_quad = {}
    for n in lane_brams:
        by_quad.setdefault(_quad_of(n), []).append(bels[n])
    assert sorted(by_quad) == list(range(P // 4))
    for q, qbels in by_quad.items():
        ys = {_xy(b)[1] for b in qbels}
        assert len(ys) == 1, f"quad {q} spread over block-RAM rows {ys}"
        positions = sorted(pos_of[b] for b in qbels)
        assert positions == list(range(positions[0], positions[0] + len(positions))), \
            f"quad {q} not contiguous: {positions}"
        # two neighbouring lane groups (four quads) share a row
        row = ys.pop()
        assert all(_xy(by_quad[p][0])[1] == row for p in range(q & ~3, (q & ~3) + 4))
        mult_bels = [bels[n] for n in cells if (m := re.search(r"mac\.prod(\d+)_", n))
                     and int(m.group(1)) // 4 == q]
        cols = {dsp_col_of[b] for b in mult_bels}
        my = {_xy(b)[1] for b in mult_bels}
        assert len(mult_bels) == 4 and len(cols) == 1, f"quad {q}'s multipliers in several DSP tiles"
        assert my == {ECP5_85K.dsp_row_of[_xy(qbels[0])[1]]}
        # the DSP tile column lies within one column of the quad's block-RAM span
        assert positions[0] // 4 - 1 <= cols.pop() <= positions[-1] // 4 + 1


def test_the_spare_block_rams_of_each_row_are_in_the_middle():
    net = _engine_netlist()
    floorplan_engine(net)
    used = {}
    for c in net["modules"]["top"]["cells"].values():
        bel = c["attributes"].get("BEL", "")
        if "EBR" in bel:
            used.setdefault(_xy(bel)[1], set()).add(bel)
    assert sorted(used) == list(ECP5_85K.bram_rows)
    for y, bels in used.items():
        free = [p for p in range(ECP5_85K.brams_per_row) if ECP5_85K.bram_bel(y, p) not in bels]
        assert free == list(range(free[0], free[0] + len(free))), f"row {y}: spares {free} not together"
        assert 0 < free[0] and free[-1] < ECP5_85K.brams_per_row - 1, f"row {y}: spares {free} at an end"


def test_more_blocks_than_the_rows_hold_are_refused_and_change_nothing():
    net = _engine_netlist(w_rows=16)          # 16 x (16 + 2 + 1) blocks: > 208
    before = json.dumps(net, sort_keys=True)
    with pytest.raises(ValueError, match=r"need \d+ block RAMs; the rows hold 208 .*row y=\d+ would need"):
        floorplan_engine(net)
    assert json.dumps(net, sort_keys=True) == before


@pytest.mark.parametrize("lanes,w_rows", [(32, 18), (16, 36), (8, 72)])
def test_smaller_p_lays_the_quads_along_the_rows(lanes, w_rows):
    """P < 64: a quad's w column is too long for two lane groups per row; the quads go one after
    the other along the rows, in at most two pieces, each piece contiguous, the multipliers by
    the quad's longest piece."""
    net = _engine_netlist(w_rows=w_rows, lanes=lanes)
    cells, bels, lane_brams = _pinned(net, lanes)
    pos_of = {ECP5_85K.bram_bel(y, p): p for y in ECP5_85K.bram_rows for p in range(ECP5_85K.brams_per_row)}
    by_quad = {}
    for n in lane_brams:
        by_quad.setdefault(_quad_of_lanes(n, lanes), []).append(bels[n])
    assert sorted(by_quad) == list(range(lanes // 4))
    rows_used = {}
    for q, qbels in by_quad.items():
        pieces = {}
        for b in qbels:
            pieces.setdefault(_xy(b)[1], []).append(pos_of[b])
        assert len(pieces) <= 2, f"quad {q} in rows {sorted(pieces)}"
        for y, ps in pieces.items():
            ps.sort()
            assert ps == list(range(ps[0], ps[0] + len(ps))), f"quad {q} row {y} not contiguous: {ps}"
            rows_used.setdefault(y, set()).add(q)
        main_row = max(pieces, key=lambda y: len(pieces[y]))
        mult_ys = {_xy(bels[n])[1] for n in cells if (m := re.search(r"mac\.prod(\d+)_", n))
                   and int(m.group(1)) // 4 == q}
        assert mult_ys == {ECP5_85K.dsp_row_of[main_row]}
    # every row carries a share of the blocks
    assert sorted(rows_used) == list(ECP5_85K.bram_rows)


def _quad_of_lanes(name, lanes):
    mem, k = re.match(rf"{E}\.(\w+)\.0\.(\d+)$", name).groups()
    k = int(k)
    if mem == "key":
        from hmtx.hw.engine import key_block_lanes
        B = key_block_lanes(lanes)
        lane = 2 * k
        return (2 * B * (lane // B) + lane % B) // 4
    return k * (16 if mem == "dat" else 32) // 8 // 4


def test_a_netlist_without_the_engine_is_left_alone():
    net = _engine_netlist()
    cells = net["modules"]["top"]["cells"]
    for n in [n for n in cells if ".engine." in n]:
        cells[n.replace(".engine.", ".other.")] = cells.pop(n)
    assert floorplan_engine(net) == {"brams": 0, "mults": 0, "quads": 0}
    assert not any("BEL" in c["attributes"] for c in cells.values())


def test_hook_rewrites_the_netlist_then_runs_the_tool(tmp_path):
    path = tmp_path / "top.json"
    path.write_text(json.dumps(_engine_netlist()))
    # the tool gets nextpnr's arguments unchanged; `true` accepts any
    assert hook_main(["--split", "--floorplan", shutil.which("true"), "--85k", "--json", str(path)]) == 0
    cells = json.loads(path.read_text())["modules"]["top"]["cells"]
    assert sum("BEL" in c["attributes"] for c in cells.values()) == 9 * 16 + 32 + 16 + P
    # the floorplan's geometry is one part's: refused for another, with the reason as an ERROR
    # line in nextpnr's log (where `hmtx synth` reads why a build stopped)
    log = tmp_path / "top.tim"
    assert hook_main(["--floorplan", shutil.which("true"), "--25k", "--json", str(path),
                      "--log", str(log)]) == 1
    assert log.read_text().startswith("ERROR: hmtx.hw.flow.nextpnr_hook: floorplan: it is made for the LFE5U-85F")
    assert hook_main(["--floorplan"]) == 2


def test_hook_reports_a_floorplan_that_does_not_fit(tmp_path):
    from hmtx.hw.flow.synth import diagnose_failure

    net = _engine_netlist()
    cells = net["modules"]["top"]["cells"]
    # twice the lane quads of one block-RAM row (as smollm at P=128 has)
    for n in [n for n in cells if re.search(r"\.(w\d|dat|key)\.0\.\d+$", n)]:
        cells[n + "0"] = json.loads(json.dumps(cells[n]))
    path, log = tmp_path / "top.json", tmp_path / "top.tim"
    path.write_text(json.dumps(net))
    assert hook_main(["--floorplan", shutil.which("false"), "--85k", "--json", str(path),
                      "--log", str(log)]) == 1
    message, details = diagnose_failure(nextpnr_log=log.read_text())
    assert re.match(r"nextpnr failed: ERROR: hmtx.hw.flow.nextpnr_hook: floorplan: the engine's lane memories "
                    r"need \d+ block RAMs; the rows hold 208", message), message


def test_lane_group_regions_follow_the_floorplan():
    """The engine's two-level control copies (one per region, then per lane group) assume the
    floorplan's layout: a region's groups are on one side of the die, in neighbouring rows."""
    from hmtx.hw.engine import lane_group_regions

    net = _engine_netlist()
    floorplan_engine(net)
    cells = net["modules"]["top"]["cells"]
    middle = ECP5_85K.columns[len(ECP5_85K.columns) // 2] + 4
    where = {}                                    # lane group -> (side, block-RAM row index)
    for n, c in cells.items():
        if re.search(r"\.(w\d|dat|key)\.0\.\d+$", n):
            x, y, _ = _xy(c["attributes"]["BEL"])
            where.setdefault(_quad_of(n) // 2, set()).add((int(x >= middle), ECP5_85K.bram_rows.index(y)))
    assert all(len(s) == 1 for s in where.values())
    regions = lane_group_regions(P // 8)
    assert sorted(set(regions)) == [0, 1, 2, 3]
    for r in set(regions):
        spots = [next(iter(where[g])) for g in range(P // 8) if regions[g] == r]
        assert len(spots) == 2 and len({side for side, _ in spots}) == 1, (r, spots)
        assert abs(spots[0][1] - spots[1][1]) == 1, (r, spots)
