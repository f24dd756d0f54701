"""The `hmtx` command line.

Each subcommand lives in its own module under ``hmtx.host`` and exposes ``register(subparsers)``;
this file only lists them, so ``hmtx --help`` shows exactly the commands that exist.
"""

import argparse
import importlib
import sys

# Module names (under hmtx.host) that provide subcommands, in the order `--help` lists them.
COMMAND_MODULES = [
    "cmd_selfcheck",
    "cmd_eval",
    "cmd_train",
    "cmd_export_onnx",
    "cmd_synth",
    "cmd_sweep",
    "cmd_run",
    "cmd_board_sim",
    "cmd_replay",
    "cmd_bench",
    "cmd_gen",
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
        importlib.import_module(f"hmtx.host.{name}").register(sub)
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
