"""Rank the routed nets of a nextpnr build by their slowest arc, from nextpnr's own routed
delays, and count the slow nets by the RTL line that made them.

    # nextpnr ... --report report.json --detailed-timing-report   (hmtx synth: --detailed-timing)
    python bench/routed_nets.py build/synth/ulx3s-85f-smollm-p64/report.json [--top 40] [--over 6]

Only routing delay is counted (``detailed_net_timings``: each sink's delay from its driver); the
logic on either side is not. Where nextpnr's critical path names one net, this table shows how
many more are as far from the clock period, and which source lines they come from -- the list
of what to pipeline or floorplan next.
"""

import argparse
import collections
import json
import sys

__all__ = ["net_delays", "by_source"]


def net_delays(report: dict) -> list[tuple]:
    """(slowest arc ns, fanout, net, driver, first source, slowest sink) per net, slowest first."""
    nets = report.get("detailed_net_timings")
    if nets is None:
        raise ValueError("no 'detailed_net_timings' in this report: run nextpnr with "
                         "--detailed-timing-report (hmtx synth --detailed-timing)")
    rows = []
    for n in nets:
        ends = n.get("endpoints") or []
        if not ends:
            continue
        worst = max(ends, key=lambda e: e["delay"][1])
        src = (n.get("sources") or ["?"])[0].rsplit("/", 1)[-1]
        rows.append((worst["delay"][1], len(ends), n["net"], n["driver"], src,
                     f'{worst["cell"]}.{worst["port"]}'))
    rows.sort(key=lambda r: -r[0])
    return rows


def by_source(rows, over_ns: float) -> collections.Counter:
    """How many nets have an arc slower than ``over_ns``, per first source line."""
    return collections.Counter(r[4] for r in rows if r[0] > over_ns)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report")
    ap.add_argument("--top", type=int, default=30, help="slowest nets to list")
    ap.add_argument("--over", type=float, default=6.0, help="arc delay (ns) that counts as slow")
    args = ap.parse_args(argv)
    with open(args.report) as f:
        rows = net_delays(json.load(f))
    for ns, fanout, net, driver, src, sink in rows[:args.top]:
        print(f"{ns:6.2f} ns  fanout {fanout:5d}  {net[-56:]:56s} {src[:28]:28s} -> {sink[-40:]}")
    slow = by_source(rows, args.over)
    print(f"\n{sum(slow.values())} of {len(rows)} nets have an arc over {args.over} ns; by source:")
    for src, n in slow.most_common(25):
        print(f"{n:6d}  {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
