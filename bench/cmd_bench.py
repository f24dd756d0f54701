"""`hmtx bench`: where the time goes, measured — device cycles vs ideal, µs per recall against
PyTorch, simulator speed, `hmtx run` tokens/s with its time split, host memory, and the link
(UART divisors, wire + device time per segment, the virtual board measured).

The measurements live in the repository's ``bench/`` scripts (docs/benchmarks.md); this command
runs them as one suite, checks the result's consistency (cycles >= ideal, utilization <= 100%,
positive rates, a reason for every missing figure) and writes JSON, Markdown tables and plots.
"""

import json
import os
import shlex
import sys

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark the device, the simulators, hmtx run and host memory (JSON + tables + plots)",
        description=__doc__.splitlines()[0] + " See docs/benchmarks.md.")
    p.add_argument("--json", dest="json_out", required=True, help="write the results here")
    p.add_argument("--quick", action="store_true",
                   help="tiny config, few repeats, golden backend only, no memory sweep (< 30 s; make test runs it)")
    p.add_argument("--plots", help="write PNG plots into this folder")
    p.add_argument("--markdown", help="write the tables (Markdown) here")
    p.add_argument("--write-doc", help="replace the <!-- bench:begin/end --> section of this Markdown file")
    p.add_argument("--only", help="comma-separated sections to run (device,recall,attention,sim,run,memory,link); the "
                                  "others are kept from an existing --json file")
    p.add_argument("--repeats", type=int, help="repeats per timing (default 21, --quick 5)")
    p.add_argument("--contract", type=int, choices=(1, 2), default=1,
                   help="arithmetic contract of the device and recall sections (default 1): the engine built "
                        "for it, its synthesis report's Fmax, its golden recall; the JSON records it")
    p.add_argument("--segments", type=int, help="segments of the end-to-end run (default 6, --quick 3)")
    p.add_argument("--backbone", choices=("smollm2", "tiny"), help="backbone of the end-to-end run "
                                                                     "(default smollm2, --quick tiny)")
    p.add_argument("--backends", help="device backends of the end-to-end run (default golden,sim; --quick golden); "
                                      "with --only run, the other backends' results are kept from --json")
    p.add_argument("--memory-backbone", choices=("smollm2", "tiny"), help="backbone of the memory sweep (default smollm2)")
    p.add_argument("--lengths", help="document lengths of the memory sweep (default 256,512,1024,2048,4096)")
    p.set_defaults(func=run)


def _positive_int(name, v):
    if v is not None and (not isinstance(v, int) or v < 1):
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def run(args) -> int:
    try:
        return _run(args)
    except ValueError as e:
        print(f"hmtx bench: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hmtx.bench import report, suite, validate

    _positive_int("--repeats", args.repeats)
    _positive_int("--segments", args.segments)
    from hmtx.host.cli_options import check_output_path
    check_output_path(args.json_out, "--json")               # before minutes of benchmarks
    check_output_path(args.markdown, "--markdown")
    check_output_path(args.plots, "--plots", folder=True)
    check_output_path(args.write_doc, "--write-doc")
    lengths = None
    if args.lengths:
        try:
            lengths = tuple(int(x) for x in args.lengths.split(","))
        except ValueError:
            raise ValueError(f"--lengths {args.lengths!r}: expected comma-separated integers") from None
        if min(lengths) < 1:
            raise ValueError(f"--lengths {args.lengths!r}: lengths must be positive")
    sections = tuple(s.strip() for s in args.only.split(",")) if args.only else suite.SECTIONS
    backends = None
    if args.backends:
        backends = tuple(b.strip() for b in args.backends.split(","))
        if not set(backends) <= {"golden", "sim"}:
            raise ValueError(f"--backends {args.backends!r}: choose from golden, sim")
    opts = suite.Options(quick=args.quick, sections=sections, repeats=args.repeats, run_segments=args.segments,
                         run_backbone=args.backbone, run_backends=backends, memory_backbone=args.memory_backbone,
                         memory_lengths=lengths, log=lambda s: print(s, file=sys.stderr, flush=True),
                         contract=args.contract)
    if args.only and os.path.exists(args.json_out):
        with open(args.json_out) as f:
            opts.prior = json.load(f)
        if opts.prior.get("contract", 1) != args.contract:
            raise ValueError(f"{args.json_out} holds contract {opts.prior.get('contract', 1)}'s results; "
                             f"--contract {args.contract} goes to a file of its own")
    res = suite.run_suite(opts)
    res["command"] = "hmtx bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] \
        else "hmtx bench " + f"--json {args.json_out}" + (" --quick" if args.quick else "")
    res["runs"] = {(f"run ({','.join(backends)})" if s == "run" and backends else s): {"command": res["command"], "date": res["date"],
                       "load_avg_1m_at_start": res["machine_info"].get("load_avg_1m_at_start"),
                       "seconds": res["seconds"].get(s)} for s in opts.sections}
    if args.only and os.path.exists(args.json_out):
        with open(args.json_out) as f:
            old = json.load(f)
        if backends and "run" in sections:
            # only some backends re-ran: keep the others' results
            for b in {"golden", "sim"} - set(backends):
                if b in old.get("run", {}):
                    res["run"][b] = old["run"][b]
                    res["run_tokens_per_s"][b] = old["run_tokens_per_s"][b]
                    res["reasons"].pop(f"run_tokens_per_s.{b}", None)
                    prev = old.get("runs", {}).get("run") or old.get("runs", {}).get(f"run ({b})")
                    if prev:
                        res["runs"][f"run ({b})"] = prev
        keep = {k: v for k, v in old.items() if k not in res or k in ("reasons", "seconds")}
        merged_reasons = {k: v for k, v in old.get("reasons", {}).items()
                          if not any(k.startswith(p) for p in _section_keys(sections))}
        merged_reasons.update(res["reasons"])
        seconds = dict(old.get("seconds", {}), **res["seconds"])
        runs = dict(old.get("runs", {}), **res["runs"])
        res = {**keep, **res, "reasons": merged_reasons, "seconds": seconds, "runs": runs,
               "sections": sorted(set(old.get("sections", [])) | set(sections))}
    os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
    with open(args.json_out, "w") as f:
        json.dump(res, f, indent=1)
    text = report.markdown(res, res["command"])
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.write_doc:
        report.write_doc_section(args.write_doc, text)
    if args.plots:
        for p in report.write_plots(res, args.plots):
            print(f"plot: {p}", file=sys.stderr)
    bad = validate.problems(res)
    for b in bad:
        print(f"hmtx bench: INCONSISTENT: {b}", file=sys.stderr)
    return 1 if bad else 0


def _section_keys(sections):
    """Prefixes of the ``reasons`` entries each section writes (replaced when it re-runs)."""
    keys = {"recall": ("us_per_recall",), "sim": ("sim_cycles_per_s",), "run": ("run_tokens_per_s",),
            "memory": ("memory",), "device": (), "link": ("link_measured", "link_representation")}
    return tuple(p for s in sections for p in keys.get(s, ()))
