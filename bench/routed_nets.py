"""Which registers of a routed nextpnr build miss the clock, and by how much, from nextpnr's
own routed timing -- not just the one critical path it prints.

    # nextpnr ... --report report.json --detailed-timing-report   (hmtx synth: --detailed-timing)
    python bench/routed_nets.py OUT/report.json --netlist OUT/top.json [--period 10] [--top 30]

nextpnr's ``detailed_net_timings`` give, for every sink of every net, the arrival time there
(the longest path from a launching register, routing and logic). The endpoints that count are
the inputs of registers, block RAMs and multipliers; an arrival past the clock period is a
failing path. They are grouped by the signal they belong to: the cell name as Yosys wrote it,
less the suffixes its mapping adds (``w0_wr_en_d1_TRELLIS_FF_Q_49`` -> ``w0_wr_en_d1``), so a
bus or a family of copies counts once, with how many of its bits fail and its worst arrival.
"""

import argparse
import collections
import json
import re
import sys

from hmtx.hw.flow.netlist import top_module

__all__ = ["endpoints", "failing_by_signal", "register_inputs", "signal_of"]

_MAPPED = re.compile(r"(_TRELLIS_FF|_TRELLIS_COMB|_LUT4|_CCU2C|_PFUMX|_L6MUX21|_DP16KD|_MULT18X18D|\$).*$")


def signal_of(cell: str) -> str:
    """The RTL signal a mapped cell belongs to (its Yosys name less the mapping suffixes)."""
    return _MAPPED.sub("", cell) or cell


def endpoints(report: dict, is_endpoint=None) -> list[tuple]:
    """(arrival ns, sink cell, sink port, driving net) for every sink nextpnr timed, worst first.
    ``is_endpoint(cell, port)`` keeps only path ends (default: every sink)."""
    nets = report.get("detailed_net_timings")
    if nets is None:
        raise ValueError("no 'detailed_net_timings' in this report: run nextpnr with "
                         "--detailed-timing-report (hmtx synth --detailed-timing)")
    rows = [(e["delay"][1], e["cell"], e["port"], n["net"]) for n in nets for e in n.get("endpoints") or []
            if is_endpoint is None or is_endpoint(e["cell"], e["port"])]
    rows.sort(key=lambda r: -r[0])
    return rows


def register_inputs(netlist: dict):
    """``is_endpoint`` for :func:`endpoints` from the placed/synthesized netlist: inputs of
    flip-flops, block RAMs and multipliers."""
    kinds = {name: c["type"] for name, c in top_module(netlist)["cells"].items()}
    ends = {"TRELLIS_FF", "DP16KD", "MULT18X18D", "ALU54B", "TRELLIS_DPR16X4"}
    return lambda cell, port: kinds.get(cell) in ends


def failing_by_signal(rows, period_ns: float) -> list[tuple]:
    """(failing endpoints, worst arrival ns, signal) per signal with an arrival past
    ``period_ns``, most endpoints first."""
    count, worst = collections.Counter(), {}
    for arrival, cell, _, _ in rows:
        if arrival > period_ns:
            s = signal_of(cell)
            count[s] += 1
            worst[s] = max(worst.get(s, 0.0), arrival)
    return sorted(((n, worst[s], s) for s, n in count.items()), key=lambda r: (-r[0], -r[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", help="nextpnr --report JSON written with --detailed-timing-report")
    ap.add_argument("--netlist", required=True,
                    help="the netlist nextpnr read (the build's top.json), for the cell types: only "
                         "the inputs of flip-flops, block RAMs and multipliers end a path")
    ap.add_argument("--period", type=float, default=10.0, help="clock period in ns (default 10)")
    ap.add_argument("--top", type=int, default=30, help="how many signals to list")
    args = ap.parse_args(argv)
    with open(args.report) as f:
        report = json.load(f)
    with open(args.netlist) as f:
        keep = register_inputs(json.load(f))
    rows = endpoints(report, keep)
    groups = failing_by_signal(rows, args.period)
    n_fail = sum(g[0] for g in groups)
    print(f"{n_fail} of {len(rows)} endpoints arrive after {args.period} ns "
          f"(worst {rows[0][0]:.2f} ns at {rows[0][1]}.{rows[0][2]})" if rows else "no endpoints")
    print(f"\n{'failing':>8} {'worst ns':>9}  signal")
    for n, worst, sig in groups[:args.top]:
        print(f"{n:8d} {worst:9.2f}  {sig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
