"""Host memory: HMT reading a long document segment by segment vs the backbone reading it in one
full-attention pass (the paper's flat-memory claim), across document lengths.

Each point runs in its own Python process, so nothing one point allocated can hide or inflate
another's peak. The process loads the model, runs a warm-up pass over 8 tokens (which pages the
memory-mapped weights in), records its resident set (the baseline), resets the kernel's peak-RSS
mark (``/proc/self/clear_refs`` = 5), reads the document, and reports the peak resident set
(``VmHWM``) reached while reading — weights included — and the growth above the baseline. Modes:

``hmt``        HMT (float recall, N slots) over the document, one segment at a time; each
               segment's logits are dropped once yielded, as a streaming reader does.
``full``       the backbone, one forward over the whole document, logits for every position
               (what a perplexity evaluation computes), default attention (SDPA).
``full_last``  the same pass keeping only the last position's logits (``logits_to_keep=1``):
               the context's own cost without the vocabulary projection.
``full_eager`` as ``full_last`` with eager attention, which materializes the L x L scores of
               each layer (the textbook quadratic attention).

The SmolLM2 backbone is de-quantized from its GGUF once and cached as fp32 safetensors under
``build/bench/`` so that each point loads it in seconds.

    python -m hmtx.bench.memory [--backbone smollm2] [--lengths 256,1024,4096] [--plot PNG]
    python -m hmtx.bench.memory --point hmt 1024 --backbone tiny      (one point, JSON on stdout)
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hmtx.model.paths import REPO

__all__ = ["MODES", "measure_point", "run_points", "plot", "peak_rss_kb"]

CACHE = REPO / "build" / "bench"
MODES = ("hmt", "full", "full_last", "full_eager")
LABELS = {"hmt": "HMT, segment by segment", "full": "backbone, one pass (all logits)",
          "full_last": "backbone, one pass (last logit only)",
          "full_eager": "backbone, one pass, eager attention (last logit)"}


def _status_kb() -> dict:
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)
                if k in ("VmRSS", "VmHWM")}


def peak_rss_kb() -> int:
    return _status_kb()["VmHWM"]


def _reset_peak() -> None:
    # Linux >= 4.0: writing 5 resets VmHWM to the current RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _fp32_folder() -> Path:
    return CACHE / "smollm2-fp32"


def _load(backbone: str, attn: str):
    """(HF model, tokenizer-less Backbone-like tuple) for a point; SmolLM2 from the fp32 cache."""
    import torch

    from hmtx.model.backbone import Backbone, ByteTokenizer, tiny_llama

    if backbone == "tiny":
        bb = tiny_llama("cpu")
        if attn != "sdpa":
            bb.model.config._attn_implementation = attn
        return bb
    from transformers import AutoModelForCausalLM
    folder = _fp32_folder()
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is missing: run `python -m hmtx.bench.memory` (it caches the fp32 SmolLM2) first")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attn)
    model.eval()
    return Backbone("smollm2", model, ByteTokenizer(), 0)


def measure_point(mode: str, length: int, backbone: str, ids_path: str) -> dict:
    """One point in this process (see the module docstring); ``ids_path``: an .npy of token ids."""
    import numpy as np
    import torch

    from hmtx.model.defaults import BACKBONE_DEFAULTS
    from hmtx.model.configs import get_config
    from hmtx.model.hmt import HMT

    if mode not in MODES:
        raise ValueError(f"unknown memory mode {mode!r}; choose one of {', '.join(MODES)}")
    ids_all = np.load(ids_path)
    if ids_all.size < length:
        raise ValueError(f"{ids_path}: {ids_all.size} token ids, the point needs {length}")
    ids = torch.as_tensor(ids_all[:length].astype(np.int64))
    bb = _load(backbone, "eager" if mode == "full_eager" else "sdpa")
    hmt = None
    if mode == "hmt":
        cfg_name, seg_len, sensory = BACKBONE_DEFAULTS[backbone]
        cfg = get_config(cfg_name)
        hmt = HMT.from_backbone(bb, segment_length=seg_len, sensory=sensory, cache_size=cfg.n_slots,
                                d_h=cfg.d_h).eval()
    # Warm-up on a few tokens: pages the (memory-mapped) weights in and initializes the kernels'
    # workspaces, so that the baseline holds the whole loaded model and the growth is the
    # document's own cost.
    with torch.inference_mode():
        if hmt is not None:
            for _ in hmt.segments(hmt.new_state("hmt", "float"), ids[:8], final=True):
                pass
        else:
            bb.model(input_ids=ids[None, :8], use_cache=False, logits_to_keep=1)
    gc.collect()
    base = _status_kb()["VmRSS"]
    _reset_peak()
    t0 = time.perf_counter()
    with torch.inference_mode():
        if mode == "hmt":
            state = hmt.new_state("hmt", "float")
            segments = sum(1 for _ in hmt.segments(state, ids, final=True))
        else:
            keep = 0 if mode == "full" else 1
            out = bb.model(input_ids=ids[None], use_cache=False, logits_to_keep=keep)
            del out
            segments = 1
    seconds = time.perf_counter() - t0
    peak = peak_rss_kb()
    return {"mode": mode, "length": length, "backbone": backbone, "segments": segments,
            "baseline_rss_mb": base / 1024, "peak_rss_mb": peak / 1024, "growth_mb": (peak - base) / 1024,
            "seconds": seconds}


def _save_fp32(model, folder: Path) -> None:
    """The de-quantized weights as plain fp32 safetensors + config (transformers refuses
    ``save_pretrained`` on a GGUF-loaded model)."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    save_model(model, str(folder / "model.safetensors"))
    with open(folder / "config.json", "w") as f:
        json.dump(cfg, f, indent=1)


def prepare(backbone: str, max_length: int) -> str:
    """Token ids of one long WikiText-2 test article (.npy under build/bench), and for SmolLM2 the
    fp32 cache of the backbone. Returns the ids path."""
    import numpy as np

    from hmtx.model.defaults import DEFAULT_TEXT, pick_document
    from hmtx.model.backbone import load_backbone

    CACHE.mkdir(parents=True, exist_ok=True)
    ids_path = CACHE / f"doc_ids_{backbone}_{max_length}.npy"
    need_model = backbone == "smollm2" and not (_fp32_folder() / "config.json").is_file()
    if ids_path.is_file() and not need_model:
        return str(ids_path)
    bb = load_backbone(backbone, "cpu")
    if need_model:
        _save_fp32(bb.model, _fp32_folder())
    doc = pick_document(str(DEFAULT_TEXT), bb.tokenizer, max_length)
    np.save(ids_path, doc.ids[:max_length].numpy().astype(np.int32))
    return str(ids_path)


def run_points(backbone: str, lengths, modes=MODES, progress=None, timeout_s: float = 900) -> list[dict]:
    """Every (mode, length) point in its own process; a failed point is recorded with its error."""
    ids_path = prepare(backbone, max(lengths))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    rows = []
    for length in lengths:
        for mode in modes:
            cmd = [sys.executable, "-m", "hmtx.bench.memory", "--point", mode, str(length),
                   "--backbone", backbone, "--ids", ids_path]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout_s)
                if p.returncode != 0:
                    tail = (p.stderr or "").strip().splitlines()[-3:]
                    row = {"mode": mode, "length": length, "error": f"exit {p.returncode}: {' | '.join(tail)}"}
                else:
                    row = json.loads(p.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                row = {"mode": mode, "length": length, "error": f"timed out after {timeout_s:g} s"}
            rows.append(row)
            if progress:
                progress(row)
    return rows


def plot(rows: list[dict], path: str, title: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in MODES:
        pts = sorted((r["length"], r) for r in rows if r.get("mode") == mode and "error" not in r)
        if not pts:
            continue
        xs = [x for x, _ in pts]
        ax1.plot(xs, [r["peak_rss_mb"] for _, r in pts], marker="o", label=LABELS[mode])
        ax2.plot(xs, [r["growth_mb"] for _, r in pts], marker="o", label=LABELS[mode])
    ax1.set_ylabel("peak resident memory while reading (MiB)")
    ax2.set_ylabel("growth above the loaded model (MiB)")
    for ax in (ax1, ax2):
        ax.set_xlabel("document length (tokens)")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="smollm2", choices=("smollm2", "tiny"))
    ap.add_argument("--lengths", default="256,512,1024,2048,4096")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--plot", help="write the plot here (PNG)")
    ap.add_argument("--point", nargs=2, metavar=("MODE", "LENGTH"), help="measure one point in this process")
    ap.add_argument("--ids", help="token ids (.npy) for --point")
    args = ap.parse_args(argv)
    if args.point:
        ids = args.ids or prepare(args.backbone, int(args.point[1]))
        print(json.dumps(measure_point(args.point[0], int(args.point[1]), args.backbone, ids)))
        return 0
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = run_points(args.backbone, lengths, args.modes.split(","),
                      progress=lambda r: print(json.dumps(r), flush=True))
    if args.plot:
        plot(rows, args.plot, f"{args.backbone}: host memory vs document length")
    return 0


if __name__ == "__main__":
    sys.exit(main())
