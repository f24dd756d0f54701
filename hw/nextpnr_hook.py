"""``python -m hmtx.hw.nextpnr_hook [--split] [--floorplan] NEXTPNR ARGS...``: the netlist passes that run
between Yosys and nextpnr-ecp5, then nextpnr itself with the same arguments.

``hmtx synth`` points Amaranth's ``NEXTPNR_ECP5`` at a script that calls this, so the platform's
own build script stays as Amaranth writes it. The ``--json`` netlist is rewritten in place: with
``--split``, register copies per block-RAM cluster (:mod:`hmtx.hw.netlist`); with
``--floorplan``, the engine's block RAMs and lane multipliers pinned (:mod:`hmtx.hw.floorplan`,
LFE5U-85F only).
"""

import json
import os
import subprocess
import sys

from .floorplan import floorplan_engine
from .netlist import split_bram_fanout

__all__ = ["main"]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passes = set()
    while argv and argv[0] in ("--split", "--floorplan"):
        passes.add(argv.pop(0))
    if not argv or argv[0].startswith("-"):
        print("usage: python -m hmtx.hw.nextpnr_hook [--split] [--floorplan] NEXTPNR "
              "[nextpnr arguments]", file=sys.stderr)
        return 2
    tool, args = argv[0], argv[1:]
    if "--json" in args:
        path = args[args.index("--json") + 1]
        with open(path) as f:
            netlist = json.load(f)
        if "--split" in passes:
            counts = split_bram_fanout(netlist)
            print(f"hmtx.hw.netlist: {counts['copies']} register copies for {counts['nets']} nets "
                  f"that drive block RAMs of several column clusters", file=sys.stderr)
        if "--floorplan" in passes:
            if "--85k" not in args:
                print("hmtx.hw.floorplan: the floorplan is for the LFE5U-85F (--85k)", file=sys.stderr)
                return 2
            placed = floorplan_engine(netlist)
            print(f"hmtx.hw.floorplan: pinned {placed['brams']} block RAMs and {placed['mults']} "
                  f"lane multipliers of {placed['quads']} lane quads", file=sys.stderr)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(netlist, f)
        os.replace(tmp, path)
    return subprocess.call([tool] + args)


if __name__ == "__main__":
    sys.exit(main())
