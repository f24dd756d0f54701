"""The shipped defaults: what the commands, the benchmarks and the training use when they are not
told otherwise -- the text, the checkpoints, and per backbone its engine config, segment length
and sensory memory. One place, importable without torch (the command-line parsers read it)."""

from .paths import REPO

__all__ = ["DEFAULT_TEXT", "DEFAULT_CHECKPOINT", "DEFAULT_RMT_CHECKPOINT", "BACKBONE_DEFAULTS", "BACKBONE_D",
           "default_checkpoint", "run_sizes", "engine_config", "pick_document"]

DEFAULT_TEXT = REPO / "data" / "wikitext-2" / "test.txt"
# The shipped SmolLM2 checkpoints (checkpoints/ at the repository root): HMT, and the RMT baseline
# trained the same way (same format; RMT uses only its memory token).
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "smollm2-hmt"
DEFAULT_RMT_CHECKPOINT = DEFAULT_CHECKPOINT.parent / "smollm2-rmt"

# Per backbone: (engine config, HMT segment length L, sensory k). The tiny backbone (d=32, for
# tests) gets the tiny engine widened to its d.
BACKBONE_DEFAULTS = {"smollm2": ("smollm", 512, 32), "tiny": ("tiny", 24, 4)}
# Embedding width d of each backbone, known before the (slow) load so that everything that
# depends on the engine config is checked first; checked again against the loaded backbone.
BACKBONE_D = {"smollm2": 576, "tiny": 32}


def default_checkpoint(backbone: str = "smollm2", variant: str = "hmt") -> str | None:
    """Folder of the shipped ``variant`` ("hmt" or "rmt") checkpoint for ``backbone``, or None when
    there is none."""
    if variant not in ("hmt", "rmt"):
        raise ValueError(f"variant must be 'hmt' or 'rmt', got {variant!r}")
    folder = DEFAULT_CHECKPOINT if variant == "hmt" else DEFAULT_RMT_CHECKPOINT
    if backbone == "smollm2" and (folder / "hmt_config.json").is_file():
        return str(folder)
    return None


def run_sizes(backbone: str) -> dict:
    """The HMT sizes a run of ``backbone`` uses by default: segment length, sensory tokens and
    summary length of the shipped checkpoint where there is one, else ``BACKBONE_DEFAULTS``'s."""
    _, seg_len, sensory = BACKBONE_DEFAULTS[backbone]
    sizes = {"segment_length": seg_len, "sensory": sensory}
    ckpt = default_checkpoint(backbone)
    if ckpt is not None:
        from .hmt import read_checkpoint

        ck, _ = read_checkpoint(ckpt)
        sizes.update(segment_length=ck.segment_length, sensory=ck.sensory, summary_length=ck.summary_length)
    return sizes


def engine_config(backbone_name: str, d: int, name: str | None):
    """The engine config ``name``, or the backbone's default widened to its ``d``; its d must be
    the backbone's."""
    from .configs import get_config
    if name:
        cfg = get_config(name)
    else:
        cfg = get_config(BACKBONE_DEFAULTS[backbone_name][0])
        if cfg.d != d:
            cfg = cfg.with_(name=f"{cfg.name}-d{d}", d=d)
    if cfg.d != d:
        raise ValueError(f"engine config {cfg.name!r} has d={cfg.d}, the {backbone_name} backbone d={d}")
    return cfg


def pick_document(text_path: str, tokenizer, tokens_needed: int, docs=None):
    """The first document of ``text_path`` (or of ``docs``, its already loaded documents) with
    at least ``tokens_needed`` tokens."""
    from .text import load_documents, tokenize_documents
    docs = load_documents(text_path) if docs is None else docs
    longest = 0
    for doc in docs:
        (tok,) = tokenize_documents([doc], tokenizer)
        if tok.ids.numel() >= tokens_needed:
            return tok
        longest = max(longest, tok.ids.numel())
    raise ValueError(f"{text_path}: no document has the {tokens_needed} tokens these segments need "
                     f"(longest {longest}); use fewer --segments")
