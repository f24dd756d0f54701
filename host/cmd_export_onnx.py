"""`hmtx export-onnx`: the float memory-recall module as an ONNX graph."""

import sys

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-onnx", help="export the float memory recall (S, M, mask) -> (P, probs) to ONNX",
        description="Export HMT's float memory recall to ONNX. Weights come from --checkpoint, or are "
                    "random (seeded) with the sizes given.")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--checkpoint", help="HMT checkpoint folder (hmt_config.json + hmt.safetensors)")
    p.add_argument("--d", type=int, default=576, help="hidden size d (without --checkpoint)")
    p.add_argument("--d-h", type=int, default=256, help="memory-search width (without --checkpoint)")
    p.add_argument("--cache-size", type=int, default=64, help="N (without --checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="run onnxruntime on a random input and compare")
    p.set_defaults(func=run)


def run(args) -> int:
    from hmtx.model.onnx_export import check_onnx, export_recall, recall_from_checkpoint, random_recall

    from .cli_options import check_output_path

    try:
        check_output_path(args.out, "--out")
        if args.checkpoint:
            recall = recall_from_checkpoint(args.checkpoint)
        else:
            recall = random_recall(args.d, args.d_h, args.cache_size, args.seed)
        export_recall(recall, args.out)
        print(f"wrote {args.out}: d={recall.d} d_h={recall.d_h} N={recall.n_slots}")
        if args.check:
            err = check_onnx(recall, args.out)
            print(f"onnxruntime vs torch: max |dP| = {err['p']:.3g}, max |d prob| = {err['probs']:.3g}")
    except ValueError as e:
        print(f"hmtx export-onnx: error: {e}", file=sys.stderr)
        return 2
    return 0
