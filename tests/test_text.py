"""Documents: WikiText article splitting, plain files and folders, tokenization, bad input."""

import pytest

from hmtx.model.backbone import ByteTokenizer
from hmtx.model.text import is_wikitext, load_documents, split_wikitext, tokenize_documents

WIKI = """ 
 = Alpha = 
 
 Alpha is a letter . 
 
 = = History = = 
 
 It came first . 
 = Beta = 
 
 Beta follows . 
 = = = Usage = = = 
 Often . 
"""


def test_split_wikitext_at_top_level_headers_only():
    docs = split_wikitext(WIKI, "w.txt")
    assert [d.name for d in docs] == ["w.txt:Alpha", "w.txt:Beta"]
    assert docs[0].text.startswith(" = Alpha = \n") and "= = History = =" in docs[0].text
    assert "It came first" in docs[0].text and "Beta" not in docs[0].text
    assert docs[1].text.endswith(" Often . \n") and "= = = Usage = = =" in docs[1].text
    assert not is_wikitext("no headers = here = at all\n = = Sub = = \n")


def test_shipped_wikitext_test_split():
    docs = load_documents("data/wikitext-2/test.txt")
    assert len(docs) > 50
    assert docs[0].name == "test.txt:Robert <unk>"
    assert all(d.text.lstrip().startswith("= ") for d in docs)


def test_plain_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second file = not a header = \n")
    (tmp_path / "a.txt").write_text(WIKI)
    (tmp_path / "ignored.md").write_text("not text")
    (tmp_path / "c.txt").write_text("   \n")
    docs = load_documents(str(tmp_path))
    assert [d.name for d in docs] == ["a.txt:Alpha", "a.txt:Beta", "b.txt"]
    assert [d.name for d in load_documents(str(tmp_path / "b.txt"))] == ["b.txt"]
    toks = tokenize_documents(docs[2:], ByteTokenizer())
    assert toks[0].ids.tolist() == list(b"second file = not a header = \n")


def test_bad_text(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no text"):
        load_documents(str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match="no such file"):
        load_documents(str(tmp_path / "missing.txt"))
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="holds no .txt files"):
        load_documents(str(tmp_path / "sub"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_documents(str(tmp_path / "bin.txt"))
