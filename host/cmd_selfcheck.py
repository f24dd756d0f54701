"""`hmtx selfcheck`: the arithmetic contract checks itself on this machine.

numpy and torch golden models must agree bit for bit on every named configuration (and on CUDA
when a GPU is present), and the measured errors must stay inside the bounds of docs/arithmetic.md.
"""

import time

RECALL_BOUND = 0.02   # docs/arithmetic.md §8: recall, arithmetic only, error / memory norm


def register(sub):
    p = sub.add_parser("selfcheck", help="check the fixed-point golden models (numpy == torch, error bounds)",
                       description=__doc__)
    p.add_argument("--trials", type=int, default=5, help="random draws per configuration (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    # Imported here: `hmtx --help` loads every command module and should not pay for torch.
    import torch

    from hmtx.model.arith_error import check_bit_identity, measure_errors
    from hmtx.model.configs import CONFIGS

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    failures = 0
    t0 = time.perf_counter()
    print(f"arithmetic self-check: numpy vs torch on {', '.join(devices)}, seed {args.seed}")
    print(f"{'config':8} {'device':6} {'elements':>9}  {'recall err (med/max)':>22}  result")
    for name, cfg in CONFIGS.items():
        errors = measure_errors(cfg, trials=args.trials, seed=args.seed)
        rec = errors["recall_err_l2 / memory norm (arithmetic only)"]
        for dev in devices:
            try:
                n = check_bit_identity(cfg, trials=args.trials, seed=args.seed, device=dev)
                ok = rec["max"] <= RECALL_BOUND
                verdict = "ok" if ok else f"FAIL: recall error above {RECALL_BOUND}"
            except AssertionError as exc:
                n, ok, verdict = 0, False, f"FAIL: {exc}"
            failures += not ok
            print(f"{name:8} {dev:6} {n:9d}  {rec['median']:10.2e} / {rec['max']:9.2e}  {verdict}")
    print(f"{'all checks passed' if not failures else f'{failures} check(s) failed'} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 1 if failures else 0
