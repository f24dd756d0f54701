"""A document by name: its text (:mod:`hmtx.model.text`, :mod:`hmtx.model.corpus`) or its token ids."""

from dataclasses import dataclass

import torch

__all__ = ["Document", "TokenDocument"]


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass(frozen=True)
class TokenDocument:
    name: str
    ids: torch.Tensor       # int64 [n]
