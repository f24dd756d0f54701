"""Measure the error of every fixed-point operation against float64 (the table in docs/arithmetic.md).

    .venv/bin/python bench/arith_error.py [--trials 200] [--seed 0] [--json PATH]
"""

import argparse
import json
import platform
import sys

from hmtx.model.arith_error import all_configs, measure_errors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the measured table as JSON here")
    args = ap.parse_args(argv)
    table = {cfg.name: measure_errors(cfg, args.trials, args.seed) for cfg in all_configs()}
    names = list(table)
    rows = list(next(iter(table.values())))
    print(f"median / worst case over {args.trials} random draws per config (seed {args.seed})\n")
    print("| quantity | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for r in rows:
        cells = (f"{table[n][r]['median']:.3g} / {table[n][r]['max']:.3g}" for n in names)
        print(f"| {r} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"trials": args.trials, "seed": args.seed, "machine": platform.platform(),
                       "errors": table}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
