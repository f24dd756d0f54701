"""The fold unit (hw/engine_fold.py, contract 2's WRITE) against fixed.fold_shift / round_shift on
the shift's boundaries: accumulators at exactly 255 * 2^(s-1) and -255 * 2^(s-1) and one beside,
the extremes of the 32-bit lane accumulators, with a partial last lane group and a partial last
block (padding lanes 0, as the fetch makes them)."""

import numpy as np
from amaranth.sim import Simulator

from hmtx.hw.engine import EngineLayout
from hmtx.hw.engine_fold import FoldUnit
from hmtx.model import fixed
from hmtx.model.configs import EngineConfig
from hwsim import rng

# P = 20: lane groups of 8, 8 and 4; d = 50: blocks of 20, 20 and 10 channels
CFG = EngineConfig("fold20", d=50, d_h=12, n_slots=2, lanes=20, head_dim=12, max_queries=2, max_keys=3)


def _rows(r, d):
    """Accumulator rows whose maximum (or minimum) sits on or beside the boundary of each shift,
    and rows with the 32-bit accumulators' extremes."""
    for s in range(25):
        # round_shift(x, s) > 127 from x = hi_edge on, < -127 from below lo_edge on
        hi_edge, lo_edge = (128, -127) if s == 0 else (255 << (s - 1), -(255 << (s - 1)))
        for x in (hi_edge - 1, hi_edge, lo_edge, lo_edge - 1):
            row = [r.randint(-abs(x) // 2, abs(x) // 2) for _ in range(d)]
            row[r.randrange(d)] = max(min(x, (1 << 31) - 1), -(1 << 31))
            yield np.array(row, dtype=np.int64)
    for _ in range(4):
        row = [r.randint(-(1 << 31), (1 << 31) - 1) for _ in range(d)]
        row[r.randrange(d)] = r.choice([(1 << 31) - 1, -(1 << 31)])
        yield np.array(row, dtype=np.int64)


def test_fold_unit_matches_fold_shift():
    layout = EngineLayout()
    layout._set_layout(CFG, contract=2)
    dut = FoldUnit(layout)
    P, CB, G = layout.P, layout.CB, layout.G
    r = rng(31)
    rows = list(_rows(r, CFG.d))

    async def block(ctx, row, cb):
        lanes = [int(row[cb * P + l]) if cb * P + l < CFG.d else 0 for l in range(P)]
        ctx.set(dut.lanes.payload.lanes, lanes)
        ctx.set(dut.lanes.payload.tag, cb)
        ctx.set(dut.lanes.valid, 1)
        await ctx.tick()
        ctx.set(dut.lanes.valid, 0)
        for _ in range(G + r.randint(0, 3)):      # the MAC holds a block at least d_h >= G cycles
            await ctx.tick()

    async def tb(ctx):
        for n, row in enumerate(rows):
            base = r.randrange(layout.dat_depth - CB)
            ctx.set(dut.ctl.slot_base, base)
            ctx.set(dut.ctl.second, 0)
            ctx.set(dut.ctl.clear, 1)
            await ctx.tick()
            ctx.set(dut.ctl.clear, 0)
            for cb in range(CB):
                await block(ctx, row, cb)
            for _ in range(8):
                await ctx.tick()
            s = int(fixed.fold_shift(row))
            assert ctx.get(dut.shift) == s, f"row {n}: shift"
            ctx.set(dut.ctl.second, 1)
            for cb in range(CB):
                await block(ctx, row, cb)
            for _ in range(8):
                await ctx.tick()
            got = written.pop(n)
            want = fixed.round_shift(row, s)
            for cb in range(CB):
                lanes = got[base + cb]
                assert [lanes.get(l) for l in range(P)] == \
                    list(want[cb * P:(cb + 1) * P]) + [0] * max(0, (cb + 1) * P - CFG.d), f"row {n} block {cb}"
            assert ctx.get(dut.shift) == s

    written = {}
    retired = []

    async def watch(ctx):
        async for _, _, valid, addr, group, data, second, retire in ctx.tick().sample(
                dut.write.valid, dut.write.addr, dut.write.group, dut.write.data, dut.ctl.second, dut.ctl.retire):
            if valid:   # (the row's index: its blocks retired so far, this cycle's not yet)
                word = written.setdefault(len(retired) // (2 * CB), {}).setdefault(addr, {})
                for k in range(layout.LG):
                    if group * layout.LG + k < P:
                        word[group * layout.LG + k] = data[group * layout.LG + k]
            if retire:
                retired.append(second)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.add_testbench(watch, background=True)
    sim.run()
    assert retired == ([0] * CB + [1] * CB) * len(rows), "one retire per block and pass"
