"""Command-line options shared by `hmtx train`, `hmtx eval` and `hmtx run`.

One place defines the backbone choice, the HMT checkpoint (the shipped one by default, ``--untrained``
to opt out), the torch device and HMT's sizes, so the three commands spell and resolve them alike.
"""

import os

__all__ = ["BACKBONES", "SIZE_DEFAULTS", "add_backbone", "add_checkpoint", "resolve_checkpoint",
           "add_torch_device", "torch_device", "add_hmt_sizes", "hmt_sizes",
           "check_sizes_match"]

BACKBONES = ("smollm2", "tiny")
# The shipped configuration (docs/training.md: why these sizes); used where no checkpoint fixes them.
SIZE_DEFAULTS = {"segment_length": 256, "sensory": 32, "cache_size": 64, "d_h": 256, "summary_length": None}
_SIZE_FLAGS = {"segment_length": ("--segment-length", "L (B = L - 2 - k new tokens per segment)"),
               "sensory": ("--sensory", "k, sensory tokens"),
               "cache_size": ("--cache-size", "N, cached memories"),
               "d_h": ("--d-h", "memory-search width"),
               "summary_length": ("--summary-length", "j, tokens of the summary pass (default round(B/2))")}


def add_backbone(p) -> None:
    p.add_argument("--backbone", choices=BACKBONES, default="smollm2",
                   help="smollm2 (SmolLM2-135M, default) or tiny (a random d=32 Llama for tests)")


def add_checkpoint(p, what: str = "HMT") -> None:
    """``--checkpoint FOLDER`` (default: the shipped one for the backbone) and ``--untrained``."""
    # The shipped folder is hmtx.model.train.DEFAULT_CHECKPOINT; named literally here because
    # importing hmtx.model.train (torch) while building the parser would slow every command.
    p.add_argument("--checkpoint", help=f"{what} checkpoint folder (hmt_config.json + hmt.safetensors); default for "
                                        f"smollm2: the shipped checkpoints/smollm2-hmt, for tiny: none. "
                                        f"'none' = --untrained")
    p.add_argument("--untrained", action="store_true",
                   help="ignore the shipped checkpoint: HMT's parameters at their seed initialisation")


def resolve_checkpoint(args) -> str | None:
    """The checkpoint folder the command uses, or None for an untrained HMT."""
    from hmtx.model.train import default_checkpoint

    explicit = args.checkpoint not in (None, "none")
    if args.untrained and explicit:
        raise ValueError("--checkpoint and --untrained exclude each other")
    if args.untrained or args.checkpoint == "none":
        return None
    if explicit:
        if not os.path.isdir(args.checkpoint):
            raise ValueError(f"--checkpoint {args.checkpoint!r}: no such folder")
        return args.checkpoint
    return default_checkpoint(args.backbone)


def add_torch_device(p, flag: str = "--device") -> None:
    p.add_argument(flag, default="cpu", dest="torch_device",
                   help="where the backbone runs: cpu (default) or cuda[:i] (under torchrun: one GPU per rank)")


def torch_device(name: str, flag: str = "--device"):
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{flag} {name!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag} {name} requested but torch sees no CUDA device")
    return device


def add_hmt_sizes(p, title: str, names=tuple(SIZE_DEFAULTS), defaults: dict | None = None) -> None:
    """HMT's size options. Their parsed default is None so that a command can tell a size the user
    gave (refused where a checkpoint fixes the sizes) from a default (see :func:`hmt_sizes`)."""
    defaults = {**SIZE_DEFAULTS, **(defaults or {})}
    g = p.add_argument_group(title)
    for name in names:
        flag, what = _SIZE_FLAGS[name]
        shown = "" if defaults[name] is None else f" (default {defaults[name]})"
        g.add_argument(flag, type=int, dest=name, help=what + shown)


def hmt_sizes(args, defaults: dict | None = None) -> dict:
    """The sizes to build an untrained HMT with: what was given, else ``defaults``/SIZE_DEFAULTS."""
    defaults = {**SIZE_DEFAULTS, **(defaults or {})}
    return {n: (defaults[n] if getattr(args, n, None) is None else getattr(args, n)) for n in SIZE_DEFAULTS}


def check_sizes_match(args, checkpoint: str | None, hint: str = "add --untrained") -> None:
    """A checkpoint fixes HMT's sizes: a size given beside it must equal the checkpoint's (repeating
    them is fine); a different one would be silently ignored, so it is refused."""
    if not checkpoint:
        return
    from hmtx.model.hmt import read_checkpoint

    config, _ = read_checkpoint(checkpoint)
    wrong = []
    for name in SIZE_DEFAULTS:
        v = getattr(args, name, None)
        if v is None:
            continue
        have = config.j if name == "summary_length" else getattr(config, name)
        if v != have:
            wrong.append(f"{_SIZE_FLAGS[name][0]} {v} (checkpoint: {have})")
    if wrong:
        raise ValueError(f"{'; '.join(wrong)}: the checkpoint {checkpoint} fixes HMT's sizes ({hint})")
