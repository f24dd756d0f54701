"""`hmtx replay FILE`: re-run a failing case saved by `hmtx run` on a device, checked op by op."""

import sys

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay", help="replay a failing case saved by `hmtx run` on a device and report the first mismatch",
        description="Send the device inputs recorded in a case file (reset, weights, memory writes, recalls, "
                    "cache read-backs since the last reset) to a device and check every answer against the "
                    "golden arithmetic. Exit status: 0 no mismatch, 1 mismatch, 2 bad case file, 3 device error.")
    p.add_argument("case", metavar="FILE", help="case file (JSON) written by `hmtx run`")
    p.add_argument("--device", default="golden", help="golden | sim[:ENGINE] | serial:PORT[@BAUD] (default golden; ENGINE: lanes or serial)")
    p.add_argument("--timeout", type=float, help="seconds per device transaction (default by backend)")
    p.add_argument("--waves", action="store_true", help="sim: record waves")
    p.set_defaults(func=run)


def run(args) -> int:
    from .device import Device, DeviceError, ProtocolError
    from .runtime import MismatchError, load_case, replay_case

    from .cli_options import check_timeout

    try:
        timeout = check_timeout(args.timeout)
        case = load_case(args.case)
    except ValueError as e:
        print(f"hmtx replay: error: {e}", file=sys.stderr)
        return 2
    cfg = case["config"]
    recorded = case.get("mismatch")
    print(f"replaying {args.case}: {len(case['ops'])} ops on engine {cfg.name} (d={cfg.d}, d_h={cfg.d_h}, "
          f"N={cfg.n_slots}), contract {case['contract']}, device {args.device}")
    if recorded:
        print(f"recorded: mismatch at segment {recorded['segment']}, op {recorded['op']}, {recorded['field']}"
              f"{'' if recorded['element'] is None else '[%d]' % recorded['element']}: "
              f"expected {recorded['expected']}, got {recorded['got']}")
    elif case.get("error"):
        print(f"recorded: device error: {case['error']}")
    try:
        # The case's contract: the golden device is built with it; a device computing another is refused.
        with Device.open(args.device, cfg, timeout=timeout, waves=args.waves, contract=case["contract"]) as dev:
            chk = replay_case(case, dev)
    except MismatchError as e:
        print(e.mismatch.describe())
        return 1
    except ValueError as e:
        print(f"hmtx replay: error: {e}", file=sys.stderr)
        return 2
    except (DeviceError, ProtocolError, ConnectionError) as e:
        print(f"hmtx replay: device error: {e}", file=sys.stderr)
        return 3
    print(f"no mismatch: {chk.ops_checked} device answers matched the golden arithmetic")
    return 0
