"""Command-line options shared by `hmtx train`, `hmtx eval` and `hmtx run`.

One place defines the backbone choice, the HMT checkpoint (the shipped one by default, ``--untrained``
to opt out), the torch device and HMT's sizes, so the three commands spell and resolve them alike.
"""

import math
import os
import tempfile

__all__ = ["BACKBONES", "SIZE_DEFAULTS", "add_backbone", "add_checkpoint", "resolve_checkpoint",
           "add_torch_device", "torch_device", "add_hmt_sizes", "hmt_sizes",
           "check_sizes_match", "check_output_path", "check_timeout", "check_device_spec"]

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
    # (the shipped folder is hmtx.model.defaults.DEFAULT_CHECKPOINT)
    p.add_argument("--checkpoint", help=f"{what} checkpoint folder (hmt_config.json + hmt.safetensors); default for "
                                        f"smollm2: the shipped checkpoints/smollm2-hmt, for tiny: none. "
                                        f"'none' = --untrained")
    p.add_argument("--untrained", action="store_true",
                   help="ignore the shipped checkpoint: HMT's parameters at their seed initialisation")


def resolve_checkpoint(args) -> str | None:
    """The checkpoint folder the command uses, or None for an untrained HMT."""
    from hmtx.model.defaults import default_checkpoint

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


def check_output_path(path: str | None, flag: str, folder: bool = False) -> str | None:
    """Refuse, before a long run starts, an output path the run could not write at its end.

    ``folder=False``: ``path`` is a file to be (over)written -- not an existing folder, and its
    folder must exist and take a new file, or be creatable. ``folder=True``: ``path`` is a folder
    to write files into -- an existing folder that takes a new file, or one that can be created.
    The check creates nothing that stays behind (a probe file is created and removed again; a
    missing folder is not created). Raises ValueError("FLAG PATH: why"), the CLI's exit 2.
    Returns ``path`` (None passes through: the option was not given)."""
    if path is None:
        return None
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{flag}: empty path")
    full = os.path.abspath(path)
    if folder:
        target_dir = full
        if os.path.exists(full) and not os.path.isdir(full):
            raise ValueError(f"{flag} {path}: exists and is not a folder")
    else:
        if os.path.isdir(full):
            raise ValueError(f"{flag} {path}: is a folder; give a file name")
        if path.endswith(os.sep):
            raise ValueError(f"{flag} {path}: ends in '{os.sep}'; give a file name")
        target_dir = os.path.dirname(full)
        if os.path.lexists(full) and not os.path.isfile(full):
            raise ValueError(f"{flag} {path}: exists and is not a regular file")
        if os.path.isfile(full):
            try:
                with open(full, "r+b"):
                    pass
            except OSError as e:
                raise ValueError(f"{flag} {path}: cannot be overwritten ({e.strerror or e})") from None
            return path
    # The nearest folder that exists must be a folder we can create entries in.
    probe_dir = target_dir
    while not os.path.exists(probe_dir):
        parent = os.path.dirname(probe_dir)
        if parent == probe_dir:
            break
        probe_dir = parent
    if not os.path.isdir(probe_dir):
        raise ValueError(f"{flag} {path}: {probe_dir} is not a folder")
    try:
        if probe_dir == target_dir and not folder:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)   # the file itself: name too
            os.close(fd)
            os.remove(full)
        else:
            with tempfile.TemporaryDirectory(prefix=".hmtx-probe-", dir=probe_dir):
                pass
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return path


def check_timeout(value, flag: str = "--timeout"):
    """A transaction timeout in seconds: finite and positive (None = the backend's default).
    NaN would make every wait endless and infinity would never time out against a silent device."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} {value!r}: not a number of seconds") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{flag} {value}: must be a finite number of seconds > 0")
    return v


def check_device_spec(spec: str, config=None, flag: str = "--device") -> None:
    """A device spec's syntax and names (golden, sim[:ENGINE], serial:PORT[@BAUD], board-sim...),
    checked before a slow model load; :func:`hmtx.host.backends.open_transport` checks again
    when it connects. A serial PORT that is a path must exist."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{flag}: empty device spec; use golden, sim[:ENGINE] or serial:PORT[@BAUD]")
    if spec == "golden":
        return
    if spec == "sim" or spec.startswith("sim:"):
        from hmtx.hw import ENGINES
        engine = spec.partition(":")[2] or "lanes"
        if engine not in ENGINES:
            raise ValueError(f"{flag} {spec}: unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        return
    if spec.startswith("serial:"):
        from .backends import parse_serial_spec
        port, baud = parse_serial_spec(spec)
        if baud <= 0:
            raise ValueError(f"{flag} {spec}: baud rate must be positive, got {baud}")
        if "://" not in port and not os.path.exists(port):
            raise ValueError(f"{flag} {spec}: no such serial port {port!r}")
        return
    if spec == "board-sim" or spec.startswith(("board-sim:", "board-sim@")):
        from .backends_board import parse_board_sim_spec
        if config is not None:
            parse_board_sim_spec(spec, config)
        return
    # A new kind of backend in open_transport needs its name here too.
    raise ValueError(f"unknown device {spec!r}; use golden, sim[:ENGINE], serial:PORT[@BAUD] or "
                     f"board-sim[:CONFIG][@BAUD]")
