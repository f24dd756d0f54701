"""hmtx.hw.flow.netlist: register duplication for block-RAM fanout keeps the logic and splits the load."""

import json

from hmtx.hw.flow.netlist import _bram_columns, split_bram_fanout


def _ff(d, q):
    return {"type": "TRELLIS_FF", "parameters": {"GSR": "DISABLED", "CEMUX": "1"}, "attributes": {},
            "port_directions": {"CLK": "input", "DI": "input", "Q": "output", "LSR": "input"},
            "connections": {"CLK": [2], "DI": [d], "Q": [q], "LSR": ["0"]}}


def _bram(addr, do):
    return {"type": "DP16KD", "parameters": {}, "attributes": {},
            "port_directions": {"ADB5": "input", "CLKB": "input", "DOA0": "output"},
            "connections": {"ADB5": [addr], "CLKB": [2], "DOA0": [do]}}


def _lut(ins, out):
    return {"type": "LUT4", "parameters": {}, "attributes": {},
            "port_directions": {"A": "input", "B": "input", "Z": "output"},
            "connections": {"A": [ins[0]], "B": [ins[1]], "Z": [out]}}


def _netlist(rows, cols):
    """An address register driving a rows x cols memory (row-major block names, as Yosys
    writes them); the blocks of a column meet in one read multiplexer LUT per column."""
    cells = {"addr_ff": _ff(3, 10), "other": _lut([10, 10], 11)}
    bit = 100
    col_outs = {c: [] for c in range(cols)}
    for r in range(rows):
        for c in range(cols):
            cells[f"mem.0.{r * cols + c}"] = _bram(10, bit)
            col_outs[c].append(bit)
            bit += 1
    for c in range(cols):
        if rows > 1:
            cells[f"mux{c}"] = _lut(col_outs[c][:2], 500 + c)
    return {"modules": {"top": {"attributes": {"top": "00000000000000000000000000000001"},
                                "ports": {}, "cells": cells, "netnames": {"addr": {"bits": [10]}}}}}


def _sinks(top, bit):
    return sorted(n for n, c in top["cells"].items()
                  if any(bit in bits for p, bits in c["connections"].items()
                         if c["port_directions"].get(p) == "input"))


def test_columns_are_found_from_shared_read_multiplexers():
    for rows, cols in ((3, 4), (1, 6)):
        top = _netlist(rows, cols)["modules"]["top"]
        sinks = {}
        for n, c in top["cells"].items():
            for p, bits in c["connections"].items():
                if c["port_directions"].get(p) == "input":
                    for b in bits:
                        sinks.setdefault(b, set()).add(n)
        got = _bram_columns(top["cells"], sinks)
        assert {name: col for name, (_, col, _) in got.items()} == \
            {f"mem.0.{r * cols + c}": c for r in range(rows) for c in range(cols)}


def test_split_copies_the_register_per_column_cluster_and_rewires_only_block_rams():
    net = _netlist(rows=3, cols=16)
    before = json.loads(json.dumps(net))
    counts = split_bram_fanout(net, clusters=8)
    top = net["modules"]["top"]
    # 16 columns in 8 clusters of 2: the original keeps one cluster (and the LUT), 7 copies
    assert counts == {"nets": 1, "copies": 7}
    dups = [n for n in top["cells"] if "$bramdup$" in n]
    assert len(dups) == 7
    seen = set()
    for d in dups:
        c = top["cells"][d]
        orig = before["modules"]["top"]["cells"]["addr_ff"]
        assert c["type"] == "TRELLIS_FF" and c["parameters"] == orig["parameters"]
        assert {p: v for p, v in c["connections"].items() if p != "Q"} == \
               {p: v for p, v in orig["connections"].items() if p != "Q"}
        q = c["connections"]["Q"][0]
        users = _sinks(top, q)
        cols = {int(u.rsplit(".", 1)[1]) % 16 for u in users}
        assert len(users) == 6 and len(cols) == 2 and max(cols) - min(cols) == 1, users
        seen |= set(users)
    kept = _sinks(top, 10)
    assert "other" in kept and len([k for k in kept if k.startswith("mem")]) == 6
    assert len(seen) + 6 == 48     # every block RAM driven by exactly one copy


def test_a_register_feeding_one_column_is_left_alone():
    net = _netlist(rows=4, cols=1)
    assert split_bram_fanout(net, clusters=8) == {"nets": 0, "copies": 0}


def test_region_split_gives_the_register_above_the_clusters_one_copy_per_region():
    from hmtx.hw.flow.netlist import split_by_region

    # addr_ff -> four cluster registers -> block RAMs pinned in two regions (two each),
    # plus one LUT sink with no region
    cells = {"addr_ff": _ff(3, 10), "other": _lut([10, 10], 11)}
    for k in range(4):
        cells[f"clu{k}"] = _ff(10, 20 + k)
        for j in range(2):
            bram = _bram(20 + k, 100 + 2 * k + j)
            bram["attributes"]["BEL"] = f"X{4 + 70 * (k % 2) + 2 * j}/Y22/EBR{j}"
            cells[f"mem{k}.0.{j}"] = bram
    cells["mixed"] = _ff(10, 30)               # sinks in both regions: no region of its own
    for j, x in enumerate((4, 80)):
        bram = _bram(30, 200 + j)
        bram["attributes"]["BEL"] = f"X{x}/Y46/EBR0"
        cells[f"mix.0.{j}"] = bram
    net = {"modules": {"top": {"attributes": {"top": "1"}, "ports": {}, "cells": cells,
                               "netnames": {"addr": {"bits": [10]}}}}}
    counts = split_by_region(net, lambda bel: int(bel.split("/")[0][1:]) // 62)
    assert counts == {"nets": 1, "copies": 1}
    top = net["modules"]["top"]
    dup = [n for n in top["cells"] if "$regiondup$" in n]
    assert len(dup) == 1
    q = top["cells"][dup[0]]["connections"]["Q"][0]
    assert top["cells"][dup[0]]["connections"]["DI"] == [3]
    moved, kept = _sinks(top, q), _sinks(top, 10)
    # one region's two cluster registers move to the copy; the other region's, the LUT and the
    # register without a region stay
    assert moved in (["clu0", "clu2"], ["clu1", "clu3"])
    assert sorted(set(kept) - set(moved)) == sorted({"clu0", "clu1", "clu2", "clu3"} - set(moved) | {"other", "mixed"})
    # nothing to split: a second pass copies nothing more
    assert split_by_region(net, lambda bel: int(bel.split("/")[0][1:]) // 62) == {"nets": 0, "copies": 0}


def test_columns_of_a_three_deep_memory_are_found_through_its_multiplexer():
    """dat at P=16 as Yosys maps it: each column three blocks deep, blocks 0 and 16 of a column
    into two LUTs, block 8 with those LUTs' outputs into a PFUMX: no block shares a reader with
    block 0 at the count of columns (8), only at 16; the two-level reach finds the columns."""
    rows, cols = 3, 8
    cells = {}
    for r in range(rows):
        for c in range(cols):
            cells[f"mem.0.{r * cols + c}"] = _bram(10, 100 + r * cols + c)
    for c in range(cols):
        a, b, d = 100 + c, 100 + cols + c, 100 + 2 * cols + c
        cells[f"lut_a{c}"] = _lut([a, d], 300 + c)
        cells[f"lut_b{c}"] = _lut([a, d], 320 + c)
        cells[f"mux{c}"] = {"type": "PFUMX", "parameters": {}, "attributes": {},
                            "port_directions": {"ALUT": "input", "BLUT": "input", "C0": "input", "Z": "output"},
                            "connections": {"ALUT": [300 + c], "BLUT": [320 + c], "C0": [b], "Z": [340 + c]}}
        cells[f"q{c}"] = _ff(340 + c, 360 + c)
    sinks = {}
    for n, c in cells.items():
        for p, bits in c["connections"].items():
            if c["port_directions"].get(p) == "input":
                for bit in bits:
                    sinks.setdefault(bit, set()).add(n)
    got = _bram_columns(cells, sinks)
    assert {n: (col, total) for n, (_, col, total) in got.items()} == \
        {f"mem.0.{r * cols + c}": (c, cols) for r in range(rows) for c in range(cols)}
