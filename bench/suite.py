"""The whole benchmark: every section of `hmtx bench`, one JSON document.

Sections (``SECTIONS``), each independent; a section that cannot run here (no synthesis
report, no simulator, ``--quick``) leaves its figures ``null`` with the reason next to them:

``device``   RTL cycles vs ideal per named config and over N and P (bench.efficiency)
``recall``   µs per recall: device at Fmax, PyTorch float CPU/CUDA, golden (bench.recall_speed)
``sim``      Verilator cycles/s of the top level; golden ops/s (bench.sim_speed)
``run``      `hmtx run` tokens/s per backend with the time split (bench.end_to_end)
``memory``   host peak memory, HMT vs one full-attention pass (bench.memory)
``attention`` one backbone attention head per HMT segment: the ATTN_PASS plan on the engine's
             tiles, its ideal cycles (at Fmax a lower bound of the device's time) against
             PyTorch on the CPU and the golden model (bench.attention_speed)
``link``     UART divisor table, wire + device time per segment at 1 Mbaud and the default rate,
             the share of a segment spent waiting, and (not --quick) the virtual board measured
             (bench.link)
"""

import time
import traceback

from hmtx.bench import efficiency, fmax as fmax_mod, recall_speed, sim_speed, stats

__all__ = ["SECTIONS", "Options", "run_suite", "FORMAT"]

FORMAT = "hmtx-bench-1"
SECTIONS = ("device", "recall", "attention", "sim", "run", "memory", "link")


class Options:
    """What to run and how long: ``quick`` is the tiny config with few repeats (make test)."""

    def __init__(self, quick=False, sections=SECTIONS, repeats=None, run_segments=None,
                 run_backbone=None, run_backends=None, memory_backbone=None, memory_lengths=None,
                 sim_config=None, prior=None, log=print, contract=1):
        self.quick = quick
        # the arithmetic contract of the device and recall sections (the engine built for it,
        # its synthesis report, its golden recall); the other sections run contract 1
        self.contract = contract
        # an earlier result whose sections this run does not repeat (e.g. the device cycles a
        # re-run of the recall section divides by Fmax)
        self.prior = prior or {}
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown bench section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
        self.sections = tuple(s for s in SECTIONS if s in sections)
        self.configs = ("tiny",) if quick else ("tiny", "up5k", "smollm")
        self.headline = "tiny" if quick else "smollm"
        self.sweep = efficiency.QUICK_SWEEP if quick else efficiency.FULL_SWEEP
        self.repeats = repeats or (5 if quick else 21)
        self.run_segments = run_segments or (3 if quick else 6)
        self.run_backbone = run_backbone or ("tiny" if quick else "smollm2")
        self.run_backends = run_backends or (("golden",) if quick else ("golden", "sim"))
        self.memory_backbone = memory_backbone or "smollm2"
        self.memory_lengths = memory_lengths or (256, 512, 1024, 2048, 4096)
        self.sim_config = sim_config or self.headline
        self.log = log


def _reason(exc: BaseException) -> str:
    return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def run_suite(opts: Options) -> dict:
    from hmtx.model.configs import get_config

    info = stats.machine_info()
    out = {"format": FORMAT, "date": info["date_utc"], "machine": stats.machine_string(info),
           "machine_info": info, "quick": opts.quick, "repeats": opts.repeats,
           "sections": list(opts.sections), "seconds": {}, "reasons": {}, "contract": opts.contract}
    log = opts.log
    configs = [get_config(n) for n in opts.configs]

    def section(name, fn):
        if name not in opts.sections:
            return
        t0 = time.perf_counter()
        log(f"[bench] {name} ...")
        fn()
        out["seconds"][name] = round(time.perf_counter() - t0, 2)
        log(f"[bench] {name} done in {out['seconds'][name]:.1f} s")

    # -- device efficiency --------------------------------------------------------------------
    def device():
        out["device"] = {}
        for cfg in configs:
            out["device"][cfg.name] = efficiency.measure_point(cfg, opts.contract)
            r = out["device"][cfg.name]["recall"]
            log(f"  {cfg.name}: recall {r['cycles']} cycles, ideal {r['ideal']} ({r['utilization']:.1f}%)")
        out["device_sweep"] = efficiency.sweep_points(
            opts.sweep, progress=lambda row: log(f"  {row['config']} N={row['N']} P={row['P']}: recall "
                                                 f"{row['recall']['cycles']} cycles ({row['recall']['utilization']:.1f}%)"),
            contract=opts.contract)
    section("device", device)

    # -- Fmax and µs per recall ---------------------------------------------------------------
    def recall():
        # Fmax is read with the timings it turns into µs (a later run of another section must
        # not pair these timings with a newer report)
        fm = fmax_mod.fmax_table(configs, contract=opts.contract)
        out["fmax"] = fm
        out["fmax_mhz"] = {k: v["fmax_mhz"] for k, v in fm.items()}
        out["recall_speed"] = {}
        for cfg in configs:
            dev = (out.get("device") or opts.prior.get("device") or {}).get(cfg.name)
            cyc = {"recall": dev["recall"]["cycles"], "write": dev["write"]["cycles"]} if dev else None
            r = recall_speed.measure_config(cfg, opts.repeats, cyc, fm.get(cfg.name), opts.contract)
            out["recall_speed"][cfg.name] = r
            log(f"  {cfg.name}: torch cpu {stats.fmt_stat(r['torch_cpu_us'])} us, golden "
                f"{stats.fmt_stat(r['golden_numpy_us'])} us, device "
                f"{'%.3g us' % r['device_us'] if r['device_us'] else r.get('device_reason')}")
        h = out["recall_speed"][opts.headline]
        out["us_per_recall"] = {
            "config": opts.headline, "n_keys": h["n_keys"],
            "device": h["device_us"], "device_fmax_mhz": h["fmax_mhz"],
            "device_with_uart": h.get("device_with_uart_us"),
            "torch_cpu": h["torch_cpu_us"]["median"],
            "torch_cuda": h["torch_cuda_us"]["median"] if h["torch_cuda_us"] else None,
            "golden_numpy": h["golden_numpy_us"]["median"],
        }
        if h["device_us"] is None:
            out["reasons"]["us_per_recall.device"] = h["device_reason"]
        if h["torch_cuda_us"] is None:
            out["reasons"]["us_per_recall.torch_cuda"] = h["torch_cuda_reason"]
    section("recall", recall)

    # -- attention heads ----------------------------------------------------------------------
    def attention():
        from hmtx.bench import attention_speed
        from hmtx.model.defaults import run_sizes
        from hmtx.model.hmt import HMTConfig

        cfg = get_config(opts.headline)
        backbone = "tiny" if opts.quick else "smollm2"
        hmt_cfg = HMTConfig(backbone=backbone, cache_size=cfg.n_slots, d_h=cfg.d_h, **run_sizes(backbone))
        heads = (4, 2) if opts.quick else (9, 3)        # the backbone's query and KV heads per layer
        dev = (out.get("device") or opts.prior.get("device") or {}).get(cfg.name)
        # (the newest synthesis report, unless this run's recall section read one)
        fm = out.get("fmax") or fmax_mod.fmax_table([cfg], contract=opts.contract)
        r = attention_speed.measure(cfg, hmt_cfg, opts.repeats, dev["attention"] if dev else None,
                                    (fm.get(cfg.name) or {}).get("fmax_mhz"), *heads, contract=opts.contract)
        r["backbone"], r["segment_length"], r["sensory"] = backbone, hmt_cfg.segment_length, hmt_cfg.sensory
        out["attention"] = r
        t = r["per_segment"]
        log(f"  {cfg.name}: {t['ops']} ATTN_PASS ops, {t['rtl_cycles']} RTL cycles per head per segment "
            f"({100 * t['utilization']:.1f} % of the ideal); torch cpu {t['torch_cpu_head_us']:.0f} us, device "
            + (f"{t['device_us']:.0f} us" if t["device_us"] else "n/a"))
    section("attention", attention)

    # -- simulation speed ---------------------------------------------------------------------
    def sim():
        out["golden_ops_per_s"] = {}
        for cfg in configs:
            out["golden_ops_per_s"][cfg.name] = sim_speed.golden_ops(cfg, opts.repeats)
        h = out["golden_ops_per_s"][opts.headline]
        out["golden_recalls_per_s"] = h["recall_per_s"]["median"]
        if opts.quick:
            out["sim_cycles_per_s"] = None
            out["reasons"]["sim_cycles_per_s"] = "skipped in --quick (needs a Verilator build of the top level)"
            return
        cfg = get_config(opts.sim_config)
        try:
            s = sim_speed.verilator_speed(cfg, recalls=10)
        except Exception as e:     # no simulator here, build failure: say so, keep the rest
            out["sim_cycles_per_s"] = None
            out["reasons"]["sim_cycles_per_s"] = _reason(e)
            log(traceback.format_exc())
            return
        out["sim"] = s
        out["sim_cycles_per_s"] = s["cycles_per_s_lower_bound"]["median"]
        dev = (out.get("device") or opts.prior.get("device") or {}).get(cfg.name)
        if dev:
            # The top level counts one cycle more than the engine (frame validated -> start).
            s["rtl_cycles_agree"] = (s["recall_cycles"] == dev["recall"]["cycles"] + 1
                                     and s["write_cycles"] == dev["write"]["cycles"] + 1)
        log(f"  Verilator {cfg.name}: >= {out['sim_cycles_per_s']:.3g} cycles/s, recall "
            f"{stats.fmt_stat(s['recall_wall_ms'])} ms wall")
    section("sim", sim)

    # -- end to end -----------------------------------------------------------------------------
    def run():
        from hmtx.bench import end_to_end

        out["run"] = {}
        out["run_tokens_per_s"] = {b: None for b in ("golden", "sim")}
        cache = {}
        for backend in ("golden", "sim"):
            if backend not in opts.run_backends:
                out["reasons"][f"run_tokens_per_s.{backend}"] = (
                    "skipped in --quick (needs a Verilator build)" if opts.quick else "not requested")
                continue
            try:
                r = end_to_end.run_backend(backend, backbone=opts.run_backbone, segments=opts.run_segments,
                                           model_cache=cache)
            except Exception as e:
                out["reasons"][f"run_tokens_per_s.{backend}"] = _reason(e)
                log(traceback.format_exc())
                continue
            out["run"][backend] = r
            out["run_tokens_per_s"][backend] = r["tokens_per_s"]
            sh = r["share"]
            log(f"  {backend}: {r['tokens_per_s']:.2f} tokens/s; model {sh['model']:.0%}, device "
                f"{sh['device']:.0%}, checking {sh['checking']:.0%}")
    section("run", run)

    # -- memory ---------------------------------------------------------------------------------
    def memory():
        from hmtx.bench import memory as mem

        if opts.quick:
            out["memory"] = None
            out["reasons"]["memory"] = "skipped in --quick (one process per point)"
            return
        rows = mem.run_points(opts.memory_backbone, opts.memory_lengths,
                              progress=lambda r: log(f"  {r['mode']} L={r['length']}: "
                                                     + (f"peak {r['peak_rss_mb']:.0f} MiB, +{r['growth_mb']:.0f} MiB"
                                                        if "error" not in r else r["error"])))
        out["memory"] = {"backbone": opts.memory_backbone, "lengths": list(opts.memory_lengths), "points": rows}
    section("memory", memory)

    # -- the link -----------------------------------------------------------------------------
    def link():
        from hmtx.bench import link as lk
        from hmtx.host.runtime import FULL_CHECK_EVERY
        from hmtx.hw.board import DEFAULT_BAUD

        out["link_divisors"] = lk.divisor_rows()
        clk = lk.board_clock_hz("ulx3s-85f")
        run = (out.get("run") or opts.prior.get("run") or {}).get("golden")
        # The host work a posted WRITE_MEMORY hides behind: the next segment's representation
        # pass, on the backbone whose d is the config's (SmolLM2 for smollm; --quick: none).
        rep = None
        if not opts.quick:
            try:
                rep = lk.representation_pass_s("smollm2")
                log(f"  representation pass (SmolLM2, {rep['tokens']} tokens): {rep['seconds'] * 1e3:.1f} ms")
            except Exception as e:
                out["reasons"]["link_representation"] = _reason(e)
        else:
            out["reasons"]["link_representation"] = "skipped in --quick (loads SmolLM2)"
        out["link_representation"] = rep
        rows = []
        for cfg in configs:
            dev = (out.get("device") or opts.prior.get("device") or {}).get(cfg.name)
            cyc = {"recall": dev["recall"]["cycles"], "write": dev["write"]["cycles"]} if dev else None
            host_s = None
            if run and run["engine_config"].split("-d")[0] == cfg.name:
                host_s = run["seconds"]["model"] / run["segments"]
            traffic = lk.segment_traffic(cfg)
            for baud in sorted({1_000_000, DEFAULT_BAUD}):
                m = lk.link_model(cfg, baud, clk, cyc, traffic, host_s,
                                  representation_s=rep["seconds"] if rep and cfg.d == 576 else None,
                                  full_check_every=FULL_CHECK_EVERY)
                rows.append(m)
                log(f"  {cfg.name} @ {baud / 1e6:g} Mbaud: work {m['work_s'] * 1e3:.2f} ms, cache check "
                    f"{m['check_s'] * 1e3:.1f} ms per segment")
        out["link"] = rows
        if opts.quick:
            out["link_measured"] = None
            out["reasons"]["link_measured"] = "skipped in --quick (needs a Verilator build of the board top)"
            return
        try:
            out["link_measured"] = lk.measure_board(segments=4, log=log)
        except Exception as e:
            out["link_measured"] = None
            out["reasons"]["link_measured"] = _reason(e)
            log(traceback.format_exc())
    section("link", link)
    return out
