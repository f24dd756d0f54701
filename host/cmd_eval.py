"""`hmtx eval`: perplexity of backbone-only, RMT, HMT-float and HMT-fixed on long documents."""

import json
import os
import sys

__all__ = ["register"]

UNTRAINED_NOTE = ("HMT's own parameters (T, W_q, W_k, memory token) are UNTRAINED (random init, "
                  "seed {seed}); RMT's memory token likewise. Their PPLs show the plumbing, not "
                  "HMT's benefit -- load a trained checkpoint with --checkpoint.")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="perplexity per segment: backbone, RMT, HMT (float and fixed-point recall)",
        description="Token-weighted perplexity of backbone-only, RMT, HMT with float recall and HMT "
                    "with the fixed-point recall, on the same scored tokens of long documents.")
    p.add_argument("--text", required=True, help="text file or folder of .txt files (WikiText files are "
                                                 "split into articles at ' = Title = ' headers)")
    p.add_argument("--segments", type=int, default=4, help="score the first N segments of each document")
    p.add_argument("--json", dest="json_out", help="write the results as JSON here")
    p.add_argument("--plot", help="write a PNG of PPL per segment here")
    p.add_argument("--backbone", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--checkpoint", help="HMT checkpoint folder (hmt_config.json + hmt.safetensors)")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda[:i]")
    p.add_argument("--max-docs", type=int, help="use at most this many documents (the first long enough)")
    p.add_argument("--min-segments", type=int, default=1,
                   help="skip documents with fewer than this many full segments (e.g. = --segments, so "
                        "every segment index averages the same documents)")
    p.add_argument("--variants", default="backbone,rmt,hmt_float,hmt_fixed",
                   help="comma-separated subset of backbone,rmt,hmt_float,hmt_fixed")
    g = p.add_argument_group("HMT sizes (without --checkpoint)")
    g.add_argument("--segment-length", type=int, default=512, help="L (B = L - 2 - k new tokens)")
    g.add_argument("--sensory", type=int, default=32, help="k")
    g.add_argument("--cache-size", type=int, default=64, help="N")
    g.add_argument("--d-h", type=int, default=256, help="memory-search width")
    g.add_argument("--summary-length", type=int, help="j (default round(B/2))")
    g.add_argument("--seed", type=int, default=0, help="seed of the untrained HMT parameters")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        return _run(args)
    except ValueError as e:
        print(f"hmtx eval: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import torch

    from hmtx.model.backbone import load_backbone
    from hmtx.model.evaluate import evaluate, format_table, plot_per_segment
    from hmtx.model.hmt import HMT
    from hmtx.model.text import load_documents, tokenize_documents

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch sees no CUDA device")
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    docs = load_documents(args.text)                     # fail on bad text before the slow load
    backbone = load_backbone(args.backbone, device)
    if args.checkpoint:
        # A trained folder may also hold LoRA or backbone weights; load_trained applies them.
        from hmtx.model.train import load_trained
        model = load_trained(args.checkpoint, backbone)
    else:
        model = HMT.from_backbone(backbone, segment_length=args.segment_length, sensory=args.sensory,
                                  cache_size=args.cache_size, d_h=args.d_h,
                                  summary_length=args.summary_length, seed=args.seed)
    model.to(device).eval()
    tokens = tokenize_documents(docs, backbone.tokenizer)
    result = evaluate(model, tokens, args.segments, variants=variants, max_docs=args.max_docs,
                      min_segments=args.min_segments, progress=not args.quiet)
    trained = bool(args.checkpoint)
    result["config"].update({"text": args.text,
                             "checkpoint": args.checkpoint, "device": str(device)})
    result["trained"] = trained
    if not trained:
        result["note"] = UNTRAINED_NOTE.format(seed=model.config.seed)
    print(format_table(result))
    diff = result.get("recall_fixed_vs_float")
    if diff:
        print(f"fixed vs float recall over {diff['recalls']} searches: max |dP| = {diff['max_abs']:.4g} "
              f"(max |P| {diff['p_float_max_abs']:.4g}), relative L2 max {diff['rel_l2_max']:.4g} "
              f"mean {diff['rel_l2_mean']:.4g}, max |d prob| {diff['probs_max_abs']:.4g}; rounding P_float "
              f"itself to BFP8 costs {diff['p_float_bfp8_rel_l2_mean']:.4g} (mean relative L2)")
    if not trained:
        print("note: " + result["note"])
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        plot_per_segment(result, args.plot)
    return 0
