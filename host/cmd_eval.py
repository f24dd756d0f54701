"""`hmtx eval`: perplexity of HMT (float and fixed recall) against its baselines (backbone, sliding
window, full context, RMT) and its recall-off ablation, on the same scored tokens."""

import contextlib
import json
import os
import sys

from . import cli_options

__all__ = ["register"]

DEFAULT_VARIANTS = ("backbone", "sliding", "full", "rmt", "hmt_norecall", "hmt_first", "hmt_float", "hmt_fixed")

UNTRAINED_NOTE = ("HMT's own parameters (T, W_q, W_k, memory token) are UNTRAINED (random init, "
                  "seed {seed}); RMT's memory token likewise. Their PPLs show the plumbing, not "
                  "HMT's benefit -- drop --untrained (smollm2: the shipped checkpoint) or give --checkpoint.")
RMT_SHARED_NOTE = ("RMT ran with the HMT checkpoint's memory token (no RMT checkpoint): that token was trained "
                   "for HMT's input layout, so the RMT column is not a baseline trained the same way.")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="perplexity per segment: HMT (float, fixed) against backbone, sliding window, full context, "
                     "RMT and HMT with the recall off",
        description="Token-weighted perplexity, on the same scored tokens of long documents, of: backbone (each "
                    "segment alone), sliding (the L-B document tokens before each segment: HMT's token budget, "
                    "no memory), full (the whole prefix up to the backbone's context limit), rmt, hmt_norecall "
                    "(HMT with the memory token in place of every recall: the ablation of the part the chip "
                    "accelerates), hmt_first (P_n = the oldest cached memory: the ablation of the search "
                    "alone), hmt_float and hmt_fixed (the chip's arithmetic). Reports recall gain = "
                    "1 - PPL(hmt) / PPL(hmt_norecall) and search gain = 1 - PPL(hmt_float) / PPL(hmt_first). By default "
                    "the smollm2 backbone runs the shipped checkpoints (checkpoints/smollm2-hmt for HMT, "
                    "checkpoints/smollm2-rmt for RMT); --untrained evaluates the seed initialisation.")
    p.add_argument("--merge", nargs="+", metavar="JSON[:VARIANTS]",
                   help="instead of evaluating: merge the JSON results of runs over the same documents with "
                        "disjoint variants (e.g. baselines and HMT run in parallel) into one table/JSON/plot; "
                        "FILE:v1,v2 takes only those variants of FILE")
    p.add_argument("--text", help="text file or folder of .txt files (WikiText files are "
                                                 "split into articles at ' = Title = ' headers), or a split "
                                                 "of the long-document corpus: longdocs:test|validation|train")
    p.add_argument("--segments", type=int, default=4, help="score the first N segments of each document")
    p.add_argument("--json", dest="json_out", help="write the results as JSON here")
    p.add_argument("--plot", help="write a PNG of PPL per segment here")
    p.add_argument("--age-plot", help="write a PNG of the float recall's probability mass by memory age here")
    cli_options.add_backbone(p)
    cli_options.add_checkpoint(p)
    p.add_argument("--rmt-checkpoint",
                   help="checkpoint whose memory token the RMT column uses (trained with `hmtx train --variant "
                        "rmt`); default for smollm2: the shipped checkpoints/smollm2-rmt; 'none': RMT uses "
                        "the HMT checkpoint's memory token")
    cli_options.add_torch_device(p)
    p.add_argument("--max-docs", type=int, help="use at most this many documents (the first long enough)")
    p.add_argument("--min-segments", type=int, default=1,
                   help="skip documents with fewer than this many full segments (e.g. = --segments, so "
                        "every segment index averages the same documents)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated subset of {','.join(DEFAULT_VARIANTS)} (default: all)")
    cli_options.add_hmt_sizes(p, "HMT sizes (only with --untrained or a backbone without a shipped checkpoint)")
    p.add_argument("--contract", type=int, choices=(1, 2), default=1,
                   help="arithmetic contract of hmt_fixed: 1, the chip's (default), or 2, the query projection "
                        "folded into the cached keys (docs/arithmetic.md, section 10)")
    p.add_argument("--offload-attention", metavar="SPEC",
                   help="run these backbone attention heads in the chip's integer arithmetic (every variant): "
                        "LAYERS[:HEADS] items joined by +, e.g. 29, 0-29, 29:0,3, all; 'none' = the same "
                        "eager attention path with nothing offloaded, the baseline to compare with")
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained HMT parameters")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        return _run(args)
    except ValueError as e:
        print(f"hmtx eval: error: {e}", file=sys.stderr)
        return 2


def _shown(path: str | None) -> str | None:
    """A checkpoint path as a saved result shows it: relative to the working directory when it
    lies below it, so results written in one clone read the same in another."""
    if path is None:
        return None
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _rmt_checkpoint(args, checkpoint: str | None, variants) -> str | None:
    from hmtx.model.defaults import default_checkpoint

    if "rmt" not in variants or checkpoint is None:
        if args.rmt_checkpoint not in (None, "none") and checkpoint is None:
            raise ValueError("--rmt-checkpoint needs a trained HMT beside it (drop --untrained)")
        return None
    if args.rmt_checkpoint == "none":
        return None
    if args.rmt_checkpoint:
        if not os.path.isdir(args.rmt_checkpoint):
            raise ValueError(f"--rmt-checkpoint {args.rmt_checkpoint!r}: no such folder")
        return args.rmt_checkpoint
    return default_checkpoint(args.backbone, "rmt")


def _run(args) -> int:
    if args.merge:
        return _merge(args)
    if not args.text:
        raise ValueError("give --text (or --merge JSON JSON...)")
    from hmtx.model.backbone import load_backbone
    from hmtx.model.evaluate import evaluate, format_table
    from hmtx.model.hmt import HMT
    from hmtx.model.text import load_documents, tokenize_documents

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = cli_options.torch_device(args.torch_device)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in variants if v not in DEFAULT_VARIANTS]
    if unknown or not variants:
        raise ValueError(f"--variants: unknown {', '.join(unknown) or '(none given)'}; choose from "
                         f"{','.join(DEFAULT_VARIANTS)}")
    if args.offload_attention and args.offload_attention != "none":
        from hmtx.model.attention_offload import check_offload_spec
        check_offload_spec(args.offload_attention)          # the syntax, before the slow load
    if args.age_plot and "hmt_float" not in variants:
        raise ValueError("--age-plot shows the float recall: include hmt_float in --variants")
    _check_outputs(args)
    checkpoint = cli_options.resolve_checkpoint(args)
    cli_options.check_sizes_match(args, checkpoint)
    rmt_checkpoint = _rmt_checkpoint(args, checkpoint, variants)
    if rmt_checkpoint:
        from hmtx.model.hmt import read_checkpoint
        read_checkpoint(rmt_checkpoint)                  # a damaged one fails now, not after the load
    docs = load_documents(args.text)                     # fail on bad text before the slow load
    backbone = load_backbone(args.backbone, device)
    rmt_model = None
    if checkpoint:
        # A trained folder may also hold LoRA or backbone weights; load_trained applies them.
        from hmtx.model.train import load_trained
        model = load_trained(checkpoint, backbone)
        if rmt_checkpoint:
            rmt_model = _load_rmt(rmt_checkpoint, checkpoint, backbone, model)
    else:
        model = HMT.from_backbone(backbone, **cli_options.hmt_sizes(args), seed=args.seed)
    model.to(device).eval()
    model.recall.contract = args.contract
    if rmt_model is not None:
        rmt_model.to(device).eval()
    tokens = tokenize_documents(docs, backbone.tokenizer)
    offload = contextlib.nullcontext(None)
    if args.offload_attention:
        from hmtx.model.attention_offload import offloaded_attention
        lms = [model.lm] + ([rmt_model.lm] if rmt_model is not None and rmt_model.lm is not model.lm else [])
        offload = contextlib.ExitStack()
        for lm in lms:
            offload.enter_context(offloaded_attention(lm, None if args.offload_attention == "none"
                                                      else args.offload_attention))
    with offload:
        result = evaluate(model, tokens, args.segments, variants=variants, max_docs=args.max_docs,
                          min_segments=args.min_segments, progress=not args.quiet, rmt_model=rmt_model)
    trained = bool(checkpoint)
    result["config"].update({"text": args.text, "checkpoint": _shown(checkpoint),
                             "rmt_checkpoint": _shown(rmt_checkpoint), "device": str(device),
                             "contract": args.contract, "offload_attention": args.offload_attention})
    result["trained"] = trained
    notes = []
    if not trained:
        notes.append(UNTRAINED_NOTE.format(seed=model.config.seed))
    elif "rmt" in variants and rmt_model is None:
        notes.append(RMT_SHARED_NOTE)
    if notes:
        result["note"] = " ".join(notes)
    print(format_table(result))
    diff = result.get("recall_fixed_vs_float")
    if diff:
        print(f"fixed vs float recall over {diff['recalls']} searches: max |dP| = {diff['max_abs']:.4g} "
              f"(max |P| {diff['p_float_max_abs']:.4g}), relative L2 max {diff['rel_l2_max']:.4g} "
              f"mean {diff['rel_l2_mean']:.4g}, max |d prob| {diff['probs_max_abs']:.4g}; rounding P_float "
              f"itself to BFP8 costs {diff['p_float_bfp8_rel_l2_mean']:.4g} (mean relative L2)")
    print(f"checkpoints: HMT {checkpoint or 'none (untrained)'}; RMT "
          f"{rmt_checkpoint or ('the HMT one' if trained else 'none (untrained)')}")
    if notes:
        print("note: " + result["note"])
    _write_outputs(args, result)
    return 0


def _check_outputs(args) -> None:
    """Refuse unwritable output paths before any work."""
    for flag, path in (("--json", args.json_out), ("--plot", args.plot), ("--age-plot", args.age_plot)):
        cli_options.check_output_path(path, flag)


def _write_outputs(args, result: dict) -> None:
    from hmtx.model.evaluate import plot_per_segment, plot_recall_age

    for path in (args.json_out, args.plot, args.age_plot):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        plot_per_segment(result, args.plot)
    if args.age_plot and "recall_mass_by_age" in result:
        plot_recall_age(result, args.age_plot)


def _pick(result: dict, variants: list, path: str) -> dict:
    """Only ``variants`` of a result (and only what describes them)."""
    missing = [v for v in variants if v not in result["ppl"]]
    if missing:
        raise ValueError(f"--merge {path}: has no variant {', '.join(missing)}")
    out = dict(result, ppl={v: result["ppl"][v] for v in variants},
               per_segment={k: v for k, v in result["per_segment"].items() if k in ("segment", "tokens") or k in variants})
    hmt = {"hmt_float": ("recall_fixed_vs_float", "recall_mass_by_age"), "full": ("full_context",)}
    for variant, keys in hmt.items():
        if variant not in variants:
            for k in keys:
                out.pop(k, None)
    out.pop("recall_gain", None)
    return out


def _merge(args) -> int:
    from hmtx.model.evaluate import format_table, merge_results

    _check_outputs(args)
    results = []
    for spec in args.merge:
        path, _, picked = spec.rpartition(":")
        if not path or not set(picked.split(",")) <= set(DEFAULT_VARIANTS):
            path, picked = spec, ""
        try:
            with open(path) as f:
                results.append(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--merge {path}: cannot read an evaluation result ({e})") from None
        if not isinstance(results[-1], dict) or not {"ppl", "per_segment", "config"} <= set(results[-1]):
            raise ValueError(f"--merge {path}: not an `hmtx eval --json` result")
        if picked:
            results[-1] = _pick(results[-1], picked.split(","), path)
    result = merge_results(results)
    print(format_table(result))
    _write_outputs(args, result)
    return 0


def _load_rmt(folder: str, hmt_folder: str, backbone, model):
    """The RMT baseline's own checkpoint, sharing the (frozen) backbone of ``model``."""
    from hmtx.model.hmt import read_checkpoint
    from hmtx.model.train import _read_adapter, load_trained

    config, _ = read_checkpoint(folder)
    for name in ("backbone", "segment_length", "sensory"):
        if getattr(config, name) != getattr(model.config, name):
            raise ValueError(f"--rmt-checkpoint {folder}: its {name} is {getattr(config, name)!r}, the HMT "
                             f"checkpoint's {getattr(model.config, name)!r} (both must cut documents alike)")
    # The two models share one backbone object: an adapted backbone in either would leak into the other.
    for f in (folder, hmt_folder):
        if _read_adapter(f)[0] != "frozen":
            raise ValueError(f"{f} adapts the backbone (LoRA/full); evaluate HMT and RMT of such checkpoints "
                             f"in separate runs (--checkpoint X --rmt-checkpoint none --variants ...)")
    return load_trained(folder, backbone)
