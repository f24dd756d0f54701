"""Register duplication on the synthesized ECP5 netlist, before nextpnr places it.

A wide memory is many DP16KD side by side (a 512-bit word of ``w`` is 16 block RAM columns, 9
rows deep), and every block of it takes the same address and write-data bits. One register
driving 144 block RAMs spread over the die's block-RAM rows cannot meet 10 ns wherever it is
placed. The RTL cannot duplicate that register itself -- one memory port has one address --
and Yosys would merge duplicated registers anyway. So, as vendor flows do in physical
synthesis, this pass copies each flip-flop (``TRELLIS_FF``) that drives block RAM inputs of
several columns: one copy per cluster of adjacent columns, each copy driving only its
cluster's block RAMs (the original keeps every other sink). A copy has the original's D,
clock, enable, reset and parameters, so the logic is unchanged.

Block RAM columns: Yosys names the blocks of a memory ``<memory>.0.<k>`` in row-major order,
``k = row * columns + column``. The column count is found from the netlist: the blocks of one
column feed the same read-data multiplexers, so the smallest stride c with blocks k and k + c
sharing a read-data sink is the column count (no sharing: one row, every block a column).
"""

import copy
from collections import defaultdict

__all__ = ["split_bram_fanout", "bram_columns", "top_module"]

BRAM = "DP16KD"
FF = "TRELLIS_FF"


def top_module(netlist):
    mods = netlist["modules"]
    tops = [m for m in mods.values() if str(m.get("attributes", {}).get("top", "0")).strip("0") != ""]
    if len(tops) != 1:
        raise ValueError(f"netlist: expected one top module, found {len(tops)}")
    return tops[0]


def _bram_columns(cells, sinks) -> dict:
    """{block RAM cell name: (memory, column)} for every DP16KD named ``<memory>.0.<k>``."""
    by_mem = defaultdict(dict)
    for name, c in cells.items():
        if c["type"] != BRAM:
            continue
        base, _, k = name.rpartition(".")
        mem, _, row = base.rpartition(".")
        if not (k.isdigit() and row == "0"):
            by_mem[name][0] = name          # not a memory_libmap name: a column of its own
            continue
        by_mem[mem][int(k)] = name
    out = {}
    for mem, blocks in by_mem.items():
        n = len(blocks)

        def readers(k):
            c = cells[blocks[k]]
            return {s for p, bits in c["connections"].items() if p.startswith("DO")
                    for b in bits if not isinstance(b, str) for s in sinks.get(b, ())}

        first = readers(0) if 0 in blocks else set()
        columns = next((c for c in range(1, n) if n % c == 0 and c in blocks and first & readers(c)), n)
        for k, name in blocks.items():
            out[name] = (mem, k % columns, columns)
    return out


def _connectivity(top):
    """(sinks: bit -> cell names reading it, driver: bit -> (cell, port), next free bit)."""
    sinks = defaultdict(set)
    driver = {}
    next_bit = 2
    for name, c in top["cells"].items():
        dirs = c.get("port_directions", {})
        for port, bits in c["connections"].items():
            for b in bits:
                if isinstance(b, str):
                    continue
                next_bit = max(next_bit, b + 1)
                if dirs.get(port) == "output":
                    driver[b] = (name, port)
                else:
                    sinks[b].add(name)
    for n in top["netnames"].values():
        next_bit = max([next_bit] + [b + 1 for b in n["bits"] if not isinstance(b, str)])
    return sinks, driver, next_bit


def bram_columns(netlist: dict) -> dict:
    """{DP16KD cell name: (memory, column, columns)} of the netlist's top module."""
    top = top_module(netlist)
    return _bram_columns(top["cells"], _connectivity(top)[0])


def split_bram_fanout(netlist: dict, clusters: int = 8) -> dict:
    """Duplicate, in place, every TRELLIS_FF whose output reaches block RAMs of more than one
    cluster of columns (``clusters`` per memory). Returns counts for the log."""
    top = top_module(netlist)
    cells, netnames = top["cells"], top["netnames"]
    sinks, driver, next_bit = _connectivity(top)
    column = _bram_columns(cells, sinks)

    copies = nets = 0
    for bit, (src, port) in list(driver.items()):
        if cells[src]["type"] != FF or port != "Q":
            continue
        groups = defaultdict(list)
        for s in sinks.get(bit, ()):
            if s in column:
                mem, col, cols = column[s]
                per = max(1, -(-cols // clusters))
                groups[(mem, col // per)].append(s)
        if len(groups) < 2:
            continue
        nets += 1
        # the largest group stays on the original register, with every non-block-RAM sink
        keep = max(groups, key=lambda g: len(groups[g]))
        for g, members in sorted(groups.items()):
            if g == keep:
                continue
            new_bit = next_bit
            next_bit += 1
            dup = copy.deepcopy(cells[src])
            dup["connections"]["Q"] = [new_bit]
            dup_name = f"{src}$bramdup${g[0]}${g[1]}"
            cells[dup_name] = dup
            netnames[f"{dup_name}$q"] = {"hide_name": 1, "bits": [new_bit], "attributes": {}}
            copies += 1
            for s in members:
                conn = cells[s]["connections"]
                for p, bits in conn.items():
                    conn[p] = [new_bit if b == bit else b for b in bits]
    return {"nets": nets, "copies": copies}
