"""Tables (Markdown) and plots (PNG) from a `hmtx bench` result.

    python -m hmtx.bench.report docs/results/bench.json [--markdown docs/results/bench.md] [--plots docs/results]
"""

import argparse
import json
import os
import sys

from hmtx.bench.stats import fmt_stat

__all__ = ["markdown", "write_plots", "write_doc_section"]


_SECTION_ORDER = {"device": 0, "recall": 1, "attention": 2, "sim": 3, "run": 4, "memory": 5, "link": 6}


def _f(x, spec=".3g", none="n/a"):
    return none if x is None else format(x, spec)


def _device_table(res) -> list[str]:
    rows = ["| config | d | d_h | N | P | op | measured cycles | ideal = ceil(MACs/P) | utilization |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    from hmtx.model.configs import CONFIGS
    for name, ops in res["device"].items():
        c = CONFIGS.get(name)
        dims = f"{c.d} | {c.d_h} | {c.n_slots} | {c.lanes}" if c else "? | ? | ? | ?"
        for op, label in (("write", "WRITE"), ("recall_1", "RECALL, 1 slot filled"),
                          ("recall", "RECALL, all N slots"), ("attention", "ATTENTION")):
            if op in ops:
                e = ops[op]
                lab = label + (f" {e['tile']}" if op == "attention" else "")
                rows.append(f"| {name} | {dims} | {lab} | {e['cycles']} | {e['ideal']} | {e['utilization']:.1f}% |")
    return rows


def _sweep_table(res) -> list[str]:
    rows = ["| config | N | P | recall cycles | ideal | utilization | write cycles | ideal | utilization |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res.get("device_sweep", []):
        rc, w = r["recall"], r["write"]
        rows.append(f"| {r['config']} | {r['N']} | {r['P']} | {rc['cycles']} | {rc['ideal']} | "
                    f"{rc['utilization']:.1f}% | {w['cycles']} | {w['ideal']} | {w['utilization']:.1f}% |")
    return rows


def _uart_label(res) -> str:
    # (results written before the baud was recorded were taken at 1 Mbaud)
    bauds = {r.get("uart_baud", 1_000_000) for r in (res.get("recall_speed") or {}).values()} or {1_000_000}
    return "UART " + "/".join(f"{b / 1e6:g} Mbaud" for b in sorted(bauds))


def _recall_table(res) -> list[str]:
    rows = ["| config | N | device cycles | Fmax (MHz) | device µs (compute) | device recalls/s | "
            f"+ {_uart_label(res)} µs | PyTorch float CPU µs | PyTorch CUDA µs | golden numpy µs | "
            "golden device (frame) µs | CPU / device |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res.get("recall_speed", {}).items():
        cyc = res.get("device", {}).get(name, {}).get("recall", {}).get("cycles")
        fmax = r["fmax_mhz"]
        dev = _f(r["device_us"]) if r["device_us"] else (r.get("device_reason") or "n/a")
        src = res.get("fmax", {}).get(name, {})
        fmax_txt = _f(fmax, ".1f", "not synthesized yet")
        if fmax:
            fmax_txt += (f" ({src.get('board')}, timing {'met' if src.get('timing_met') else 'NOT met'}; "
                         f"`{src.get('source')}`)")
        rows.append(
            f"| {name} | {r['n_keys']} | {_f(cyc, 'd') if cyc else 'n/a'} | {fmax_txt} | "
            f"{dev} | {_f(r.get('device_recalls_per_s'), '.3g')} | "
            f"{_f(r.get('device_with_uart_us')) if r['device_us'] else _f(r['uart_us']['recall']) + ' (link alone)'} | "
            f"{fmt_stat(r['torch_cpu_us'])} | {fmt_stat(r['torch_cuda_us']) if r['torch_cuda_us'] else 'no GPU'} | "
            f"{fmt_stat(r['golden_numpy_us'])} | {fmt_stat(r['golden_frame_us'])} | "
            f"{_f(r.get('speedup_vs_torch_cpu'), '.3g')} |")
    return rows


def _attention_table(res) -> list[str]:
    a = res["attention"]
    util = a.get("attention_utilization")
    rows = [f"{a['backbone']} head_dim {a['head_dim']} on `{a['config']}`'s {a['tile']} tiles, P = {a['P']}, "
            f"contract {a.get('contract', 1)}, Fmax {_f(a.get('fmax_mhz'), '.1f', 'n/a')} MHz; HMT segment length "
            f"{a['segment_length']}, sensory {a['sensory']}. RTL cycles: every ATTN_PASS of the plan run on the "
            "lane engine (Amaranth simulator) plus the top's cycle per operation, as CYCLES counts them; "
            "device µs = RTL cycles at Fmax, compute only (the link's transfers are separate). The "
            f"ATTENTION tile alone runs at {_f(100 * util, '.1f') + ' %' if util else 'n/a'} of the ideal.", "",
            "| causal block | positions | ATTN_PASS ops | MACs (one-pass MACs) | ideal cycles | RTL cycles | "
            "utilization | device µs | PyTorch CPU µs, one head | PyTorch CPU µs, one layer | golden numpy µs, one head |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in a["blocks"]:
        rows.append(f"| {b['what']} | {b['positions']} | {b['ops']} | {b['macs']:,} ({b['one_pass_macs']:,}) | "
                    f"{b['ideal_cycles']:,} | {b['rtl_cycles']:,} | {100 * b['utilization']:.1f} % | "
                    f"{_f(b['device_us'])} | "
                    f"{fmt_stat(b['torch_cpu_head_us'])} | {fmt_stat(b['torch_cpu_layer_us'])} | "
                    f"{fmt_stat(b['golden_numpy_head_us'])} |")
    t = a["per_segment"]
    rows.append(f"| **per head per segment** | | {t['ops']} | {t['macs']:,} | {t['ideal_cycles']:,} | "
                f"{t['rtl_cycles']:,} | {100 * t['utilization']:.1f} % | "
                f"{_f(t['device_us'])} | {_f(t['torch_cpu_head_us'])} | "
                f"{_f(t['torch_cpu_layer_us'])} | {_f(t['golden_numpy_head_us'])} |")
    return rows


def _sim_table(res) -> list[str]:
    rows = ["| what | figure |", "|---|---|"]
    s = res.get("sim")
    if s:
        rows.append(f"| Verilator top level ({s['config']}), cycles/s (lower bound) | "
                    f"{fmt_stat(s['cycles_per_s_lower_bound'], '.3g')} |")
        rows.append(f"| simulated RECALL, wall ms per transaction | {fmt_stat(s['recall_wall_ms'])} |")
        rows.append(f"| simulated WRITE_MEMORY, wall ms per transaction | {fmt_stat(s['write_wall_ms'])} |")
        rows.append(f"| LOAD_WEIGHTS ({s['load_weights_bytes']} wire bytes), s | {s['load_weights_s']:.2f} |")
        rows.append(f"| simulator start (build cached or not), s | {s['start_s']:.1f} |")
        if "rtl_cycles_agree" in s:
            rows.append(f"| Verilator CYCLES == Amaranth count + 1 (write {s['write_cycles']}, recall "
                        f"{s['recall_cycles']}) | {'yes' if s['rtl_cycles_agree'] else 'NO'} |")
    else:
        rows.append(f"| Verilator cycles/s | n/a: {res.get('reasons', {}).get('sim_cycles_per_s', 'not run')} |")
    for name, g in res.get("golden_ops_per_s", {}).items():
        rows.append(f"| golden model ({name}) recalls/s | {fmt_stat(g['recall_per_s'], '.3g')} |")
        rows.append(f"| golden model ({name}) writes/s | {fmt_stat(g['write_per_s'], '.3g')} |")
    return rows


def _run_table(res) -> list[str]:
    rows = ["| backend | backbone / engine | segments × tokens | tokens/s (whole run) | tokens/s per segment "
            "| model | device | checking | device time by op |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for backend in ("golden", "sim"):
        r = res.get("run", {}).get(backend)
        if not r:
            why = res.get("reasons", {}).get(f"run_tokens_per_s.{backend}", "not run")
            rows.append(f"| {backend} | n/a: {why} | | | | | | | |")
            continue
        sh = r["share"]
        by_op = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(r["device_seconds_by_op"].items(), key=lambda kv: -kv[1])[:4])
        rows.append(f"| {backend} | {r['backbone']} / {r['engine_config']} | {r['segments']} × {r['tokens_per_segment']} | "
                    f"{r['tokens_per_s']:.3g} | {fmt_stat(r['tokens_per_s_by_segment'])} | {sh['model']:.1%} | "
                    f"{sh['device']:.1%} | {sh['checking']:.1%} | {by_op} |")
    return rows


def _memory_table(res) -> list[str]:
    m = res.get("memory")
    if not m:
        return [f"n/a: {res.get('reasons', {}).get('memory', 'not run')}"]
    from hmtx.bench.memory import LABELS, MODES
    lengths = m["lengths"]
    rows = ["| mode | " + " | ".join(f"L={n}" for n in lengths) + " |", "|---|" + "---:|" * len(lengths)]
    for mode in MODES:
        cells = []
        for n in lengths:
            p = next((r for r in m["points"] if r.get("mode") == mode and r.get("length") == n), None)
            cells.append("n/a" if p is None else (p["error"][:40] if "error" in p else
                                                  f"{p['peak_rss_mb']:.0f} (+{p['growth_mb']:.0f})"))
        rows.append(f"| {LABELS[mode]} | " + " | ".join(cells) + " |")
    return rows


def markdown(res: dict, command: str | None = None) -> str:
    """All tables of a result, with the date, machine and command."""
    head = [f"Measured {res['date']} on {res['machine']}"
            + (f" (1-minute load average {res['machine_info']['load_avg_1m_at_start']:.1f} at the start; "
               "the CPU is shared)" if res.get("machine_info", {}).get("load_avg_1m_at_start") is not None else "")
            + "." + (f" Device and recall sections: **contract {res['contract']}** (docs/arithmetic.md "
                     "section 10)." if res.get("contract", 1) != 1 else ""), ""]
    runs = res.get("runs") or {}
    if len(runs) > 1:
        head += ["Sections were measured by these commands (each merged into the same JSON):", ""]
        head += [f"* {sec}: `{r['command']}` — {r['date']}, load average {_f(r.get('load_avg_1m_at_start'), '.1f')}"
                 + (f", {r['seconds']:.0f} s" if r.get("seconds") is not None else "")
                 for sec, r in sorted(runs.items(), key=lambda kv: _SECTION_ORDER.get(kv[0].split(" ")[0], 9))]
        head += [""]
    elif command:
        head += [f"Command: `{command}`", ""]
    head += [f"Timings are medians of {res['repeats']} repeats with [q1–q3] in brackets.", ""]
    parts = []
    if "device" in res:
        parts += ["### Device efficiency (RTL cycles vs ideal)", ""] + _device_table(res) + [""]
    if res.get("device_sweep"):
        parts += ["### Over N (cache slots) and P (MAC lanes)", ""] + _sweep_table(res) + [""]
    if "recall_speed" in res:
        parts += ["### One recall, every way it runs", ""] + _recall_table(res) + [""]
    if res.get("attention"):
        parts += ["### One attention head per segment (ATTN_PASS over the engine's tiles)", ""] + _attention_table(res) + [""]
    if "golden_ops_per_s" in res or "sim" in res:
        parts += ["### Simulation speed", ""] + _sim_table(res) + [""]
    if "run" in res:
        parts += ["### End to end: `hmtx run`", ""] + _run_table(res) + [""]
    if "memory" in res:
        parts += ["### Host peak memory (MiB; growth above the loaded model in brackets)", ""] + _memory_table(res) + [""]
    if res.get("link"):
        parts += ["### The link: UART divisors and time per segment", ""] + _link_tables(res) + [""]
    return "\n".join(head + parts)


def _link_tables(res) -> list[str]:
    rows = ["| board | clock MHz | baud | design divisor | design error | USB bridge error | mismatch |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for r in res.get("link_divisors") or []:
        rows.append(f"| {r['board']} | {r['clk_mhz']:g} | {r['baud']:,} | {r['divisor'] or 'refused'} | "
                    f"{_f(r['design_error'], '+.2%')} | "
                    f"{_f(r['usb_error'], '+.2%', 'beyond the ' + r['usb_bridge'])} | {_f(r.get('mismatch'), '+.2%')} |")
    rows += ["", "| config | baud | RECALL + WRITE_MEMORY bytes | work: wire + device ms | cache check "
             "(STATUS + READ_SLOT × fill) ms | per segment ms | weight load s | host s/segment | waiting share "
             "(work only) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in res["link"]:
        b = m["bytes"]
        rows.append(f"| {m['config']} (fill {m['fill']}) | {m['baud']:,} | {b.get('RECALL', 0) + b['WRITE_MEMORY']:,} | "
                    f"{m['work_s'] * 1e3:.2f} | {m['check_s'] * 1e3:.2f} | {m['segment_s'] * 1e3:.2f} | "
                    f"{m['weights_s']:.3f} | {_f(m.get('host_s_per_segment'), '.2f')} | "
                    + (f"{m['wait_share']:.1%} ({m['wait_share_work_only']:.2%})" if m.get("wait_share") is not None
                       else "n/a") + " |")
    over = [m for m in res["link"] if m.get("overlap_segment_s") is not None]
    rep = res.get("link_representation")
    if over:
        rows += ["", "Host wait per segment, blocking against the write overlapped (`hmtx run` default: "
                     "WRITE_MEMORY posted, on the wire and the device while the host runs the next segment's "
                     "representation pass"
                     + (f", {rep['seconds'] * 1e3:.1f} ms for {rep['tokens']} tokens of {rep['backbone']} here"
                        if rep else "")
                     + "; the RECALL and the cache check stay on the critical path):", "",
                 "| config | baud | RECALL: wire + device ms | WRITE_MEMORY: wire + device ms | hidden ms | "
                 "work: blocking → overlapped ms | per segment, whole-cache check ms | per segment, "
                 "`--cache-check written` ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m in over:
            rows.append(f"| {m['config']} (fill {m['fill']}) | {m['baud']:,} | {m['recall_s'] * 1e3:.2f} | "
                        f"{m['write_s'] * 1e3:.2f} | {m['overlap_hidden_s'] * 1e3:.2f} | "
                        f"{m['work_s'] * 1e3:.2f} → {m['overlap_work_s'] * 1e3:.2f} | "
                        f"{m['segment_s'] * 1e3:.2f} → {m['overlap_segment_s'] * 1e3:.2f} | "
                        f"{m['segment_written_s'] * 1e3:.2f} → {m['overlap_segment_written_s'] * 1e3:.2f} |")
    elif "link_representation" in (res.get("reasons") or {}):
        rows += ["", f"Overlapped write: {res['reasons']['link_representation']}"]
    dflt = [m for m in res["link"] if m.get("default_segment_s") is not None]
    if dflt:
        k = dflt[0]["full_check_every"]
        rows += ["", "`hmtx run`'s default per segment since protocol 1.2: RECALL without the probabilities "
                     "(flags 0: P_n and n back), WRITE_MEMORY overlapped where the representation pass was timed "
                     "(blocking otherwise), STATUS and the written slot read back, and the whole cache every "
                     f"{k} segments instead (spread over them); S_n + P_n: the RECALL's two vectors alone, "
                     "unframed:", "",
                 "| config | baud | RECALL bytes: with → without probabilities | RECALL ms: with → without | "
                 "S_n + P_n alone ms | WRITE_MEMORY not hidden ms | cache check ms | per segment ms | "
                 "host s/segment | waiting share |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for m in dflt:
            b = m["bytes"]
            rows.append(f"| {m['config']} (fill {m['fill']}) | {m['baud']:,} | {b['RECALL']:,} → "
                        f"{b['RECALL_NOPROBS']:,} | {m['recall_s'] * 1e3:.2f} → {m['default_recall_s'] * 1e3:.2f} | "
                        f"{m['s_p_floor_s'] * 1e3:.2f} | {m['default_write_s'] * 1e3:.2f} | "
                        f"{m['default_check_s'] * 1e3:.2f} | {m['default_segment_s'] * 1e3:.2f} | "
                        f"{_f(m.get('host_s_per_segment'), '.2f')} | {_f(m.get('wait_share_default'), '.2%')} |")
    meas = res.get("link_measured")
    if meas:
        rows += ["", f"Measured on the virtual board ({meas['board']} top, engine {meas['engine_config']}, "
                     f"{meas['clk_mhz']:g} MHz, {meas['baud']:,} baud, divisor {meas['divisor']}; "
                     f"simulated time = wire bits at the line rate + device cycles; segment 0 includes "
                     f"the weight load):", "",
                 "| segment | host → board bytes | board → host bytes | frames | simulated ms |",
                 "|---:|---:|---:|---:|---:|"]
        for i, s in enumerate(meas["segments"]):
            rows.append(f"| {i} | {s['bytes_out']} | {s['bytes_in']} | {s['frames']} | {s['seconds'] * 1e3:.3f} |")
    elif "link_measured" in (res.get("reasons") or {}):
        rows += ["", f"Virtual board: {res['reasons']['link_measured']}"]
    return rows


def write_doc_section(path: str, text: str, begin="<!-- bench:begin -->", end="<!-- bench:end -->") -> None:
    """Replace the text between the markers of ``path`` with ``text``."""
    with open(path) as f:
        doc = f.read()
    if begin not in doc or end not in doc:
        raise ValueError(f"{path}: markers {begin} / {end} not found")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{text}\n{end}{tail}")


def write_plots(res: dict, folder: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    paths = []
    cpu = f"{res['machine_info']['cpu']} ({res['machine_info']['cores']} cores)"
    runs = res.get("runs") or {}

    def when(section):
        # the date of the invocation that measured this section (results can be merged)
        r = runs.get(section) or next((v for k, v in runs.items() if k.startswith(section + " (")), None)
        return f"{(r or {}).get('date', res['date'])}, {cpu}"

    sweep = res.get("device_sweep") or []
    if sweep:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for name in dict.fromkeys(r["config"] for r in sweep):
            from hmtx.model.configs import get_config
            base = get_config(name)
            byn = sorted((r["N"], r["recall"]["utilization"]) for r in sweep if r["config"] == name and r["P"] == base.lanes)
            byp = sorted((r["P"], r["recall"]["utilization"], r["write"]["utilization"])
                         for r in sweep if r["config"] == name and r["N"] == base.n_slots)
            if byn:
                axes[0].plot(*zip(*byn), marker="o", label=f"{name} (P={base.lanes})")
            if byp:
                ps, ur, uw = zip(*byp)
                line, = axes[1].plot(ps, ur, marker="o", label=f"{name} recall (N={base.n_slots})")
                axes[1].plot(ps, uw, marker="s", ls="--", color=line.get_color(), label=f"{name} write")
        axes[0].set_xlabel("N (cache slots)")
        axes[1].set_xlabel("P (MAC lanes)")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_ylabel("utilization = ideal / measured cycles (%)")
            ax.set_ylim(0, 105)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[0].set_title("RECALL over a full cache")
        axes[1].set_title("RECALL and WRITE vs lanes")
        fig.suptitle(f"RTL utilization (Amaranth simulation) — {when('device')}", fontsize=9)
        fig.tight_layout()
        paths.append(os.path.join(folder, "utilization.png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    rs = res.get("recall_speed") or {}
    if rs:
        names = list(rs)
        series = [("PyTorch float, CPU", [rs[n]["torch_cpu_us"]["median"] for n in names]),
                  ("golden numpy", [rs[n]["golden_numpy_us"]["median"] for n in names]),
                  ("device compute at Fmax", [rs[n]["device_us"] or 0 for n in names]),
                  (f"device + {_uart_label(res)}", [rs[n].get("device_with_uart_us") or 0 for n in names])]
        if any(rs[n]["torch_cuda_us"] for n in names):
            series.insert(1, ("PyTorch float, CUDA", [(rs[n]["torch_cuda_us"] or {}).get("median", 0) for n in names]))
        fig, ax = plt.subplots(figsize=(8, 4))
        w = 0.8 / len(series)
        for i, (label, vals) in enumerate(series):
            xs = [k + i * w for k in range(len(names))]
            ax.bar(xs, [v if v else float("nan") for v in vals], w, label=label)
        ax.set_xticks([k + w * (len(series) - 1) / 2 for k in range(len(names))], names)
        ax.set_yscale("log")
        ax.set_ylabel("µs per recall (full cache), median")
        ax.set_title(f"One recall — {when('recall')}\n(device bars missing = not synthesized yet)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(os.path.join(folder, "recall_us.png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    run = res.get("run") or {}
    if run:
        fig, ax = plt.subplots(figsize=(7, 2.2 + 0.5 * len(run)))
        left = [0.0] * len(run)
        for part in ("model", "device", "checking"):
            vals = [run[b]["seconds"][part] / run[b]["tokens"] for b in run]
            ax.barh(list(run), vals, left=left, label=part)
            left = [a + b for a, b in zip(left, vals)]
        ax.set_xlabel("seconds per scored token")
        ax.set_title(f"hmtx run: where the time goes — {when('run')}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(os.path.join(folder, "run_time_split.png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    mem = res.get("memory")
    if mem and mem.get("points"):
        from hmtx.bench.memory import plot
        paths.append(plot(mem["points"], os.path.join(folder, "memory.png"),
                          f"{mem['backbone']}: host memory reading one document — {when('memory')}"))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--markdown")
    ap.add_argument("--plots")
    ap.add_argument("--write-doc", help="replace the <!-- bench:begin/end --> section of this file")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        res = json.load(f)
    text = markdown(res, res.get("command"))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.write_doc:
        write_doc_section(args.write_doc, text)
    if args.plots:
        for p in write_plots(res, args.plots):
            print(p)
    if not (args.markdown or args.write_doc or args.plots):
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
