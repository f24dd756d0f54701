"""The long-document corpus: the committed split by document, loaded from the installed packages and
checked against the split file's hashes."""

import json

import pytest

from hmtx.model.corpus import SPLITS, SPLITS_FILE, corpus_documents, source_documents, text_sha256
from hmtx.model.text import load_documents

B_SMOLLM2 = 222          # tokens per segment at the shipped configuration (L=256, k=32)


def _splits():
    with open(SPLITS_FILE) as f:
        return json.load(f)


def test_splits_are_disjoint_by_document_and_cover_both_sources():
    sp = _splits()
    names = {s: [e["name"] for e in sp[s]] for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not set(names[a]) & set(names[b]), (a, b)
    for s in ("test", "validation"):
        assert {n.split("/")[0] for n in names[s]} == {"shakespeare", "wikipedia"}
        # Every evaluation document holds the 16 segments the headline table scores.
        assert all(e["tokens"] >= 16 * B_SMOLLM2 for e in sp[s]), s
    assert set(names["train"]) | set(names["test"]) | set(names["validation"]) == set(source_documents())


def test_test_split_loads_from_the_packages_with_matching_hashes():
    docs = load_documents("longdocs:test")
    assert [d.name for d in docs] == [e["name"] for e in _splits()["test"]]
    assert all(len(d.text) > 5_000 for d in docs)
    assert not any(n.endswith("_f") for n in source_documents())          # no First Folio duplicates
    plays = [d for d in docs if d.name.startswith("shakespeare/")]
    assert plays and "ACT I" in plays[0].text


def test_a_changed_text_or_unknown_split_is_refused(tmp_path):
    sp = _splits()
    entry = dict(sp["test"][0], sha256=text_sha256("something else"))
    bad = tmp_path / "splits.json"
    bad.write_text(json.dumps({**sp, "test": [entry]}))
    with pytest.raises(ValueError, match="sha256"):
        corpus_documents("longdocs:test", str(bad))
    bad.write_text(json.dumps({**sp, "test": [{"name": "shakespeare/no_such_play", "sha256": "0"}]}))
    with pytest.raises(ValueError, match="not in the installed packages"):
        corpus_documents("longdocs:test", str(bad))
    with pytest.raises(ValueError, match="unknown split"):
        load_documents("longdocs:dev")
