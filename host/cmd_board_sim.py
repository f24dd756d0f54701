"""`hmtx board-sim`: the virtual board — the board top `hmtx synth` builds, simulated behind a
pseudo-terminal with bit-level UART timing, for the serial backend (`hmtx run --device serial:PORT`)."""

import os
import signal
import sys
import time

__all__ = ["register"]


def register(subparsers) -> None:
    from hmtx.hw import ENGINES
    from hmtx.hw.flow.boards import BOARDS

    from .backends import DEFAULT_BAUD
    p = subparsers.add_parser(
        "board-sim", help="simulate the board top (UART, FIFOs, engine) behind a pseudo-terminal; prints the port",
        description="Build (once, cached under build/sim/) and run a Verilator model of exactly the board top "
                    "that `hmtx synth` builds for BOARD - the UART bridge with its clock and baud divisor, its "
                    "FIFOs and the engine; only the PLL and the pins are abstracted - behind a pseudo-terminal. "
                    "Bytes written to the port go bit by bit over the simulated UART line at the rate the host "
                    "sets on it; prints 'port /dev/pts/N' on stdout and runs until interrupted. "
                    "Connect with `hmtx run --device serial:/dev/pts/N` (or let `hmtx run --device board-sim` "
                    "start one). See docs/verification.md.")
    p.add_argument("--config", default="tiny", help="engine config name (default tiny)")
    p.add_argument("--d", type=int, help="override the config's d (e.g. --d 32: the engine `hmtx run --backbone "
                                         "tiny` expects, named tiny-d32)")
    p.add_argument("--board", choices=sorted(BOARDS), default="ulx3s-85f", help="board whose top is simulated "
                                                                                 "(default ulx3s-85f)")
    p.add_argument("--engine", choices=ENGINES, help="HmtxTop's engine (default: the board's)")
    p.add_argument("--contract", type=int, choices=(1, 2), default=1,
                   help="arithmetic contract, as `hmtx synth --contract` (default 1)")
    p.add_argument("--freq", type=float, help="system clock in MHz as given to `hmtx synth --freq` (default: the board's)")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                   help=f"the design's UART rate, as `hmtx synth --baud` (default {DEFAULT_BAUD})")
    p.add_argument("--fixed-baud", action="store_true",
                   help="keep the line at --baud whatever the host sets on the port (default: follow it, as the "
                        "board's USB-UART bridge does)")
    p.add_argument("--link", help="also make this path a symlink to the port (removed at exit)")
    p.add_argument("--stats", help="write the board's counters (JSON) here at exit")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from hmtx.model.configs import get_config
    from hmtx.sim.board_sim import BoardSim, board_design

    from .backends import DEFAULT_BAUD
    try:
        config = get_config(args.config)
        if args.d is not None and args.d != config.d:
            if args.d < 1:
                raise ValueError(f"--d must be positive, got {args.d}")
            config = config.with_(name=f"{config.name}-d{args.d}", d=args.d)
        design = board_design(args.board, config, engine=args.engine, baud=args.baud, sync_mhz=args.freq,
                              contract=args.contract)
    except ValueError as e:
        print(f"hmtx board-sim: error: {e}", file=sys.stderr)
        return 2

    def log(s):
        print(f"hmtx board-sim: {s}", file=sys.stderr, flush=True)

    c = design.config
    log(f"{args.board} board top: config {c.name} (d={c.d}, d_h={c.d_h}, N={c.n_slots}, P={c.lanes}), "
        f"{design.engine} engine, contract {design.contract}, clock {design.clk_hz / 1e6:g} MHz, {design.baud} baud (divisor "
        f"{design.divisor}, {design.baud_error:+.2%}), FIFOs {design.fifo_depth} B ({design.fifo_ram})")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        board = BoardSim(design, sync_mhz=args.freq, fixed_baud=args.fixed_baud, log=log)
    except (RuntimeError, ValueError) as e:
        print(f"hmtx board-sim: error: {e}", file=sys.stderr)
        return 3
    try:
        if args.link:
            if os.path.lexists(args.link):
                os.unlink(args.link)
            os.symlink(board.port, args.link)
        print(f"port {board.port}", flush=True)
        run_hint = "--backbone tiny" if (c.name == "tiny-d32") else f"--config {args.config}"
        log(f"connect with: hmtx run --device serial:{args.link or board.port}" +
            (f"@{design.baud}" if design.baud != DEFAULT_BAUD else "") + f" {run_hint}  (Ctrl-C stops the board)")
        while not stop and board.alive():
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        s = board.stats()
        alive = board.alive()
        tail = board.log_tail()
        board.close()
        if args.link and os.path.islink(args.link):
            os.unlink(args.link)
    log(f"stopped: {s['seconds'] * 1e3:.3f} ms simulated (wire + device), {s['bytes_in']} bytes in, "
        f"{s['bytes_out']} out, {s['frames_out']} responses, {s['framing_errors']} framing errors")
    if args.stats:
        with open(args.stats, "w") as f:
            json.dump(s, f, indent=1)
    if not alive:
        print(f"hmtx board-sim: the board exited:\n{tail}", file=sys.stderr)
        return 3
    return 0
