"""The Hierarchical Memory Transformer around a Hugging Face causal LM, with its two baselines.

Per segment n of B = L - 2 - k new tokens H_n (docs/model.md has the full derivation):

1. S_n = final hidden state at the trailing T of BBM([T || H_n[0:j) || T])         (representation)
2. P_n = softmax(S_n W_q (M W_k)^T / sqrt(d_h)) M over the last N memories             (recall.py)
3. BBM([P_n || E(last k ids of segment n-1) || H_n || P_n]); logits at [1+k, -1) are the
   positions of H_n, each predicting the next token of the document
4. M_n = final hidden state at the appended P_n, pushed into the FIFO cache of N
Segment 0: P_0 = the learnable memory token, no sensory tokens, no representation pass.
Segment 1: P_1 = M_0 (the only memory; no search needed).

"Final hidden state" is ``hidden_states[-1]`` of the HF model called with ``inputs_embeds`` and
``output_hidden_states=True``. In transformers 5.x that entry is tied to ``last_hidden_state``,
i.e. AFTER the final norm (Llama/SmolLM2: RMSNorm; GPT-2: ln_f; OPT: final layer norm and
project_out) -- the state the LM head reads. tests/test_hmt_structure.py checks this.

Read-out (``HMTConfig.readout = "linear"``, host side): the backbone's final hidden states live in
another space than its input embeddings (post-norm, outlier channels up to |x| ~ 53), yet HMT feeds
the recalled P_n (a weighted sum of such states) back as an input embedding. With a read-out, the
backbone reads ``memory_token + R P_n`` (R: d x d, zero at initialisation) wherever the paper reads
P_n for n >= 1 (P_1 = M_0 included). The cache, the search and P_n itself are unchanged -- R runs on
the host after RECALL, so the chip's contract and protocol do not change -- and at initialisation
HMT *is* its recall-off ablation, so whatever it gains over ``hmt_norecall`` the training put there.

Variants share the segmentation and the scored tokens so perplexities compare like for like:
``"hmt"``; ``"hmt_norecall"``: the ablation of the part the chip accelerates -- HMT with the
memory token in place of P_n in every segment (sensory tokens kept, no search, no memory);
``"hmt_first"``: the ablation of the search alone -- HMT with P_n = the oldest memory in the cache
(M_0 until the ring wraps) instead of the searched mix, read through the same read-out (float);
``"rmt"``: [mem || H_n || mem], new mem = final hidden state at the last position, passed
straight to the next segment (mem_0 = the same memory token); ``"backbone"``: H_n alone;
``"sliding"``: the backbone on the L - B = k + 2 document tokens before H_n followed by H_n -- HMT's
token budget with plain text instead of memory; ``"full"``: the backbone over the whole document
prefix (key/value cache), up to its context limit (the upper reference).

Streaming: :meth:`HMT.new_state` makes a :class:`StreamState` (cache, sensory ids, segment index,
pending tokens); :meth:`HMT.segments` consumes tokens in any chunking and yields one
:class:`SegmentOutput` per complete segment, so a document fed in one call or in many gives
identical outputs.
"""

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from hmtx.model.backbone import Backbone, embedding_dim
from hmtx.model.recall import IMPLS, MemoryRecall, RecallCache

__all__ = ["HMTConfig", "HMT", "StreamState", "SegmentOutput", "VARIANTS", "kv_cache_bytes", "full_context_limit",
           "save_checkpoint", "read_checkpoint", "load_checkpoint"]

VARIANTS = ("hmt", "hmt_norecall", "hmt_first", "rmt", "backbone", "sliding", "full")
CACHED = ("hmt", "hmt_first")       # the variants that keep the long-term memory cache
READOUTS = ("none", "linear")
CHECKPOINT_FORMAT = "hmtx-hmt-1"
CONFIG_FILE = "hmt_config.json"
WEIGHTS_FILE = "hmt.safetensors"


@dataclass(frozen=True)
class HMTConfig:
    """Every HMT size in one place; saved next to the weights of a checkpoint.

    Parameters
    ----------
    backbone : str
        Name of the backbone the parameters belong to ("smollm2", "tiny", ...).
    d : int
        Backbone embedding width (OPT: word_embed_proj_dim).
    segment_length : int
        L, backbone input length of a segment pass: B = L - 2 - k new tokens per segment.
    sensory : int
        k, number of previous-segment token ids re-embedded in front of the segment.
    cache_size : int
        N, long-term memories searched.
    summary_length : int or None
        j, tokens of the segment in the representation pass; None = round(B / 2).
    d_h : int
        Memory-search projection width (W_q, W_k are d x d_h).
    seed : int
        Seed of the initial T, memory token, W_q and W_k.
    readout : str
        "none" (the paper: the backbone reads P_n) or "linear" (it reads memory_token + R P_n; the
        module docstring says why).
    """

    backbone: str = "smollm2"
    d: int = 576
    segment_length: int = 512
    sensory: int = 32
    cache_size: int = 64
    summary_length: int | None = None
    d_h: int = 256
    seed: int = 0
    readout: str = "none"

    def __post_init__(self):
        if self.readout not in READOUTS:
            raise ValueError(f"HMTConfig.readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")
        for name in ("d", "segment_length", "cache_size", "d_h"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"HMTConfig.{name} must be a positive integer, got {v!r}")
        if not isinstance(self.sensory, int) or self.sensory < 0:
            raise ValueError(f"HMTConfig.sensory (k) must be a non-negative integer, got {self.sensory!r}")
        if self.tokens_per_segment < 1:
            raise ValueError(f"HMTConfig: segment_length L={self.segment_length} leaves no new tokens "
                             f"(B = L - 2 - k = {self.tokens_per_segment}); need L >= k + 3")
        j = self.summary_length
        if j is not None and (not isinstance(j, int) or not 1 <= j <= self.tokens_per_segment):
            raise ValueError(f"HMTConfig.summary_length (j) must be in [1, B={self.tokens_per_segment}], got {j!r}")

    @property
    def tokens_per_segment(self) -> int:
        """B = L - 2 - k: one memory token in front, one behind, k sensory tokens."""
        return self.segment_length - 2 - self.sensory

    @property
    def j(self) -> int:
        return self.summary_length if self.summary_length is not None else max(1, round(self.tokens_per_segment / 2))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HMTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"HMTConfig: unknown field(s) {sorted(unknown)}")
        return cls(**data)


@dataclass
class StreamState:
    """Everything that carries from one segment of a document to the next."""

    variant: str
    impl: str | None                       # recall implementation (hmt, hmt_first)
    cache: RecallCache | None = None       # long-term memory (hmt, hmt_first)
    sensory: torch.Tensor | None = None    # last k token ids of the previous segment
    memory: torch.Tensor | None = None     # hmt: M_{n-1} (for P_1 = M_0); rmt: the recurrent memory
    segment: int = 0                       # index of the next segment
    pending: torch.Tensor | None = None    # tokens of an incomplete segment
    finished: bool = False
    context: object = None                 # sliding: the previous document ids; full: (ids, KV cache)


@dataclass
class SegmentOutput:
    """One processed segment. ``logits[i]`` predicts the token after ``ids[i]`` (the last one predicts
    the first token of the next segment)."""

    segment: int
    ids: torch.Tensor                      # [n] token ids of H_n
    logits: torch.Tensor                   # [n, vocab]
    memory: torch.Tensor | None = None     # M_n (hmt, rmt)
    recalled: torch.Tensor | None = None   # P_n (hmt)
    query: torch.Tensor | None = None      # S_n (hmt, when a search ran: segment >= 2)
    probs: torch.Tensor | None = None      # recall probabilities by slot (hmt, segment >= 2)
    slot_segment: list = field(default_factory=list)  # segment held by each slot at recall time


class HMT(nn.Module):
    """HMT's learnable parts (T, memory token, W_q, W_k) around a frozen-or-not HF causal LM."""

    def __init__(self, lm: nn.Module, config: HMTConfig):
        super().__init__()
        d = embedding_dim(lm)
        if d != config.d:
            raise ValueError(f"HMTConfig.d={config.d} does not match the backbone's embedding width {d} "
                             f"(checkpoint made for another backbone?)")
        self.lm = lm
        self.config = config
        gen = torch.Generator().manual_seed(config.seed)
        std = float(lm.get_input_embeddings().weight.detach().float().std())
        # T and the memory token start as randn x std(embeddings), as in the paper's code.
        self.prompt = nn.Parameter(torch.randn(config.d, generator=gen) * std)
        self.memory_token = nn.Parameter(torch.randn(config.d, generator=gen) * std)
        self.recall = MemoryRecall(config.d, config.d_h, config.cache_size, generator=gen)
        if config.readout == "linear":
            self.readout = nn.Linear(config.d, config.d, bias=False)
            nn.init.zeros_(self.readout.weight)
        else:
            self.readout = None
        device = lm.get_input_embeddings().weight.device
        self.prompt.data = self.prompt.data.to(device)
        self.memory_token.data = self.memory_token.data.to(device)
        self.recall.to(device)
        if self.readout is not None:
            self.readout.to(device)

    @classmethod
    def from_backbone(cls, backbone: Backbone, **overrides) -> "HMT":
        return cls(backbone.model, HMTConfig(backbone=backbone.name, d=backbone.d, **overrides))

    @property
    def device(self) -> torch.device:
        return self.prompt.device

    def hmt_state_dict(self) -> dict:
        """HMT's own parameters (the backbone is loaded from its own source)."""
        params = {"prompt": self.prompt, "memory_token": self.memory_token,
                  "recall.w_q": self.recall.w_q, "recall.w_k": self.recall.w_k}
        if self.readout is not None:
            params["readout.weight"] = self.readout.weight
        return params

    def read_out(self, p: torch.Tensor) -> torch.Tensor:
        """What the backbone reads for a recalled (or, at segment 1, the only) memory ``p``."""
        if self.readout is None:
            return p
        return self.memory_token + self.readout(p.to(self.memory_token.dtype))

    # -- streaming --------------------------------------------------------------------------
    def new_state(self, variant: str = "hmt", recall: str = "float", hw=None) -> StreamState:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if recall not in IMPLS:
            raise ValueError(f"unknown recall implementation {recall!r}; choose one of {', '.join(IMPLS)}")
        if variant == "hmt_first" and recall != "float":
            raise ValueError(f"variant 'hmt_first' reads a cached memory as it is: recall must be 'float', got {recall!r}")
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        state = StreamState(variant, recall if variant in CACHED else None, sensory=empty, pending=empty)
        if variant in CACHED:
            state.cache = self.recall.new_cache(recall, hw=hw)
        return state

    def segments(self, state: StreamState, ids, final: bool = False):
        """Feed token ids (any chunk of the document); yield a SegmentOutput per complete segment.
        With ``final=True`` the remaining partial segment is processed and the document closed."""
        if state.finished:
            raise ValueError("this stream already received its final tokens; start a new state")
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(-1)
        pending = torch.cat([state.pending, ids])
        b = self.config.tokens_per_segment
        while pending.numel() >= b:
            seg, pending = pending[:b], pending[b:]
            state.pending = pending
            yield self.step(state, seg)
        state.pending = pending
        if final:
            if pending.numel():
                state.pending = pending[:0]
                yield self.step(state, pending)
            if state.segment == 0:
                raise ValueError("empty document: no tokens to process")
            state.finished = True

    def feed(self, state: StreamState, ids, final: bool = False) -> list[SegmentOutput]:
        return list(self.segments(state, ids, final))

    def step(self, state: StreamState, ids: torch.Tensor) -> SegmentOutput:
        """Process one segment H_n (1 <= len <= B token ids) and advance the state."""
        b = self.config.tokens_per_segment
        if ids.dim() != 1 or not 1 <= ids.numel() <= b:
            raise ValueError(f"a segment must hold 1..B={b} token ids, got shape {tuple(ids.shape)}")
        h = self.lm.get_input_embeddings()(ids)                      # H_n [n, d]
        n = state.segment
        if state.variant == "backbone":
            out = SegmentOutput(n, ids, self.lm(inputs_embeds=h[None]).logits[0])
        elif state.variant == "sliding":
            out = self._sliding_step(state, ids)
        elif state.variant == "full":
            out = self._full_step(state, ids)
        elif state.variant == "hmt_norecall":
            sens = self.lm.get_input_embeddings()(state.sensory)
            logits, m = self._segment_pass(self.memory_token, sens, h)
            state.sensory = self._sensory_ids(ids)
            out = SegmentOutput(n, ids, logits, memory=m)
        elif state.variant == "rmt":
            mem = self.memory_token if n == 0 else state.memory
            logits, last = self._segment_pass(mem, h[:0], h)
            state.memory = last
            out = SegmentOutput(n, ids, logits, memory=last)
        else:
            out = self._hmt_step(state, ids, h)
        state.segment += 1
        return out

    def _hmt_step(self, state, ids, h):
        cfg, cache, n = self.config, state.cache, state.segment
        probs, s = None, None
        if cache.fill == 0:
            p = self.memory_token                                    # segment 0
        elif cache.fill == 1:
            p = state.memory                                         # segment 1: P_1 = M_0
        elif state.variant == "hmt_first":
            p = cache.m[cache.ring.age_order()[0]]                   # the oldest memory, no search
        else:
            s = self.representation(h[: cfg.j])                     # eq. 1
            p = self.recall.read(cache, s)                           # eq. 2
            probs = cache.last_probs
        slots = list(cache.slot_segment)                             # what the search saw
        sens = self.lm.get_input_embeddings()(state.sensory)          # sensory memory (ids)
        read = p if cache.fill == 0 else self.read_out(p)            # host-side read-out
        logits, m = self._segment_pass(read, sens, h)                # eq. 3, 4
        self.recall.write(cache, m, n)
        state.memory = m
        state.sensory = self._sensory_ids(ids)
        return SegmentOutput(n, ids, logits, memory=m, recalled=p, query=s, probs=probs, slot_segment=slots)

    def _sensory_ids(self, ids):
        k = self.config.sensory
        return ids[max(0, ids.numel() - k):] if k else ids[:0]

    def _sliding_step(self, state, ids):
        """The backbone on the L - B document tokens before H_n, then H_n; logits at H_n."""
        before = self.config.segment_length - self.config.tokens_per_segment
        prev = state.context if state.context is not None else ids[:0]
        x = torch.cat([prev, ids])
        logits = self.lm(input_ids=x[None], logits_to_keep=ids.numel()).logits[0]
        state.context = x[max(0, x.numel() - before):]
        return SegmentOutput(state.segment, ids, logits)

    def _full_step(self, state, ids):
        """The backbone over the whole prefix through its key/value cache. When prefix + segment
        would pass the context limit, the cache is dropped and the last ``limit - len(H_n)`` tokens
        are read again as a fresh prefix (never needed for 16 segments of SmolLM2)."""
        from transformers import DynamicCache

        limit = full_context_limit(self.lm)
        seen, cache = state.context if state.context is not None else (ids[:0], None)
        if seen.numel() + ids.numel() > limit:
            seen, cache = seen[seen.numel() + ids.numel() - limit:], None
        x = ids if cache is not None else torch.cat([seen, ids])
        past = seen.numel() if cache is not None else 0
        pos = torch.arange(past, past + x.numel(), device=ids.device)[None]
        out = self.lm(input_ids=x[None], cache=cache if cache is not None else DynamicCache(),
                      use_cache=True, position_ids=pos, logits_to_keep=ids.numel())
        state.context = (torch.cat([seen, ids]), out.cache)
        return SegmentOutput(state.segment, ids, out.logits[0])

    def representation(self, h_summary: torch.Tensor) -> torch.Tensor:
        """S_n: final hidden state at the trailing T of [T || H_n[0:j) || T]."""
        t = self.prompt[None].to(h_summary.dtype)
        x = torch.cat([t, h_summary, t])[None]
        out = self.lm(inputs_embeds=x, output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1][0, -1]

    def _segment_pass(self, p, sens, h):
        """BBM([p || sens || h || p]) -> (logits at the positions of h, final hidden state at the end)."""
        p = p[None].to(h.dtype)
        x = torch.cat([p, sens, h, p])[None]
        # Logits only for positions [1+k, len): the n positions of h, plus the appended p's, dropped.
        out = self.lm(inputs_embeds=x, output_hidden_states=True, logits_to_keep=h.shape[0] + 1)
        return out.logits[0, :-1], out.hidden_states[-1][0, -1]


def kv_cache_bytes(cache) -> int:
    """Bytes held by a transformers key/value cache (the ``full`` variant's memory)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def full_context_limit(lm) -> int:
    """The backbone's context length (SmolLM2: 8,192), the ``full`` variant's window."""
    return int(getattr(lm.config, "max_position_embeddings", 0) or 2048)


# -- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(model: HMT, folder: str) -> None:
    """Write ``hmt_config.json`` and ``hmt.safetensors`` (HMT's own parameters) into ``folder``, then
    ``manifest.json`` (their hashes, :mod:`hmtx.model.checkpoint_files`)."""
    from safetensors.torch import save_file

    from hmtx.model.checkpoint_files import write_manifest

    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.hmt_state_dict().items()}
    save_file(tensors, os.path.join(folder, WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump({"format": CHECKPOINT_FORMAT, "config": model.config.to_dict()}, f, indent=2)
    write_manifest(folder)        # last: hashes every checkpoint file written above


def read_checkpoint(folder: str) -> tuple[HMTConfig, dict]:
    """The config and the tensors of a checkpoint, without a backbone. The folder's manifest is
    checked first; a damaged file raises ValueError naming it (:mod:`hmtx.model.checkpoint_files`)."""
    from hmtx.model.checkpoint_files import load_safetensors, read_json, verify_manifest

    cfg_path, w_path = os.path.join(folder, CONFIG_FILE), os.path.join(folder, WEIGHTS_FILE)
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise ValueError(f"checkpoint {folder!r}: missing {os.path.basename(p)}")
    verify_manifest(folder)
    meta = read_json(cfg_path)
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{cfg_path}: format {got!r}, expected {CHECKPOINT_FORMAT!r}")
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{cfg_path}: no \"config\" object")
    try:
        config = HMTConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    tensors = load_safetensors(w_path)
    expected = {"prompt": (config.d,), "memory_token": (config.d,),
                "recall.w_q": (config.d, config.d_h), "recall.w_k": (config.d, config.d_h)}
    if config.readout == "linear":
        expected["readout.weight"] = (config.d, config.d)
    if set(tensors) != set(expected):
        raise ValueError(f"checkpoint {folder!r}: tensors {sorted(tensors)} != expected {sorted(expected)}")
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != shape:
            raise ValueError(f"checkpoint {folder!r}: {k} has shape {tuple(tensors[k].shape)}, "
                             f"its config says {shape}")
    return config, tensors


def load_checkpoint(folder: str, backbone: Backbone) -> HMT:
    """Rebuild an HMT from ``folder`` around ``backbone``; mismatches raise ValueError."""
    config, tensors = read_checkpoint(folder)
    if config.backbone != backbone.name:
        raise ValueError(f"checkpoint {folder!r} was made for backbone {config.backbone!r}, not {backbone.name!r}")
    model = HMT(backbone.model, config)
    with torch.no_grad():
        for k, v in model.hmt_state_dict().items():
            v.copy_(tensors[k])
    return model
