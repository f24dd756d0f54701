"""hmtx.sim.perf: the engine's recall cycles follow docs/hardware.md's formula."""

import math

import pytest

from hmtx.model.configs import get_config
from hmtx.sim.perf import cycles_per_recall


@pytest.mark.parametrize("name", ["tiny", "up5k"])
def test_recall_cycles_match_the_documented_formula(name):
    c = get_config(name)
    P, n = c.lanes, c.n_slots
    # docs/hardware.md: CB = ceil(d/P); key words of KP = P/2 lanes (P even, else P), KB = ceil(d_h/KP);
    # L = ceil(log2 P); RECALL over n slots takes d_h*CB + n*KB + CB*max(n, 2) + 2n + 106 + 2L cycles.
    CB, KB, L = math.ceil(c.d / P), math.ceil(c.d_h / (P // 2 if P % 2 == 0 else P)), math.ceil(math.log2(P))
    assert cycles_per_recall(c) == c.d_h * CB + n * KB + CB * max(n, 2) + 2 * n + 106 + 2 * L


@pytest.mark.parametrize("name", ["tiny", "up5k"])
def test_contract_2_recall_cycles_match_the_documented_formula(name):
    c = get_config(name)
    P, n = c.lanes, c.n_slots
    # docs/hardware.md, "Contract 2 in the lane engine": n*CB + CB*max(n, 2) + n + 59 + L cycles
    CB, L = math.ceil(c.d / P), math.ceil(math.log2(P))
    assert cycles_per_recall(c, contract=2) == n * CB + CB * max(n, 2) + n + 59 + L
