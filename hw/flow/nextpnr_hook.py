"""``python -m hmtx.hw.flow.nextpnr_hook [--split] [--floorplan] NEXTPNR ARGS...``: the netlist passes that run
between Yosys and nextpnr-ecp5, then nextpnr itself with the same arguments.

``hmtx synth`` points Amaranth's ``NEXTPNR_ECP5`` at a script that calls this, so the platform's
own build script stays as Amaranth writes it. The ``--json`` netlist is rewritten in place: with
``--floorplan``, the engine's block RAMs and lane multipliers are pinned (:mod:`hmtx.hw.flow.floorplan`,
LFE5U-85F only); with ``--split``, the registers that drive block RAMs get a copy per block-RAM
cluster, and with both, the registers feeding those copies get one per region of the die
(:mod:`hmtx.hw.flow.netlist`).
"""

import json
import os
import subprocess
import sys

from .floorplan import floorplan_engine, region_of_bel
from .netlist import split_bram_fanout, split_by_region

__all__ = ["main"]


def _rewrite(args, passes):
    """The netlist passes on the ``--json`` netlist, in place."""
    path = args[args.index("--json") + 1]
    with open(path) as f:
        netlist = json.load(f)
    if "--floorplan" in passes:
        if "--85k" not in args:
            raise ValueError("floorplan: it is made for the LFE5U-85F (nextpnr --85k)")
        placed = floorplan_engine(netlist)
        print(f"hmtx.hw.flow.floorplan: pinned {placed['brams']} block RAMs and {placed['mults']} "
              f"lane multipliers of {placed['quads']} lane quads", file=sys.stderr)
    if "--split" in passes:
        counts = split_bram_fanout(netlist)
        print(f"hmtx.hw.flow.netlist: {counts['copies']} register copies for {counts['nets']} nets "
              f"that drive block RAMs of several column clusters", file=sys.stderr)
        if "--floorplan" in passes:
            counts = split_by_region(netlist, region_of_bel)
            print(f"hmtx.hw.flow.netlist: {counts['copies']} register copies for {counts['nets']} "
                  f"nets that drive registers in several regions", file=sys.stderr)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(netlist, f)
    os.replace(tmp, path)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passes = set()
    while argv and argv[0] in ("--split", "--floorplan"):
        passes.add(argv.pop(0))
    if not argv or argv[0].startswith("-"):
        print("usage: python -m hmtx.hw.flow.nextpnr_hook [--split] [--floorplan] NEXTPNR "
              "[nextpnr arguments]", file=sys.stderr)
        return 2
    tool, args = argv[0], argv[1:]
    if "--json" in args:
        try:
            _rewrite(args, passes)
        except ValueError as e:
            # in nextpnr's own log too, where `hmtx synth` looks for the reason a build stopped
            message = f"ERROR: hmtx.hw.flow.nextpnr_hook: {e}"
            print(message, file=sys.stderr)
            if "--log" in args:
                with open(args[args.index("--log") + 1], "w") as f:
                    f.write(message + "\n")
            return 1
    return subprocess.call([tool] + args)


if __name__ == "__main__":
    sys.exit(main())
