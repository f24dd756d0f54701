"""Shared pieces of the HMT tests: the seed (fixed default, HMTX_SEED overrides), a tiny HMT, and
random token documents."""

import os

import torch

from hmtx.model.backbone import tiny_llama
from hmtx.model.hmt import HMT

SEED = int(os.environ.get("HMTX_SEED", "1234"))

# The tiny backbone's matrices are a few dozen wide: threads only add synchronisation, and the
# 2-core machine is shared with other test processes.
torch.set_num_threads(1)

# L=12, k=3 -> B=7 new tokens per segment, j=3; N=2 so the FIFO wraps within a few segments.
TINY = dict(segment_length=12, sensory=3, cache_size=2, summary_length=3, d_h=8)

_BACKBONE = None


def backbone():
    global _BACKBONE
    if _BACKBONE is None:
        _BACKBONE = tiny_llama()
    return _BACKBONE


def tiny_hmt(**overrides) -> HMT:
    model = HMT.from_backbone(backbone(), **{**TINY, **overrides})
    # Sharpen the untrained search so its probabilities are far from uniform (a wrong slot or a
    # wrong key then changes P_n visibly).
    with torch.no_grad():
        model.recall.w_q.mul_(8.0)
        model.recall.w_k.mul_(8.0)
    return model.eval()


def random_ids(n: int, seed: int = SEED) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), generator=g)
