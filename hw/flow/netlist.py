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

__all__ = ["split_bram_fanout", "split_by_region", "bram_columns", "top_module"]

BRAM = "DP16KD"
FF = "TRELLIS_FF"


def top_module(netlist):
    mods = netlist["modules"]
    tops = [m for m in mods.values() if str(m.get("attributes", {}).get("top", "0")).strip("0") != ""]
    if len(tops) != 1:
        raise ValueError(f"netlist: expected one top module, found {len(tops)}")
    return tops[0]


def _bram_columns(cells, sinks) -> dict:
    """{block RAM cell name: (memory, column, columns)} for every DP16KD named ``<memory>.0.<k>``.

    A column is the blocks that hold the same bits of the memory's word at different depths:
    their outputs meet in the read multiplexer of those bits. Blocks are joined when their
    outputs reach a common cell through combinational logic within two levels (a three-deep
    column's multiplexer is two LUTs and a PFUMX, which only two of its blocks share directly);
    the columns are numbered in the order of their first block (memory_libmap names blocks in
    bit order). If that does not split the memory into equal columns, the blocks are taken as
    row-major and the column count is the first block that shares a reader with block 0.
    (The write data cannot tell columns apart: ``w`` and ``key`` are written with the same byte
    or value in every lane.)"""
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

    def readers_of(name, ports=None):
        c = cells[name]
        return {s for p, bits in c["connections"].items()
                if (p.startswith("DO") if ports is None else c.get("port_directions", {}).get(p) == "output")
                for b in bits if not isinstance(b, str) for s in sinks.get(b, ())}

    out = {}
    for mem, blocks in by_mem.items():
        n = len(blocks)
        reach = {}
        for k, name in blocks.items():
            first = readers_of(name)
            reach[k] = first | {s for r in first if r in cells and cells[r]["type"] != FF
                                for s in readers_of(r, ports="out")}
        parent = {k: k for k in blocks}

        def find(k):
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k
        owner = {}
        for k in sorted(blocks):
            for cell in reach[k]:
                if cell in owner:
                    parent[find(k)] = find(owner[cell])
                else:
                    owner[cell] = k
        groups = defaultdict(list)
        for k in sorted(blocks):
            groups[find(k)].append(k)
        sizes = {len(g) for g in groups.values()}
        if len(sizes) == 1 and len(groups) * sizes.pop() == n:
            for col, ks in enumerate(sorted(groups.values(), key=min)):
                for k in ks:
                    out[blocks[k]] = (mem, col, len(groups))
            continue
        first = readers_of(blocks[0]) if 0 in blocks else set()
        columns = next((c for c in range(1, n) if n % c == 0 and c in blocks and first & readers_of(blocks[c])), n)
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
    sinks, driver, next_bit = conn = _connectivity(top)
    column = _bram_columns(top["cells"], sinks)

    def cluster(sink):
        if sink not in column:
            return None
        mem, col, cols = column[sink]
        return mem, col // max(1, -(-cols // clusters))

    return _split_by(top, conn, cluster, "bramdup")


def split_by_region(netlist: dict, region_of_bel) -> dict:
    """One level up from the block RAMs: copy every flip-flop whose sinks lie in several regions
    of the die, one copy per region, where a cell's region is ``region_of_bel(its BEL)`` for
    pinned cells (hw/flow/floorplan.py) and, for a flip-flop, the one region all its sinks share.

    After :func:`split_bram_fanout` each block-RAM cluster has its own address register, but
    those copies still hang off one register in the middle, which cannot reach block RAM rows
    at both ends of the die in one clock; this gives that register a copy per region, so the
    path is centre -> region -> cluster, register to register. Returns counts for the log."""
    top = top_module(netlist)
    cells = top["cells"]
    sinks, driver, next_bit = conn = _connectivity(top)
    region = {name: region_of_bel(c["attributes"]["BEL"]) for name, c in cells.items()
              if "BEL" in c.get("attributes", {})}
    for bit, (src, port) in driver.items():
        outs = sinks.get(bit, ())
        if cells[src]["type"] == FF and port == "Q" and src not in region and outs:
            rs = {region.get(s) for s in outs}
            if len(rs) == 1 and None not in rs:
                region[src] = rs.pop()
    # only the flip-flops above the regions are copied, for their flip-flop sinks
    return _split_by(top, conn, lambda s: region.get(s) if cells[s]["type"] == FF else None,
                     "regiondup", skip=region.__contains__)


def _split_by(top, conn, group_of, tag, skip=lambda src: False) -> dict:
    """Split every flip-flop (not ``skip``-ped) whose sinks fall in two or more groups
    (``group_of(sink)``, None for no group) with :func:`_split`. Returns counts for the log."""
    cells, netnames = top["cells"], top["netnames"]
    sinks, driver, next_bit = conn
    copies = nets = 0
    for bit, (src, port) in list(driver.items()):
        if cells[src]["type"] != FF or port != "Q" or skip(src):
            continue
        groups = defaultdict(list)
        for s in sinks.get(bit, ()):
            g = group_of(s)
            if g is not None:
                groups[g].append(s)
        if len(groups) < 2:
            continue
        nets += 1
        next_bit, made = _split(cells, netnames, src, bit, groups, next_bit, tag)
        copies += made
    return {"nets": nets, "copies": copies}


def _split(cells, netnames, src, bit, groups, next_bit, tag):
    """Copy flip-flop ``src`` (output ``bit``) once per group of sinks but the largest, which
    stays on the original with every sink not in a group; rewire each group to its copy.
    Returns (next free bit, copies made)."""
    keep = max(groups, key=lambda g: (len(groups[g]), str(g)))
    made = 0
    for g, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if g == keep:
            continue
        new_bit = next_bit
        next_bit += 1
        dup = copy.deepcopy(cells[src])
        dup["connections"]["Q"] = [new_bit]
        dup_name = f"{src}${tag}${'$'.join(map(str, g if isinstance(g, tuple) else (g,)))}"
        cells[dup_name] = dup
        netnames[f"{dup_name}$q"] = {"hide_name": 1, "bits": [new_bit], "attributes": {}}
        made += 1
        for s in members:
            conn = cells[s]["connections"]
            for p, bits in conn.items():
                conn[p] = [new_bit if b == bit else b for b in bits]
    return next_bit, made
