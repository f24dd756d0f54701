"""End to end: `hmtx run` tokens per second on each device backend, and where the wall time goes.

The document run is exactly ``hmtx.host.runtime.run_document`` as `hmtx run` calls it by
default (three variants per segment: backbone only, HMT float, HMT on the device; every device
answer checked inline against the golden arithmetic; the cache read back after each segment).
Three clocks are kept while it runs:

* device: time inside ``Device.transact``, ``post`` and ``collect`` (frames out, answers back:
  the time the host is held by the backend; a write posted while the host computes costs only
  its sending and whatever of its answer is still to wait for when it is collected);
* checking: time inside the runtime's ``CheckedDevice`` methods minus the device time inside
  them (the golden arithmetic on the mirror, comparisons, the case log);
* model: everything else — the backbone passes of every variant and the float reference recall
  in torch.

Tokens/s is scored tokens over the run's wall time; the per-segment rates give the median and
spread (segment 0 and 1 run no recall, so the spread shows the recall's cost).

    python -m hmtx.bench.end_to_end [--backbone tiny] [--device golden] [--segments 4]
"""

import argparse
import contextlib
import inspect
import sys
import time

from hmtx.bench.stats import fmt_stat, summarize

__all__ = ["run_backend", "timing_probes"]


class _Clock:
    def __init__(self):
        self.device = 0.0
        self.device_by_op = {}
        self.checked = 0.0
        self._depth = 0
        self._device_in_checked = 0.0
        self._in_device = False

    @property
    def checking(self) -> float:
        return self.checked - self._device_in_checked


@contextlib.contextmanager
def timing_probes(device, clock: _Clock):
    """Time ``device.transact`` and the runtime's CheckedDevice methods while the block runs.

    The runtime builds its CheckedDevice itself, so the class it looks up is swapped for a
    timing subclass for the duration of the block (restored afterwards, even on error)."""
    from hmtx.host import runtime

    def probe(inner, op_of):
        def call(*a, **kw):
            if clock._in_device:                 # transact/post collect a posted command first
                return inner(*a, **kw)
            name = op_of(a)
            clock._in_device = True
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                clock._in_device = False
                dt = time.perf_counter() - t0
                clock.device += dt
                clock.device_by_op[name] = clock.device_by_op.get(name, 0.0) + dt
                if clock._depth:
                    clock._device_in_checked += dt
        return call

    def op_name(a):
        return getattr(a[0], "name", str(a[0]))

    def pending_name(a):
        p = getattr(device, "pending", None)
        return f"{p.op.name} (collected)" if p is not None else "collect"

    patched = {"transact": probe(device.transact, op_name)}
    if hasattr(device, "post"):                  # split-phase commands (a posted WRITE_MEMORY)
        patched["post"] = probe(device.post, lambda a: f"{op_name(a)} (posted)")
        patched["collect"] = probe(device.collect, pending_name)

    def timed(method):
        def wrapper(self, *a, **kw):
            if clock._depth:                     # called by another timed method (settle)
                return method(self, *a, **kw)
            clock._depth += 1
            t0 = time.perf_counter()
            try:
                return method(self, *a, **kw)
            finally:
                clock.checked += time.perf_counter() - t0
                clock._depth -= 1
        return wrapper

    base = runtime.CheckedDevice
    methods = [m for m in ("reset", "load_weights", "write", "recall", "check_cache", "settle") if hasattr(base, m)]
    timed_cls = type("TimedCheckedDevice", (base,), {name: timed(getattr(base, name)) for name in methods})
    for name, f in patched.items():
        setattr(device, name, f)
    runtime.CheckedDevice = timed_cls
    try:
        yield clock
    finally:
        runtime.CheckedDevice = base
        for name in patched:
            delattr(device, name)


def run_backend(backend: str, *, backbone: str = "tiny", segments: int = 4, config: str | None = None,
                model_cache: dict | None = None, overlap: bool = True) -> dict:
    """One `hmtx run` document on ``backend`` (golden | sim) with the time split; see the module
    docstring. ``model_cache`` (a dict) keeps the loaded backbone/HMT between backends."""
    import torch

    from hmtx.host.backends import open_transport
    from hmtx.model.defaults import (BACKBONE_DEFAULTS, DEFAULT_CHECKPOINT, DEFAULT_TEXT, engine_config,
                                     pick_document)
    from hmtx.host.device import Device
    from hmtx.host.runtime import run_document
    from hmtx.model.backbone import load_backbone
    from hmtx.model.hmt import HMT, load_checkpoint

    cache = model_cache if model_cache is not None else {}
    if cache.get("backbone_name") != backbone:
        bb = load_backbone(backbone, torch.device("cpu"))
        cfg = engine_config(backbone, bb.d, config)
        _, seg_len, sensory = BACKBONE_DEFAULTS[backbone]
        ckpt = str(DEFAULT_CHECKPOINT) if backbone == "smollm2" and DEFAULT_CHECKPOINT.is_dir() else None
        if ckpt:
            model = load_checkpoint(ckpt, bb)
        else:
            model = HMT.from_backbone(bb, segment_length=seg_len, sensory=sensory,
                                      cache_size=cfg.n_slots, d_h=cfg.d_h)
        model.eval()
        # Warm-up: the first passes of a process initialize the CPU kernels for each shape; the
        # first backend measured must not pay for that alone.
        with torch.inference_mode():
            warm = torch.zeros(1, model.config.segment_length, dtype=torch.long)
            for _ in range(2):
                bb.model(input_ids=warm, use_cache=False, logits_to_keep=1)
        cache.update(backbone_name=backbone, bb=bb, cfg=cfg, model=model, checkpoint=ckpt)
    bb, cfg, model = cache["bb"], cache["cfg"], cache["model"]
    need = segments * model.config.tokens_per_segment
    doc = pick_document(str(DEFAULT_TEXT), bb.tokenizer, need)

    t0 = time.perf_counter()
    transport = open_transport(backend, cfg)
    try:
        device = Device(transport, cfg)
    except BaseException:
        transport.close()
        raise
    open_s = time.perf_counter() - t0
    # `hmtx run`'s default reference: every device answer checked inline against the golden
    # arithmetic, no separate fixed-recall model stream (when this runtime offers the choice).
    inline = {"fixed_stream": False} if "fixed_stream" in inspect.signature(run_document).parameters else {}
    if "overlap" in inspect.signature(run_document).parameters:
        inline["overlap"] = overlap
    marks = [time.perf_counter()]
    clock = _Clock()
    try:
        with timing_probes(device, clock):
            res = run_document(model, doc.ids, device, cfg, segments, **inline,
                               progress=lambda seg, r: marks.append(time.perf_counter()))
    finally:
        device.close()
    if res.mismatch is not None:
        raise RuntimeError(f"bench run on {backend} hit a mismatch: {res.mismatch.describe()}")
    wall = res.wall_s
    per_seg = [c / (b - a) for c, a, b in zip(res.counts, marks, marks[1:])]
    model_s = max(wall - clock.device - clock.checking, 0.0)
    return {
        "backend": backend, "backbone": backbone, "engine_config": cfg.name, "segments": res.segments,
        "overlap": inline.get("overlap"),
        "tokens": res.tokens, "tokens_per_segment": model.config.tokens_per_segment,
        "checkpoint": cache.get("checkpoint"), "document": doc.name,
        "open_s": open_s, "wall_s": wall,
        "tokens_per_s": res.tokens / wall,
        "tokens_per_s_by_segment": summarize(per_seg).to_dict(),
        "seconds": {"model": model_s, "device": clock.device, "checking": clock.checking},
        "share": {"model": model_s / wall, "device": clock.device / wall, "checking": clock.checking / wall},
        "device_seconds_by_op": clock.device_by_op,
        "device_cycles": res.device_cycles,
        "ops_checked": res.ops_checked,
        "variants": [v for v in res.VARIANTS if res.nll.get(v)],
        "ppl": {v: res.ppl(v) for v in res.VARIANTS if res.nll.get(v)},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tiny", choices=("tiny", "smollm2"))
    ap.add_argument("--device", default="golden", help="golden,sim (comma-separated)")
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--no-overlap", dest="overlap", action="store_false",
                    help="wait for every write's answer (the blocking schedule)")
    ap.add_argument("--both", action="store_true", help="run each backend with and without overlap")
    args = ap.parse_args(argv)
    cache = {}
    for backend in args.device.split(","):
        for overlap in ((False, True) if args.both else (args.overlap,)):
            r = run_backend(backend, backbone=args.backbone, segments=args.segments, model_cache=cache,
                            overlap=overlap)
            sh = r["share"]
            by_op = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in sorted(r["device_seconds_by_op"].items())
                              if k.startswith(("WRITE_MEMORY", "RECALL", "STATUS", "READ_SLOT")))
            print(f"{backend}{'' if overlap else ' (no overlap)'}: {r['tokens_per_s']:.1f} tokens/s "
                  f"({r['tokens']} tokens in {r['wall_s']:.1f} s; per segment "
                  f"{fmt_stat(r['tokens_per_s_by_segment'])}); model {sh['model']:.0%}, device {sh['device']:.0%} "
                  f"({r['seconds']['device']:.2f} s), checking {sh['checking']:.0%}; host held, ms: {by_op}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
