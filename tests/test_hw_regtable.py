# amaranth: UnusedElaboratable=no
"""hmtx.hw.regtable: flip-flop tables with a banked synchronous read, against a Python model."""

import random

import pytest
from amaranth.hdl import Module, signed
from amaranth.sim import Simulator

from hmtx.hw.regtable import RegisterTable

SEED = 20261126


@pytest.mark.parametrize("depth,bank", [(144, None), (64, None), (5, 2), (1, None), (9, 1)])
def test_reads_match_a_model_cycle_by_cycle(depth, bank):
    """Random writes from two ports and random reads: the sync port returns the entry at the
    previous cycle's address as it was before that cycle's writes (old data on a collision), the
    latency-2 port the entry at the address of two cycles before as it was one cycle before,
    the comb port the entry now; the later write port wins."""
    t = RegisterTable(signed(8), depth, bank=bank, name="t")
    w0, w1 = t.write_port(), t.write_port()
    rs, rc, r2 = t.read_port(), t.read_port(domain="comb"), t.read_port(latency=2)
    base = depth // 3                   # a port that reads only entries base.. (addr from base)
    rp = t.read_port(base=base, size=depth - base)
    m = Module()
    m.submodules.t = t
    sim = Simulator(m)
    sim.add_clock(1e-6)
    rng = random.Random(SEED + depth)
    model = [0] * depth

    async def bench(ctx):
        expect_sync = None
        addr2 = [None, None]            # latency-2 addresses of the last two cycles
        for cycle in range(400):
            for k in range(depth):        # a testbench can set entries directly
                if cycle == 0:
                    ctx.set(t.data[k], model[k])
            a_s, a_c = rng.randrange(depth), rng.randrange(depth)
            writes = [(p, rng.randrange(depth), rng.randrange(-128, 128), rng.random() < 0.5) for p in (w0, w1)]
            if rng.random() < 0.3:       # a collision: write the entry being read
                writes[0] = (w0, a_s, writes[0][2], True)
            a_2 = rng.randrange(depth)
            a_p = rng.randrange(depth - base)
            ctx.set(rp.addr, a_p)
            ctx.set(rs.addr, a_s)
            ctx.set(rc.addr, a_c)
            ctx.set(r2.addr, a_2)
            for p, a, d, en in writes:
                ctx.set(p.addr, a)
                ctx.set(p.data, d)
                ctx.set(p.en, en)
            assert ctx.get(rc.data) == model[a_c], f"comb read, cycle {cycle}, seed {SEED + depth}"
            if expect_sync is not None:
                assert ctx.get(rs.data) == expect_sync, f"sync read, cycle {cycle}, seed {SEED + depth}"
                assert ctx.get(rp.data) == expect_part, f"part read, cycle {cycle}, seed {SEED + depth}"
            expect_sync = model[a_s]
            expect_part = model[base + a_p]
            if addr2[0] is not None:
                assert ctx.get(r2.data) == expect_2, f"latency-2 read, cycle {cycle}, seed {SEED + depth}"
            if addr2[1] is not None:
                expect_2 = model[addr2[1]]
            addr2 = [addr2[1], a_2]
            for p, a, d, en in writes:
                if en:
                    model[a] = d
            await ctx.tick()
            assert [ctx.get(e) for e in t.data] == model, f"contents, cycle {cycle}, seed {SEED + depth}"
    sim.add_testbench(bench)
    sim.run()


def test_default_bank_is_about_the_square_root():
    assert RegisterTable(8, 144).bank == 16      # 9 banks of 16, then a 9:1 select
    assert RegisterTable(8, 64).bank == 8
    assert RegisterTable(8, 16).bank == 4
    assert RegisterTable(8, 1).bank == 1


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="'x'.*power of two, got 6"):
        RegisterTable(8, 32, bank=6, name="x")
    with pytest.raises(ValueError, match="depth must be at least 1, got 0"):
        RegisterTable(8, 0)
    with pytest.raises(ValueError, match="'sync' or 'comb', got 'fast'"):
        RegisterTable(8, 4).read_port(domain="fast")
    with pytest.raises(ValueError, match="sync read has latency 1 or 2, got 3"):
        RegisterTable(8, 4).read_port(latency=3)
    with pytest.raises(ValueError, match="entries 3..4 are not within 0..3"):
        RegisterTable(8, 4).read_port(base=3, size=2)
