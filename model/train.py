"""Training HMT: backpropagation through time over windows of ``depth`` segments.

A training window is ``depth * B + 1`` consecutive token ids of the training stream (all training
documents joined by the backbone's end-of-text id). The window is run from a fresh stream state
through :meth:`hmtx.model.hmt.HMT.step` exactly as evaluation runs a document, so the gradient
reaches the memory token, T, W_q and W_k through every cached memory of the window; the state is
dropped after the window (truncated BPTT). The loss is the mean next-token NLL over the scored
tokens of every segment of the window (``loss_on="all"``, our default: it matches what evaluation
scores) or of its last segment only (``"last"``, the reference code's choice).

Two-stage schedule (docs/training.md):

stage 1
    depth 2, which with this model means no memory search: segment 0 reads the memory token and
    segment 1 reads P_1 = M_0. Trains the memory token (and LoRA / the backbone if selected).
stage 2
    loads the memory token (and LoRA / backbone weights) of a stage-1 checkpoint, starts T, W_q,
    W_k fresh from the seed, and trains everything at depth >= 3 (search on).
stage 3 (ours: "a recall that pays", docs/training.md)
    loads every HMT parameter of a stage-2 checkpoint, adds the host-side read-out R (zero, so the
    model starts as its own recall-off ablation) and trains T, W_q, W_k and R -- the memory token
    stays frozen, so ``hmt_norecall`` is the same before and after -- by streaming truncated BPTT:
    a window of ``depth`` segments of ONE document runs from an empty cache; from segment 2 on
    (the first search) each segment is a graded step: its loss is back-propagated through its own
    representation pass, search, read-out and segment pass, the cached memories being constants
    (detached) -- so a window of 32 segments trains the search against caches of 2 to 31
    memories at the cost of one backward pass per segment. ``batch`` graded segments make one
    optimizer step; the window carries over from one step to the next.

What is trained besides HMT's own parameters (``mode``): ``"frozen"`` backbone, ``"lora"``
(peft, r=8, alpha=32, dropout 0.1 on q_proj/v_proj) or ``"full"`` fine-tuning.

A training checkpoint is a folder: the evaluation checkpoint of :func:`hmtx.model.hmt.save_checkpoint`
(``hmt_config.json`` + ``hmt.safetensors``), ``lora.safetensors`` or ``backbone.safetensors`` when
the backbone was adapted, and ``train.json`` + ``train_state.safetensors`` (step, optimizer,
scheduler, RNG, loss log) for resuming. Only JSON and safetensors: loading never runs code.

Distributed: under ``torchrun`` (WORLD_SIZE > 1) every rank trains on its own windows and
DistributedDataParallel averages the gradients (gloo on CPU, nccl on CUDA); rank 0 writes files.
"""

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from hmtx.model.backbone import Backbone
from hmtx.model.checkpoint_files import MANIFEST_FILE, read_json, verify_manifest, write_manifest
from hmtx.model.hmt import HMT, HMTConfig, read_checkpoint, save_checkpoint
from hmtx.model.defaults import DEFAULT_CHECKPOINT, DEFAULT_RMT_CHECKPOINT, default_checkpoint  # noqa: F401

__all__ = ["TrainConfig", "MODES", "TRAIN_FORMAT", "DEFAULT_CHECKPOINT", "DEFAULT_RMT_CHECKPOINT",
           "default_checkpoint",
           "TokenStream", "WindowLoss", "prepare_model", "load_trained", "trainable_parameters",
           "save_training_checkpoint", "load_training_checkpoint", "train", "plot_loss"]

MODES = ("frozen", "lora", "full")
TRAIN_FORMAT = "hmtx-train-1"
TRAIN_JSON = "train.json"
TRAIN_STATE = "train_state.safetensors"
LORA_FILE = "lora.safetensors"
BACKBONE_FILE = "backbone.safetensors"
LORA = dict(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
# HMT's own parameters, in the names of HMT.hmt_state_dict().
HMT_PARAMS = ("prompt", "memory_token", "recall.w_q", "recall.w_k")

@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the training trajectory (saved in train.json, checked on resume).

    ``steps`` is the total number of optimizer steps; a resumed run may raise it.
    ``batch`` windows per rank per step (gradients accumulated).
    """

    stage: int = 1
    depth: int = 2
    steps: int = 200
    batch: int = 2
    lr: float = 1e-3
    lr_step: int = 100
    lr_gamma: float = 0.5
    weight_decay: float = 0.01
    clip: float = 1.0
    mode: str = "frozen"
    variant: str = "hmt"
    loss_on: str = "all"
    grad_checkpoint: bool = False
    seed: int = 0
    readout_lr: float | None = None     # stage 3: the read-out's learning rate (None: lr)

    def __post_init__(self):
        if self.stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {self.stage!r}")
        if self.stage == 3 and (self.variant != "hmt" or self.depth < 3):
            raise ValueError(f"stage 3 streams HMT windows with search: variant hmt and depth >= 3 "
                             f"(got {self.variant}, depth {self.depth})")
        if self.readout_lr is not None and not self.readout_lr > 0:
            raise ValueError(f"readout_lr must be > 0, got {self.readout_lr!r}")
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be a positive integer, got {self.depth!r}")
        if self.variant == "hmt" and self.stage == 1 and self.depth != 2:
            raise ValueError(f"stage 1 trains without memory search, i.e. depth 2 (got depth {self.depth}); "
                             f"use stage 2 for deeper windows")
        if self.variant == "hmt" and self.stage >= 2 and self.depth < 3:
            raise ValueError(f"stage 2 trains the memory search, which first runs at segment 2: depth must be "
                             f">= 3, got {self.depth}")
        for name in ("steps", "batch", "lr_step"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not self.lr > 0 or not self.clip > 0 or not 0 < self.lr_gamma <= 1 or self.weight_decay < 0:
            raise ValueError("lr and clip must be > 0, lr_gamma in (0, 1], weight_decay >= 0")
        if self.mode not in MODES:
            raise ValueError(f"unknown training mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.variant not in ("hmt", "rmt"):
            raise ValueError(f"trainable variant must be 'hmt' or 'rmt', got {self.variant!r}")
        if self.loss_on not in ("all", "last"):
            raise ValueError(f"loss_on must be 'all' or 'last', got {self.loss_on!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {sorted(unknown)}")
        return cls(**data)


# -- data -------------------------------------------------------------------------------------
class TokenStream:
    """All training documents as one token stream (documents joined by ``eos_id``), cut into
    windows at offsets that depend only on (seed, step, window index): resuming needs no data state
    and every rank draws different windows."""

    def __init__(self, docs, eos_id: int):
        parts, self.bounds, at = [], [], 0
        for d in docs:
            ids = d.ids if hasattr(d, "ids") else torch.as_tensor(d, dtype=torch.long)
            if ids.numel():
                parts += [ids.reshape(-1).long(), torch.tensor([eos_id])]
                self.bounds.append((at, at + ids.numel()))
                at += ids.numel() + 1
        if not parts:
            raise ValueError("training text is empty")
        self.ids = torch.cat(parts)

    def __len__(self) -> int:
        return self.ids.numel()

    def window(self, length: int, seed: int, step: int, index: int) -> torch.Tensor:
        if length > len(self):
            raise ValueError(f"training text has {len(self)} tokens, a window needs {length} "
                             f"(depth x B + 1); give more text or a smaller --depth / --segment-length")
        rng = random.Random(f"{seed}:{step}:{index}")     # str seeds hash deterministically
        start = rng.randrange(len(self) - length + 1)
        return self.ids[start: start + length]

    def document_window(self, length: int, seed: int, index: int) -> torch.Tensor:
        """``length`` ids from inside ONE document (drawn in proportion to the starts it offers),
        so that a long unroll never reads across a document boundary."""
        spans = [(a, b - length + 1) for a, b in self.bounds if b - a >= length]
        if not spans:
            longest = max(b - a for a, b in self.bounds)
            raise ValueError(f"no training document has the {length} tokens a window needs (longest: "
                             f"{longest}); give longer documents or a smaller --depth")
        rng = random.Random(f"{seed}:doc:{index}")
        pick = rng.randrange(sum(stop - a for a, stop in spans))
        for a, stop in spans:
            if pick < stop - a:
                start = a + pick
                return self.ids[start: start + length]
            pick -= stop - a
        raise AssertionError("unreachable")


# -- the trainable model ----------------------------------------------------------------------
class WindowLoss(nn.Module):
    """Mean next-token NLL of one window of ``depth`` segments, run with BPTT through the memory.

    A module (rather than a function) so that DistributedDataParallel can wrap it."""

    def __init__(self, model: HMT, depth: int, variant: str = "hmt", loss_on: str = "all"):
        super().__init__()
        self.model, self.depth, self.variant, self.loss_on = model, depth, variant, loss_on

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b = self.model.config.tokens_per_segment
        if ids.dim() != 1 or ids.numel() != self.depth * b + 1:
            raise ValueError(f"a window must hold depth x B + 1 = {self.depth * b + 1} token ids, "
                             f"got shape {tuple(ids.shape)}")
        state = self.model.new_state(self.variant, "float")
        total, count = 0.0, 0
        for n in range(self.depth):
            out = self.model.step(state, ids[n * b:(n + 1) * b])
            if self.loss_on == "all" or n == self.depth - 1:
                targets = ids[n * b + 1:(n + 1) * b + 1]
                total = total + F.cross_entropy(out.logits.float(), targets, reduction="sum")
                count += b
        return total / count


class StreamFeeder:
    """Stage 3's streaming truncated BPTT: yields one graded segment loss at a time from windows of
    ``depth`` segments of one document, each window run from an empty cache (module docstring)."""

    FIRST_GRADED = 2            # the first segment that searches the cache

    def __init__(self, model: HMT, stream: "TokenStream", depth: int, seed: int, window: int = 0):
        self.model, self.stream, self.depth, self.seed = model, stream, depth, seed
        self.window = window    # index of the next window to draw
        self.ids, self.state, self.n = None, None, 0

    def _next_window(self):
        b = self.model.config.tokens_per_segment
        self.ids = self.stream.document_window(self.depth * b + 1, self.seed, self.window).to(self.model.device)
        self.window += 1
        self.state, self.n = self.model.new_state("hmt", "float"), 0

    def graded_loss(self) -> torch.Tensor:
        """Mean NLL of the next graded segment (its graph only: cached memories are constants)."""
        b = self.model.config.tokens_per_segment
        if self.ids is None or self.n >= self.depth:
            self._next_window()
        while self.n < self.FIRST_GRADED:
            with torch.no_grad():
                self._step()
        out = self._step()
        targets = self.ids[(self.n - 1) * b + 1: self.n * b + 1]
        return F.cross_entropy(out.logits.float(), targets)

    def _step(self):
        b = self.model.config.tokens_per_segment
        out = self.model.step(self.state, self.ids[self.n * b:(self.n + 1) * b])
        self.n += 1
        cache = self.state.cache
        cache.m = [m.detach() if m is not None else None for m in cache.m]
        self.state.memory = self.state.memory.detach()
        return out


def _apply_mode(lm: nn.Module, mode: str, seed: int) -> None:
    """Freeze, LoRA-adapt or fully unfreeze the backbone in place."""
    if mode == "full":
        lm.requires_grad_(True)
        return
    lm.requires_grad_(False)
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        # LoRA's A matrices are drawn from the global RNG: fork it so the init depends on the seed only.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inject_adapter_in_model(LoraConfig(**LORA), lm)
        for name, p in lm.named_parameters():
            p.requires_grad_("lora_" in name)


def trainable_parameters(model: HMT) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of everything the optimizer updates, in a fixed order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _adapter_tensors(model: HMT, mode: str) -> dict:
    if mode == "frozen":
        return {}
    lm = model.lm
    keep = (lambda n: "lora_" in n) if mode == "lora" else (lambda n: True)
    return {n: p.detach().cpu().contiguous() for n, p in lm.named_parameters() if keep(n)}


def _load_tensors(path: str, what: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise ValueError(f"checkpoint: missing {os.path.basename(path)} ({what}) in {os.path.dirname(path)!r}")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"checkpoint: {path} is not a readable safetensors file ({e})") from None


def _copy_into(module: nn.Module, tensors: dict, source: str) -> None:
    params = dict(module.named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise ValueError(f"{source}: tensors {missing[:3]}... do not exist in this backbone")
    with torch.no_grad():
        for k, v in tensors.items():
            if params[k].shape != v.shape:
                raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, the backbone's is {tuple(params[k].shape)}")
            params[k].copy_(v)


def _read_adapter(folder: str) -> tuple[str, dict]:
    """(mode, backbone tensors) of a checkpoint folder: LoRA weights, full backbone weights, or none."""
    lora, full = os.path.join(folder, LORA_FILE), os.path.join(folder, BACKBONE_FILE)
    if os.path.isfile(lora):
        return "lora", _load_tensors(lora, "LoRA weights")
    if os.path.isfile(full):
        return "full", _load_tensors(full, "backbone weights")
    return "frozen", {}


def load_trained(folder: str, backbone: Backbone) -> HMT:
    """An HMT from a trained checkpoint folder, with its LoRA or backbone weights applied when the
    folder has them (``hmtx.model.hmt.load_checkpoint`` reads HMT's own tensors only)."""
    from hmtx.model.hmt import load_checkpoint

    model = load_checkpoint(folder, backbone)
    mode, tensors = _read_adapter(folder)
    if mode == "lora":
        _apply_mode(model.lm, "lora", 0)
    if tensors:
        _copy_into(model.lm, tensors, os.path.join(folder, LORA_FILE if mode == "lora" else BACKBONE_FILE))
    model.lm.requires_grad_(False)
    return model


def prepare_model(backbone: Backbone, hmt_config: HMTConfig, tc: TrainConfig, init: str | None = None) -> HMT:
    """The HMT to train: backbone mode applied; with ``init`` (a stage-1 checkpoint) its memory token
    and backbone adaptation loaded while T, W_q, W_k start fresh from ``hmt_config.seed``."""
    if hmt_config.backbone != backbone.name:
        raise ValueError(f"config is for backbone {hmt_config.backbone!r}, not {backbone.name!r}")
    model = HMT(backbone.model, hmt_config)
    _apply_mode(model.lm, tc.mode, tc.seed)
    if init is not None:
        init_cfg, tensors = read_checkpoint(init)
        for name in ("backbone", "d", "segment_length", "sensory"):
            if getattr(init_cfg, name) != getattr(hmt_config, name):
                raise ValueError(f"--init {init!r}: its {name} is {getattr(init_cfg, name)!r}, this run's is "
                                 f"{getattr(hmt_config, name)!r}")
        mode, adapter = _read_adapter(init)
        if mode != tc.mode:
            raise ValueError(f"--init {init!r} was trained with backbone mode {mode!r}, this run uses {tc.mode!r}")
        # Stage 2 keeps only the memory token (fresh T, W_q, W_k); stage 3 continues from all of them.
        keep = ("memory_token",) if tc.stage < 3 else tuple(tensors)
        with torch.no_grad():
            for name, p in model.hmt_state_dict().items():
                if name in keep and name in tensors:
                    p.copy_(tensors[name])
        _copy_into(model.lm, adapter, init)
    # Parameters a window never reaches get no gradient; DDP (without find_unused_parameters) and
    # AdamW's weight decay must not see them.
    searches = tc.variant == "hmt" and tc.depth >= 3
    # Stage 3 freezes the memory token: it is all that the recall-off ablation reads.
    model.memory_token.requires_grad_(tc.stage < 3)
    for p in (model.prompt, model.recall.w_q, model.recall.w_k):
        p.requires_grad_(searches)
    if model.readout is not None:
        model.readout.weight.requires_grad_(tc.stage == 3)
    if tc.grad_checkpoint:
        model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


# -- checkpoints ------------------------------------------------------------------------------
CHECKPOINT_FILES = {"hmt_config.json", "hmt.safetensors", LORA_FILE, BACKBONE_FILE, TRAIN_JSON, TRAIN_STATE, "loss.png",
                    MANIFEST_FILE}


def check_output_folder(folder: str) -> None:
    """A save replaces the whole folder: refuse one that holds anything a save would not rewrite
    (a README, another run's files, a source tree) rather than delete it."""
    if os.path.exists(folder):
        if not os.path.isdir(folder):
            raise ValueError(f"--out {folder!r} exists and is not a folder")
        foreign = sorted(set(os.listdir(folder)) - CHECKPOINT_FILES)
        if foreign:
            raise ValueError(f"--out {folder!r} holds files that are not part of a training checkpoint "
                             f"({', '.join(foreign[:5])}); saving would replace the folder -- choose an empty "
                             f"or new folder")


def _atomic_folder_write(folder: str, write) -> None:
    """Write into ``folder + '.tmp'`` then swap it in, so an interrupted save never leaves a torn
    checkpoint (the previous one stays readable until the new one is complete)."""
    tmp, old = folder.rstrip("/") + ".tmp", folder.rstrip("/") + ".old"
    import shutil

    check_output_folder(folder)

    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    os.makedirs(tmp)
    write(tmp)
    write_manifest(tmp)           # last: hashes every checkpoint file write() made
    if os.path.exists(folder):
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def save_training_checkpoint(folder: str, model: HMT, tc: TrainConfig, optimizer, scheduler, step: int,
                             log: list, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    names = [n for n, _ in trainable_parameters(model)]
    opt = optimizer.state_dict()
    tensors = {}
    for idx, st in opt["state"].items():
        for key, v in st.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {"format": TRAIN_FORMAT, "train_config": tc.to_dict(), "step": step, "param_names": names,
            "optimizer_param_groups": opt["param_groups"], "scheduler": scheduler.state_dict(),
            "log": log, **(extra or {})}

    def write(tmp):
        save_checkpoint(model, tmp)
        adapter = _adapter_tensors(model, tc.mode)
        if adapter:
            save_file(adapter, os.path.join(tmp, LORA_FILE if tc.mode == "lora" else BACKBONE_FILE))
        save_file(tensors, os.path.join(tmp, TRAIN_STATE), metadata={"format": TRAIN_FORMAT})
        with open(os.path.join(tmp, TRAIN_JSON), "w") as f:
            json.dump(meta, f, indent=1)

    _atomic_folder_write(folder, write)


def read_training_meta(folder: str) -> dict:
    path = os.path.join(folder, TRAIN_JSON)
    if not os.path.isdir(folder):
        raise ValueError(f"checkpoint {folder!r}: no such folder")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {folder!r}: missing {TRAIN_JSON} (not a training checkpoint; "
                         f"--init takes a finished stage-1 folder, --resume a training folder)")
    verify_manifest(folder)
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != TRAIN_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"checkpoint {folder!r}: {TRAIN_JSON} format {got!r}, expected {TRAIN_FORMAT!r}")
    return meta


def load_training_checkpoint(folder: str, model: HMT, tc: TrainConfig, optimizer, scheduler) -> tuple[int, list, dict]:
    """Restore parameters, optimizer, scheduler and RNG from ``folder`` into a freshly prepared run;
    returns (step, log, meta). The run's TrainConfig must equal the saved one except ``steps``."""
    meta = read_training_meta(folder)
    saved = TrainConfig.from_dict(meta["train_config"])
    a, b = saved.to_dict(), tc.to_dict()
    a.pop("steps"), b.pop("steps")
    diff = sorted(k for k in a if a[k] != b[k])
    if diff:
        raise ValueError(f"checkpoint {folder!r} was trained with different settings: "
                         + ", ".join(f"{k}={a[k]!r} (now {b[k]!r})" for k in diff))
    config, hmt_tensors = read_checkpoint(folder)
    if config != model.config:
        raise ValueError(f"checkpoint {folder!r}: HMT config {config.to_dict()} != this run's {model.config.to_dict()}")
    names = [n for n, _ in trainable_parameters(model)]
    if meta.get("param_names") != names:
        raise ValueError(f"checkpoint {folder!r}: trained parameters differ from this run's "
                         f"({len(meta.get('param_names') or [])} saved, {len(names)} here)")
    state = _load_tensors(os.path.join(folder, TRAIN_STATE), "optimizer and RNG state")
    with torch.no_grad():
        for k, v in model.hmt_state_dict().items():
            v.copy_(hmt_tensors[k])
    _, adapter = _read_adapter(folder)
    _copy_into(model.lm, adapter, folder)
    opt_state = {}
    for key, v in state.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = v
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer_param_groups"]})
        scheduler.load_state_dict(meta["scheduler"])
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"checkpoint {folder!r}: optimizer/scheduler state does not fit this run ({e})") from None
    if "rng.torch" not in state:
        raise ValueError(f"checkpoint {folder!r}: {TRAIN_STATE} lacks rng.torch")
    torch.set_rng_state(state["rng.torch"])
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(k for k in state if k.startswith("rng.cuda."))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return int(meta["step"]), list(meta.get("log", [])), meta


# -- the loop ---------------------------------------------------------------------------------
def _dist():
    """(rank, world size) and whether torch.distributed was started here."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        started = True
    return dist.get_rank(), dist.get_world_size(), started


def train(backbone: Backbone, hmt_config: HMTConfig, tc: TrainConfig, docs, out: str, *,
          init: str | None = None, resume: str | None = None, save_every: int = 50,
          device="cpu", progress: bool = True, stop_after: int | None = None) -> HMT:
    """Train and checkpoint into ``out`` (every ``save_every`` steps and at the end).

    ``stop_after`` ends the run after that many steps of THIS call (a simulated interruption for
    tests; the checkpoint is still written)."""
    check_output_folder(out)
    rank, world, started = _dist()
    device = torch.device(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.manual_seed(tc.seed)
    backbone.model.to(device)
    model = prepare_model(backbone, hmt_config, tc, init=init)
    model.to(device)
    stream = TokenStream(docs, backbone.eos_id)
    b = hmt_config.tokens_per_segment
    win = tc.depth * b + 1
    if win > len(stream):
        stream.window(win, 0, 0, 0)                   # raises the clear error
    params = trainable_parameters(model)
    groups = [{"params": [p for n, p in params if not n.startswith("readout.")]}]
    readout = [p for n, p in params if n.startswith("readout.")]
    if readout:
        groups.append({"params": readout, "lr": tc.readout_lr or tc.lr})
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=tc.lr_step, gamma=tc.lr_gamma)
    step, log, elapsed0 = 0, [], 0.0
    if resume is not None:
        step, log, meta = load_training_checkpoint(resume, model, tc, optimizer, scheduler)
        elapsed0 = float(meta.get("elapsed_s", 0.0))
        if step >= tc.steps:
            raise ValueError(f"checkpoint {resume!r} has done {step} steps already, and this run asks for "
                             f"{tc.steps} in all: give --steps above {step} to train on")
    loss_module = WindowLoss(model, tc.depth, tc.variant, tc.loss_on)
    feeder = None
    if tc.stage == 3:
        if world > 1:
            raise ValueError("stage 3 (streaming BPTT) runs in one process; use stage 2 under torchrun")
        # A resumed run starts a fresh window (the stream position is not saved).
        feeder = StreamFeeder(model, stream, tc.depth, tc.seed, window=step * tc.batch)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        net = loss_module
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=tc.steps, initial=step, desc=f"train stage {tc.stage}", unit="step")
    tokens_per_step = world * tc.batch * (b if tc.stage == 3 else tc.depth * b)
    t_start = time.perf_counter()
    done_here = 0
    if device.type == "cpu":
        # Gradients through the backbone's masked attention underflow to subnormal floats, which
        # the CPU's sgemm handles ~30x slower: a stage-3 step went from ~5 s to 40-80 s at random.
        # Values below 1.2e-38 do not move a trained parameter; flushing them to zero does not
        # either. Set just before the loop, whose `finally` restores PyTorch's default, so that a
        # setup error cannot leave it on: evaluation keeps IEEE subnormals.
        torch.set_flush_denormal(True)
    try:
        while step < tc.steps:
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for i in range(tc.batch):
                if feeder is not None:
                    loss = feeder.graded_loss() / tc.batch
                    loss.backward()
                    total += float(loss.detach())
                    continue
                ids = stream.window(win, tc.seed, step, rank * tc.batch + i).to(device)
                sync = net.no_sync() if world > 1 and i < tc.batch - 1 else nullcontext()
                with sync:
                    loss = net(ids) / tc.batch
                    loss.backward()
                total += float(loss.detach())
            grad_norm = float(torch.nn.utils.clip_grad_norm_([p for _, p in params], tc.clip))
            optimizer.step()
            scheduler.step()
            step += 1
            done_here += 1
            if world > 1:
                import torch.distributed as dist
                t = torch.tensor([total], device=device)
                dist.all_reduce(t)
                total = float(t) / world
            dt = time.perf_counter() - t0
            entry = {"step": step, "loss": total, "ppl": math.exp(min(total, 50.0)), "lr": scheduler.get_last_lr()[0],
                     "grad_norm": grad_norm, "tokens_per_s": tokens_per_step / dt,
                     "elapsed_s": elapsed0 + time.perf_counter() - t_start}
            log.append(entry)
            if bar is not None:
                bar.set_postfix(loss=f"{total:.3f}", tok_s=f"{entry['tokens_per_s']:.0f}")
                bar.update(1)
            last = step == tc.steps or (stop_after is not None and done_here >= stop_after)
            if rank == 0 and (step % save_every == 0 or last):
                _save(out, model, tc, optimizer, scheduler, step, log, elapsed0 + time.perf_counter() - t_start,
                      world, device)
            if world > 1:
                import torch.distributed as dist
                dist.barrier()
            if last:
                break
    finally:
        torch.set_flush_denormal(False)         # PyTorch's default
        if bar is not None:
            bar.close()
        if started:
            import torch.distributed as dist
            dist.destroy_process_group()
    model.eval()
    return model


def _save(out, model, tc, optimizer, scheduler, step, log, elapsed, world, device):
    extra = {"elapsed_s": elapsed, "world_size": world, "device": str(device),
             "torch_threads": torch.get_num_threads()}
    save_training_checkpoint(out, model, tc, optimizer, scheduler, step, log, extra)
    plot_loss(log, os.path.join(out, "loss.png"), title=f"{tc.variant.upper()} stage {tc.stage}, depth {tc.depth}, {tc.mode} backbone")


def plot_loss(log: list, path: str, title: str = "") -> None:
    """Training loss per step (and a 10-step running mean) as a PNG."""
    if not log:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in log]
    loss = [e["loss"] for e in log]
    w = 10
    mean = [sum(loss[max(0, i - w + 1): i + 1]) / len(loss[max(0, i - w + 1): i + 1]) for i in range(len(loss))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, loss, alpha=0.35, label="loss per step")
    ax.plot(steps, mean, label=f"running mean ({w})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean next-token NLL (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
