"""The `hmtx` command line.

Each subcommand lives in its own module and exposes ``register(subparsers)``; this file only
lists them, so ``hmtx --help`` shows exactly the commands that exist. The commands are modules
of host/ except ``hmtx bench``, which lives with the benchmarks it runs (bench/ is the layer
above host/): the command line names it here and imports it by name like the others, the one
place where host/ names a module above it (tests/test_layers.py checks the imports, and this
list).
"""

import argparse
import importlib
import sys

# Modules that provide subcommands, in the order `--help` lists them.
COMMAND_MODULES = [
    "hmtx.host.cmd_selfcheck",
    "hmtx.host.cmd_eval",
    "hmtx.host.cmd_train",
    "hmtx.host.cmd_export_onnx",
    "hmtx.host.cmd_synth",
    "hmtx.host.cmd_sweep",
    "hmtx.host.cmd_run",
    "hmtx.host.cmd_board_sim",
    "hmtx.host.cmd_replay",
    "hmtx.bench.cmd_bench",
    "hmtx.host.cmd_gen",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hmtx",
        description="HMT memory recall on a bit-exact FPGA datapath: reference model, RTL, "
                    "verification and host runtime.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if rc is None else int(rc)


if __name__ == "__main__":
    sys.exit(main())
