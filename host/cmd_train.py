"""`hmtx train`: train HMT's memory parts (and optionally LoRA / the backbone) with BPTT.

Runs unchanged under ``torchrun --nproc-per-node N -m hmtx.host.cli train ...`` (or the ``hmtx``
script under torchrun): every rank trains on its own windows, DDP averages the gradients.
"""

import os
import sys

from . import cli_options

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train HMT (two-stage BPTT; checkpoints, resume, DDP under torchrun)",
        description="Backpropagation through time over windows of --depth segments. Stage 1: depth 2, "
                    "no memory search. Stage 2: --init a stage-1 checkpoint, fresh T/W_q/W_k, search on.")
    p.add_argument("--text", action="append", required=True,
                   help="training text file or folder (repeatable). Never the evaluation text.")
    p.add_argument("--out", required=True, help="checkpoint folder (written every --save-every steps)")
    cli_options.add_backbone(p)
    p.add_argument("--stage", type=int, choices=(1, 2, 3), default=1,
                   help="1: no search; 2: search on (--init a stage-1 folder); 3: streaming BPTT over long "
                        "documents with the host-side read-out, memory token frozen (--init a stage-2 folder)")
    p.add_argument("--depth", type=int, help="segments per BPTT window (stage 1: 2; stage 2 default 4)")
    p.add_argument("--init", help="stage 2: the stage-1 checkpoint to start from; stage 3: the stage-2 one")
    p.add_argument("--readout-lr", type=float, help="stage 3: learning rate of the read-out (default: --lr)")
    p.add_argument("--resume", help="continue a training checkpoint (same settings; --steps may grow)")
    p.add_argument("--steps", type=int, default=None,
                   help="total optimizer steps (default 200; with --resume, the checkpoint's total)")
    p.add_argument("--batch", type=int, default=2, help="windows per step per process (accumulated); stage 3: "
                                                         "graded segments per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-step", type=int, default=100, help="multiply the LR by --lr-gamma every this many steps")
    p.add_argument("--lr-gamma", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--mode", choices=("frozen", "lora", "full"), default="frozen",
                   help="backbone: frozen, LoRA (r=8, alpha=32, dropout 0.1) or full fine-tuning")
    p.add_argument("--variant", choices=("hmt", "rmt"), default="hmt", help="rmt trains the RMT baseline")
    p.add_argument("--loss-on", choices=("all", "last"), default="all", help="segments of a window scored")
    p.add_argument("--grad-checkpoint", action="store_true", help="recompute backbone activations in backward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=25)
    cli_options.add_torch_device(p)
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--max-tokens", type=int, help="use only the first this many tokens of the training text")
    cli_options.add_hmt_sizes(p, "HMT sizes (stage 1; stage 2 and --resume take them from the checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        return _run(args)
    except ValueError as e:
        print(f"hmtx train: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import time

    import torch

    from hmtx.model.backbone import load_backbone
    from hmtx.model.hmt import HMTConfig, read_checkpoint
    from hmtx.model.text import load_documents, tokenize_documents
    from hmtx.model.train import TrainConfig, train

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = cli_options.torch_device(args.torch_device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps is None:
        from hmtx.model.train import read_training_meta
        args.steps = int(read_training_meta(args.resume)["train_config"]["steps"]) if args.resume else 200
    depth = args.depth if args.depth is not None else (2 if args.stage == 1 or args.variant == "rmt" else 4)
    tc = TrainConfig(stage=args.stage, depth=depth, steps=args.steps, batch=args.batch, lr=args.lr,
                     lr_step=args.lr_step, lr_gamma=args.lr_gamma, weight_decay=args.weight_decay,
                     clip=args.clip, mode=args.mode, variant=args.variant, loss_on=args.loss_on,
                     grad_checkpoint=args.grad_checkpoint, seed=args.seed, readout_lr=args.readout_lr)
    if args.stage >= 2 and args.variant == "hmt" and not args.init and not args.resume:
        raise ValueError(f"stage {args.stage} starts from a stage-{args.stage - 1} checkpoint: give --init FOLDER")
    if args.stage == 1 and args.init:
        raise ValueError("--init is for stage 2 (stage 1 starts from the backbone)")
    if args.resume and os.path.abspath(args.resume) != os.path.abspath(args.out):
        print(f"note: resuming from {args.resume}, writing to {args.out}", file=sys.stderr)
    init = None if args.resume else args.init      # a resumed run restores everything from --resume
    cli_options.check_sizes_match(args, args.resume or args.init, hint="drop them")
    config = None
    if args.resume:
        config, _ = read_checkpoint(args.resume)
    elif args.init:
        # Sizes come from stage 1; the seed of the fresh T, W_q, W_k from this run.
        config, _ = read_checkpoint(args.init)
        extra = {"readout": "linear"} if args.stage == 3 else {}
        config = HMTConfig.from_dict({**config.to_dict(), "seed": args.seed, **extra})
    if config is not None and config.backbone != args.backbone:
        raise ValueError(f"checkpoint is for backbone {config.backbone!r}, not {args.backbone!r}")
    docs = [d for path in args.text for d in load_documents(path)]
    backbone = load_backbone(args.backbone)
    if config is None:
        config = HMTConfig(backbone=backbone.name, d=backbone.d, **cli_options.hmt_sizes(args), seed=args.seed)
    tokens = tokenize_documents(docs, backbone.tokenizer)
    if args.max_tokens:
        kept, n = [], 0
        for d in tokens:
            if n >= args.max_tokens:
                break
            kept.append(d.ids[: args.max_tokens - n])
            n += kept[-1].numel()
        tokens = kept
    t0 = time.perf_counter()
    train(backbone, config, tc, tokens, args.out, init=init, resume=args.resume,
          save_every=args.save_every, device=device, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"hmtx train: {tc.steps} steps done in {time.perf_counter() - t0:.0f} s; checkpoint in {args.out}")
    return 0
