"""Long documents for evaluation: plain-text files or folders, WikiText articles, tokenization.

A plain-text file is one document. A WikiText file (lines such as `` = Robert Boulter = ``) is split
into its articles at the top-level headers; sub-headers (`` = = Career = = ``) stay inside their
article. A folder is every ``*.txt`` file in it (sorted by name), each handled as above.
"""

import os
import re

import torch

from hmtx.model.document import Document, TokenDocument

__all__ = ["Document", "TokenDocument", "split_wikitext", "is_wikitext", "load_documents", "tokenize_documents"]

# A top-level WikiText header: " = Title = " where the title itself does not start with "=".
_TOP_HEADER = re.compile(r"^ = (?!=)(.*?) = $")


def is_wikitext(text: str) -> bool:
    return any(_TOP_HEADER.match(line) for line in text.splitlines())


def split_wikitext(text: str, source: str = "text") -> list[Document]:
    """Articles of a WikiText file, each starting at its top-level header line (kept in the text)."""
    docs, title, lines = [], None, []
    for line in text.splitlines(keepends=True):
        m = _TOP_HEADER.match(line.rstrip("\n"))
        if m:
            if title is not None and "".join(lines).strip():
                docs.append(Document(f"{source}:{title}", "".join(lines)))
            title, lines = m.group(1).strip(), [line]
        elif title is not None:
            lines.append(line)
    if title is not None and "".join(lines).strip():
        docs.append(Document(f"{source}:{title}", "".join(lines)))
    return docs


def _file_documents(path: str) -> list[Document]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    name = os.path.basename(path)
    if is_wikitext(text):
        return split_wikitext(text, name)
    return [Document(name, text)] if text.strip() else []


def load_documents(path: str) -> list[Document]:
    """Documents of a text file, a folder of ``*.txt`` files, or a split of the long-document corpus
    (``longdocs:train|validation|test``, :mod:`hmtx.model.corpus`); ValueError if none has any text."""
    if path.startswith("longdocs:"):
        from hmtx.model.corpus import corpus_documents
        return corpus_documents(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".txt"))
        if not files:
            raise ValueError(f"{path}: folder holds no .txt files")
        docs = [d for f in files for d in _file_documents(f)]
    elif os.path.isfile(path):
        docs = _file_documents(path)
    else:
        raise ValueError(f"{path}: no such file or folder")
    if not docs:
        raise ValueError(f"{path}: no text (empty or whitespace only)")
    return docs


def tokenize_documents(docs: list[Document], tokenizer) -> list[TokenDocument]:
    """Token ids of each document (no special tokens: one document is one stream)."""
    out = []
    for doc in docs:
        ids = tokenizer.encode(doc.text, add_special_tokens=False)
        out.append(TokenDocument(doc.name, torch.tensor(ids, dtype=torch.long)))
    return out
