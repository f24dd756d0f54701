# amaranth: UnusedElaboratable=no
"""hmtx.hw.fanout: registered copies of a control signal, one level or a region/leaf tree."""

import random

import pytest
from amaranth.hdl import Fragment, Module, Signal
from amaranth.sim import Simulator

from hmtx.hw.fanout import Replicas, replicate, replicate_tree

SEED = 20261126


def _run(build, cycles=40):
    """Drive a random byte into ``build``'s input each cycle; return (inputs, outputs) per cycle."""
    m = Module()
    x = Signal(8)
    outs = build(m, x)
    sim = Simulator(m)
    sim.add_clock(1e-6)
    rng = random.Random(SEED)
    seen = []

    async def bench(ctx):
        for _ in range(cycles):
            v = rng.randrange(256)
            ctx.set(x, v)
            await ctx.tick()
            seen.append((v, [ctx.get(o) for o in outs]))
    sim.add_testbench(bench)
    sim.run()
    return seen


# (a value set before a clock edge is what a register shows after it: one register reads back
# the same cycle's input here, two registers the previous one)
def test_replicate_copies_one_cycle_late():
    seen = _run(lambda m, x: replicate(m, x, 3, "c"))
    for t in range(len(seen)):
        assert seen[t][1] == [seen[t][0]] * 3, f"cycle {t}, seed {SEED}"


def test_replicate_tree_leaves_are_two_cycles_late_and_in_leaf_order():
    regions = [0, 1, 0, 1, 2, 3, 2, 3]
    seen = _run(lambda m, x: replicate_tree(m, x, regions, "t"))
    for t in range(1, len(seen)):
        assert seen[t][1] == [seen[t - 1][0]] * len(regions), f"cycle {t}, seed {SEED}"


def test_replicate_tree_has_one_register_per_region_then_per_leaf():
    m = Module()
    x = Signal(5)
    replicate_tree(m, x, [0, 1, 0, 1, 2, 3, 2, 3], "t")
    reps = [sub for sub, _ in m._named_submodules.values() if isinstance(sub, Replicas)]
    assert sorted(r.n for r in reps) == [2, 2, 2, 2, 4] and all(r.width == 5 for r in reps)
    Fragment.get(m, None)           # (elaborated, so that Amaranth does not warn it was unused)


def test_replicate_tree_refuses_bad_regions():
    m = Module()
    with pytest.raises(ValueError, match="region numbers"):
        replicate_tree(m, Signal(2), [], "t")
    with pytest.raises(ValueError, match="region numbers"):
        replicate_tree(m, Signal(2), [0, -1], "t")
