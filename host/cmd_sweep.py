"""`hmtx sweep`: the design space over lanes P and slots N — Fmax and resources per point.

Every point is a full `hmtx synth` build; the table (markdown) and figure are made from the
JSON reports, so a sweep can be re-plotted from its saved JSON (``--from-json``) without
rebuilding.
"""

import json
import os
import sys

__all__ = ["register", "cycles_per_recall", "recalls_per_s", "markdown_table", "plot_sweep"]


def register(subparsers) -> None:
    from .cmd_synth import add_build_arguments

    p = subparsers.add_parser(
        "sweep", help="synthesize over lanes P and slots N: Fmax, LUT/FF/DSP/BRAM table and figure",
        description="Run `hmtx synth` for every (P, N) point and summarise Fmax and resource use "
                    "(from the tools' own reports) as a markdown table, a matplotlib figure and JSON.")
    add_build_arguments(p)
    p.add_argument("--lanes", default="8,16,32,64", help="comma-separated P values")
    p.add_argument("--slots", help="comma-separated N values (default: the config's)")
    p.add_argument("--out", default=os.path.join("build", "sweep"),
                   help="folder for the per-point builds and the results")
    p.add_argument("--from-json", help="skip building: re-make table and figure from this sweep JSON")
    p.set_defaults(func=run)


# ---- cycles per recall ------------------------------------------------------------------
# Measured, not estimated: the engine RTL runs one RECALL over a full cache in Amaranth's
# simulator (hmtx.sim.perf, the same count as bench/cycles.py).
def cycles_per_recall(config, core="hmtx", engine="lanes", contract=1):
    """Engine cycles of one RECALL over a full cache at ``config`` (None for a stand-in core)."""
    if core != "hmtx":
        return None
    from hmtx.sim.perf import cycles_per_recall as measured

    return measured(config, engine, contract)
# -----------------------------------------------------------------------------------------


def _ints(text, what):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--{what} needs positive integers, got {text!r}")
    return values


def _pct(r):
    return f"{r['used']} ({100 * r['used'] / r['total']:.1f}%)"


def recalls_per_s(point):
    """Recalls per second at the point's Fmax (simulated cycles per recall), or None without a
    cycle count."""
    cycles = point.get("cycles_per_recall")
    return point["fmax_mhz"] * 1e6 / cycles if cycles else None


def markdown_table(points):
    """One row per build: P, N, Fmax, LUT/FF/DSP/BRAM used (% of device), cycles and recalls/s."""
    head = ("| board | config | P | N | Fmax (MHz) | target (MHz) | LUT | FF | DSP | BRAM "
            "| cycles/recall | recalls/s at Fmax |")
    rule = "|" + "---|" * 12
    rows = [head, rule]
    for r in points:
        res = r["resources"]
        cycles = r.get("cycles_per_recall")
        rate = f"{recalls_per_s(r):,.0f}" if cycles else "n/a"
        rows.append(
            f"| {r['board']} | {r['config']} | {r['lanes']} | {r['n_slots']} | {r['fmax_mhz']:.1f} "
            f"| {r['target_mhz']:g} | {_pct(res['lut'])} | {_pct(res['ff'])} | {_pct(res['dsp'])} "
            f"| {_pct(res['bram'])} | {cycles if cycles else 'n/a'} | {rate} |")
    return "\n".join(rows) + "\n"


def plot_sweep(points, path):
    """Fmax, resource use (% of the device) and, where the points have a cycle count, recalls per
    second at Fmax, against P; one line per N."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = any(recalls_per_s(p) for p in points)
    fig, axes = plt.subplots(1, 3 if timed else 2, figsize=(15 if timed else 10, 4))
    ax_f, ax_r = axes[0], axes[1]
    for n in sorted({p["n_slots"] for p in points}):
        pts = sorted((p for p in points if p["n_slots"] == n), key=lambda p: p["lanes"])
        lanes = [p["lanes"] for p in pts]
        ax_f.plot(lanes, [p["fmax_mhz"] for p in pts], "o-", label=f"N={n}")
        for kind, style in (("lut", "o-"), ("ff", "s--"), ("dsp", "^-"), ("bram", "d:")):
            ax_r.plot(lanes, [100 * p["resources"][kind]["used"] / p["resources"][kind]["total"]
                              for p in pts], style, label=f"{kind.upper()} N={n}")
        if timed:
            rated = [p for p in pts if recalls_per_s(p)]
            axes[2].plot([p["lanes"] for p in rated], [recalls_per_s(p) for p in rated], "o-", label=f"N={n}")
    target = points[0]["target_mhz"]
    ax_f.axhline(target, color="gray", linestyle="--", label=f"target {target:g} MHz")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("MAC lanes P")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax_f.set_ylabel("post-route Fmax (MHz)")
    ax_r.set_ylabel("% of device")
    if timed:
        # (cycles simulated on the RTL, Fmax from the routed build)
        axes[2].set_yscale("log")
        axes[2].set_ylabel("recalls/s at Fmax (full cache)")
    fig.suptitle(f"{points[0]['board']} ({points[0]['device']}), config {points[0]['config']}, "
                 f"core {points[0].get('core', '?')}"
                 + (f" ({points[0]['engine']} engine)" if points[0].get("engine") else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    from hmtx.hw.flow.synth import BuildFailed

    from .cmd_synth import build_one, default_out_dir, format_summary, resolve_config, resolve_engine

    from .cli_options import check_output_path

    failed = []
    if args.seed is None:
        args.seed = "1"          # one placement per point (hmtx synth's default tries more)
    try:
        check_output_path(args.out, "--out", folder=True)       # before hours of builds
        if args.from_json:
            try:
                with open(args.from_json) as f:
                    points = json.load(f)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"--from-json {args.from_json}: cannot read ({getattr(e, 'strerror', None) or e})") from None
        else:
            points = []
            engine, _ = resolve_engine(args)
            lanes = _ints(args.lanes, "lanes")
            slots = _ints(args.slots, "slots") if args.slots else [None]
            for n in slots:
                for p in lanes:
                    name, config = resolve_config(args, lanes=p, n_slots=n)
                    out_dir = os.path.join(args.out, os.path.basename(
                        default_out_dir(args.board, name, p, args.core, engine, args.contract)) + f"-n{config.n_slots}")
                    try:
                        report = build_one(args, name, config, out_dir)
                    except BuildFailed as e:
                        # A point that does not fit is a result of the sweep, not its end.
                        print(f"P={p} N={config.n_slots}: {e}", flush=True)
                        failed.append(e.report)
                        continue
                    report["cycles_per_recall"] = cycles_per_recall(config, args.core, engine, args.contract)
                    points.append(report)
                    print(format_summary(report), flush=True)
    except ValueError as e:
        print(f"hmtx sweep: error: {e}", file=sys.stderr)
        return 2
    if failed:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "failed_points.json"), "w") as f:
            json.dump(failed, f, indent=2)
    if not points:
        print("hmtx sweep: error: no point built" + (f" ({len(failed)} failed, see "
              f"{args.out}/failed_points.json)" if failed else ""), file=sys.stderr)
        return 1

    os.makedirs(args.out, exist_ok=True)
    core = points[0].get("core", "HmtxTop")
    suffix = "" if core == "HmtxTop" else f"_{core.lower()}"
    if points[0].get("engine") not in (None, "lanes"):
        suffix += f"_{points[0]['engine']}"     # (a serial sweep does not overwrite a lanes one)
    stem = os.path.join(args.out, f"sweep_{points[0]['board']}_{points[0]['config']}{suffix}")
    if not args.from_json:
        with open(stem + ".json", "w") as f:
            json.dump(points, f, indent=2)
    table = markdown_table(points)
    if failed:
        table += "\nDid not build: " + "; ".join(
            f"P={r['lanes']}: {r['error']}" for r in failed) + "\n"
    with open(stem + ".md", "w") as f:
        f.write(table)
    plot_sweep(points, stem + ".png")
    print(table)
    print(f"wrote {stem}.md, {stem}.png" + ("" if args.from_json else f", {stem}.json"))
    return 0
