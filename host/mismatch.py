"""What a check found: the first difference between a device's answer and the reference, and the
helpers that compare and serialize the integer arrays behind it (shared by the recall's
:class:`~hmtx.host.runtime.CheckedDevice` and the attention heads' :class:`~hmtx.host.attention_tiles.CheckedAttention`)."""

import base64
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Mismatch", "MismatchError"]


@dataclass(frozen=True)
class Mismatch:
    """The first difference between the device and the reference."""

    segment: int | None
    op: str                      # RECALL, WRITE_MEMORY, READ_SLOT, ATTN_PASS, MODEL
    slot: int | None
    field: str                   # p_mant, p_exp, probs, m_mant, m_exp, k_mant, k_exp (contract 2: kf_mant,
                                 # kf_exp, the folded key K'), slot, fill, ...
    element: int | None
    expected: int | float
    got: int | float

    def describe(self) -> str:
        where = f"segment {self.segment}" if self.segment is not None else "replay"
        slot = f" slot {self.slot}" if self.slot is not None else ""
        elem = f"[{self.element}]" if self.element is not None else ""
        return (f"MISMATCH at {where}, op {self.op}{slot}: {self.field}{elem} "
                f"expected {self.expected}, got {self.got}")


class MismatchError(RuntimeError):
    def __init__(self, mismatch: Mismatch):
        self.mismatch = mismatch
        super().__init__(mismatch.describe())


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(np.int64)


def _first_diff(segment, op, slot, name, expected, got):
    """Raise MismatchError for the first element where ``got`` differs from ``expected``."""
    e, g = np.asarray(expected).reshape(-1), np.asarray(got).reshape(-1)
    scalar = np.ndim(expected) == 0
    if e.shape != g.shape:
        raise MismatchError(Mismatch(segment, op, slot, f"{name} length", None, int(e.size), int(g.size)))
    bad = np.flatnonzero(e != g)
    if bad.size:
        i = int(bad[0])
        raise MismatchError(Mismatch(segment, op, slot, name, None if scalar else i, int(e[i]), int(g[i])))


def _b64(a, dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode()


def _unb64(s: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).astype(np.int64)
