"""The lane engine's ATTN_PASS (docs/protocol.md section 10) against hmtx.model.fixed: a causal
head whose rows run over several key tiles, computed in the three passes as the host does
(held Q rows, pass 1's m and E, pass 2's sums, pass 3's accumulators carried between tiles in
``dat``), every pass's answer and the output rows bit for bit; and the same with wrong host
scalars (a smaller m, a smaller E, a small sum), where the clamps act and the carried
accumulators wrap (``fixed.carry_acc``)."""

import numpy as np
import pytest
from amaranth.hdl import Value
from amaranth.sim import Simulator

from hmtx.hw.engine import Engine, Op
from hmtx.model import fixed
from hmtx.model.configs import CONFIGS, EngineConfig
from hmtx.model.protocol import ATTN_NONE_E, ATTN_NONE_M
from engine_testlib import rand_vec, result_words
from hwsim import rng

ODD = EngineConfig("odd20", d=20, d_h=12, n_slots=3, lanes=8, head_dim=12, max_queries=3, max_keys=5)
WIDE = EngineConfig("wide16", d=40, d_h=20, n_slots=3, lanes=16, head_dim=20, max_queries=2, max_keys=4)
# 32 lanes, one word a row (AB = 1), three keys a tile: the rows' overlap at its tightest
WIDE32 = EngineConfig("wide32", d=40, d_h=40, n_slots=2, lanes=32, head_dim=20, max_queries=2, max_keys=3)


def tiles_of(r, n, most):
    """Cut n keys into tiles of 1..most keys (short ones too: pass 3 pads them)."""
    out, b = [], 0
    while b < n:
        size = min(n - b, r.choice([1, 2, most, r.randint(1, most)]))
        out.append((b, size))
        b += size
    return out


def golden_head(q, k, v, q0, tiles, m=None, big_e=None, total=None):
    """What the passes answer for queries at positions q0.. over keys 0..n-1 (causal), per
    tile, with the host's m, E, sum (default: the true ones): pass 1 (m, E) and pass 2 sums
    per tile, and the output rows after pass 3 (carrying the accumulator between tiles)."""
    nq = q[0].shape[0]
    p1, p2 = [], []
    t_all = fixed.scores(q[0], q[1], k[0], k[1])
    for kb, size in tiles:
        keep = fixed.diag_mask(nq, size, q0 - kb)
        t = t_all[:, kb:kb + size]
        kept = keep.any(axis=1)
        p1.append((np.where(kept, fixed.row_max(t, keep), ATTN_NONE_M),
                   np.where(kept, fixed.value_exp_max(keep, v[1][kb:kb + size]), ATTN_NONE_E)))
    m = np.max([x[0] for x in p1], axis=0) if m is None else m
    big_e = np.max([x[1] for x in p1], axis=0) if big_e is None else big_e
    acc, wrapped = None, False
    for j, (kb, size) in enumerate(tiles):
        keep = fixed.diag_mask(nq, size, q0 - kb)
        e = fixed.exp_terms(t_all[:, kb:kb + size], keep, m)
        p2.append(e.sum(axis=1))
    total = np.sum(p2, axis=0) if total is None else total
    for j, (kb, size) in enumerate(tiles):
        keep = fixed.diag_mask(nq, size, q0 - kb)
        e = fixed.exp_terms(t_all[:, kb:kb + size], keep, m)
        part = fixed.weight_acc(fixed.probabilities(e, total), keep, v[0][kb:kb + size], v[1][kb:kb + size], big_e)
        if acc is not None:
            wrapped |= bool((fixed.carry_acc(acc) != acc).any())
        acc = part if acc is None else fixed.carry_acc(acc) + part
    out, oe = fixed.finish_weighted_sum(acc, big_e)
    return p1, p2, (m, big_e, total), out, oe, wrapped


def run_head(dut, config, seed, wrong_scalars=False, causal=True):
    r = rng(seed)
    c, P, AB = config, dut.P, dut.AB
    nq = r.randint(1, c.max_queries)
    n = r.randint(c.max_keys + 1, 3 * c.max_keys) if not wrong_scalars else 3 * c.max_keys
    # (non-causal: every key kept; wrong scalars: the last rows, which keep the most keys)
    q0 = n if not causal else n - nq if wrong_scalars else r.randint(0, n - nq)
    tiles = tiles_of(r, n, c.max_keys)

    def rows(count):
        vs = [rand_vec(r, c.head_dim) for _ in range(count)]
        return np.stack([x[0] for x in vs]), np.array([x[1] for x in vs])
    q, k, v = rows(nq), rows(n), rows(n)
    if wrong_scalars:           # values of one sign and exponent: the saturated sums grow past 2^23
        v = (np.abs(v[0]), np.full(n, int(v[1][0])))
    p1, p2, (m, big_e, total), out, oe, _ = golden_head(q, k, v, q0, tiles)
    wrong = None
    if wrong_scalars:
        # a smaller m (terms clamp at v = 0), a smaller E (alignments clamp at 0), a small sum
        # (probabilities saturate, the carried accumulators wrap)
        # (row 0: m = -2^31 and the least sum: every kept key's probability saturates)
        m_w = np.array([-(1 << 31)] + [int(x) - r.choice([0, 1 << 8, 1 << 12, 1 << 20]) for x in m[1:]])
        e_w = np.maximum(big_e - np.array([r.choice([0, 1, 5]) for _ in range(nq)]), fixed.EXP_MIN)
        t_w = np.array([1 << 15] + [r.choice([1 << 15, (1 << 15) + 7, int(x)]) for x in total[1:]])
        _, _, _, out_w, oe_w, wrapped = golden_head(q, k, v, q0, tiles, m_w, e_w, t_w)
        wrong = (m_w, e_w, t_w, out_w, oe_w)
        assert wrapped, "the wrong scalars should make a carried accumulator wrap"
    cycles = []

    def words(vec):
        vv = list(vec) + [r.randint(-127, 127) for _ in range(AB * P - len(vec))]
        return [vv[w * P:(w + 1) * P] for w in range(AB)]

    async def load_row(ctx, row, mant, exp):
        for w, word in enumerate(words(mant)):
            ctx.set(dut.wr_dat_addr, row * AB + w)
            ctx.set(dut.wr_dat_data, word)
            ctx.set(dut.wr_dat_en, (1 << P) - 1)
            await ctx.tick()
        ctx.set(dut.wr_dat_en, 0)
        await set_vexp(ctx, row, exp)

    async def set_vexp(ctx, row, exp):
        ctx.set(dut.wr_vexp_addr, row)
        ctx.set(dut.wr_vexp_data, int(exp))
        ctx.set(dut.wr_vexp_en, 1)
        await ctx.tick()
        ctx.set(dut.wr_vexp_en, 0)

    async def scalars(ctx, recs):
        for a, rec in enumerate(recs):
            for byte, val in enumerate(rec):
                ctx.set(dut.wr_rs_addr, a)
                ctx.set(dut.wr_rs_byte, byte)
                ctx.set(dut.wr_rs_data, val)
                ctx.set(dut.wr_rs_en, 1)
                await ctx.tick()
        ctx.set(dut.wr_rs_en, 0)

    async def read_rows(ctx):
        got = []
        for a in range(nq):
            ctx.set(dut.rd_rs_addr, a)
            await ctx.tick()
            got.append(ctx.get(dut.rd_rs_data))
        return got

    async def run(ctx, p, kb, size, first=False, last=False):
        for b in range(size):
            await load_row(ctx, c.max_queries + b, k[0][kb + b], k[1][kb + b])
            if p == 1:
                await set_vexp(ctx, c.max_queries + c.max_keys + b, v[1][kb + b])
            elif p == 3:
                await load_row(ctx, c.max_queries + c.max_keys + b, v[0][kb + b], v[1][kb + b])
        for name, val in (("op", Op.ATTN_PASS), ("apass", p), ("afirst", first), ("alast", last),
                          ("diag", q0 - kb if causal else 0), ("n_q", nq), ("n_keys", size), ("causal", causal)):
            ctx.set(getattr(dut, name), val)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for cyc in range(100000):
            if ctx.get(dut.done):
                await ctx.tick()
                cycles.append((p, size, cyc))
                return
            await ctx.tick()
        raise TimeoutError("engine never finished")

    async def tb(ctx):
        for w in range(dut.dat.depth):                      # garbage everywhere, carried words too
            ctx.set(dut.dat.data[w], [r.randint(-128, 127) for _ in range(P)])
        for a in range(nq):
            await load_row(ctx, a, q[0][a], q[1][a])
        for j, (kb, size) in enumerate(tiles):
            await run(ctx, 1, kb, size)
            got = await read_rows(ctx)
            assert [x.m for x in got] == list(p1[j][0]), f"pass 1 tile {j}: m"
            assert [x.e for x in got] == list(p1[j][1]), f"pass 1 tile {j}: E"
        hm, he, ht = (m, big_e, total) if wrong is None else wrong[:3]
        await scalars(ctx, [int(x).to_bytes(4, "little", signed=True) for x in hm])
        for j, (kb, size) in enumerate(tiles):
            await run(ctx, 2, kb, size)
            got = await read_rows(ctx)
            want = p2[j] if wrong is None else golden_head(q, k, v, q0, tiles, hm)[1][j]
            assert [x.sum for x in got] == list(want), f"pass 2 tile {j}: sums"
        await scalars(ctx, [int(a).to_bytes(4, "little", signed=True) + int(b).to_bytes(1, "little", signed=True)
                            + int(t).to_bytes(4, "little") for a, b, t in zip(hm, he, ht)])
        for j, (kb, size) in enumerate(tiles):
            await run(ctx, 3, kb, size, first=j == 0, last=j == len(tiles) - 1)
        want_out, want_oe = (out, oe) if wrong is None else wrong[3:]
        for a in range(nq):
            got = result_words(ctx, dut, a * AB, AB)[:c.head_dim]
            assert got == list(want_out[a]), f"output row {a}"
            assert ctx.get(dut.oexp.data[a]) == want_oe[a], f"output row {a}: exponent"
        if wrong is None:       # the passes compose to attention over the whole row
            full, full_e, _ = fixed.attend(q[0], q[1], k[0], k[1], v[0], v[1], fixed.diag_mask(nq, n, q0))
            assert (want_out == full).all() and (want_oe == full_e).all()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    chaos = rng(seed + 1)
    ports = [(dut._dat_r, dut._dat_w), (dut.softmax.wm_r, dut.softmax.wm_w), (dut.softmax.sc_r, dut.softmax.sc_w)]
    watched = [s for rp, wp in ports for s in (wp.en, wp.addr, rp.addr)]

    async def collide(ctx):     # a same-address read during a write reads random bits
        async for _, _, *vals in ctx.tick().sample(*watched):
            for i, (rp, _) in enumerate(ports):
                en, wa, ra = vals[3 * i:3 * i + 3]
                if en and wa == ra:
                    data = Value.cast(rp.data)
                    ctx.set(data, chaos.getrandbits(len(data)))
    sim.add_testbench(collide, background=True)
    sim.run()
    print(f"nq={nq} keys={n} q0={q0} tiles={tiles} cycles={cycles}")
    return cycles


CASES = [(CONFIGS["tiny"], 1), (CONFIGS["tiny"], 2), (ODD, 1), (ODD, 2), (WIDE, 1), (WIDE32, 2)]


@pytest.mark.parametrize("config,contract", CASES, ids=[f"{c.name}-c{k}" for c, k in CASES])
@pytest.mark.parametrize("seed", [1, 2])
def test_attn_pass_head_matches_golden(config, contract, seed):
    run_head(Engine(config, contract=contract), config, seed=seed)


@pytest.mark.parametrize("config,contract", [(CONFIGS["tiny"], 1), (ODD, 2)], ids=["tiny-c1", "odd20-c2"])
def test_attn_pass_wrong_host_scalars_clamp_and_wrap_as_the_contract_says(config, contract):
    run_head(Engine(config, contract=contract), config, seed=7, wrong_scalars=True)


def test_attn_pass_without_causal_mask():
    run_head(Engine(CONFIGS["tiny"]), CONFIGS["tiny"], seed=3, causal=False)


@pytest.mark.parametrize("config,contract", [(CONFIGS["tiny"], 1), (CONFIGS["tiny"], 2), (WIDE32, 1), (WIDE32, 2),
                                             (ODD, 2)], ids=["tiny-c1", "tiny-c2", "wide32-c1", "wide32-c2", "odd20-c2"])
def test_overlapped_attention_rows_every_tile_shape(config, contract):
    """ATTENTION tiles of every shape up to the config's, back to back, causal or not: the rows'
    overlap (hw/engine_rowlap.py) at its tightest (one key, one row) and widest, vs fixed.attend."""
    dut, c = Engine(config, contract=contract), config
    r = rng(11)
    P, AB = dut.P, dut.AB
    shapes = [(nq, nk, causal) for nq in range(1, c.max_queries + 1) for nk in range(1, c.max_keys + 1)
              for causal in (False, True) if not causal or nq <= nk]
    r.shuffle(shapes)

    async def tb(ctx):
        for nq, nk, causal in shapes:
            rows = [rand_vec(r, c.head_dim) for _ in range(nq + 2 * nk)]
            phys = list(range(nq)) + [c.max_queries + b for b in range(nk)] + \
                [c.max_queries + c.max_keys + b for b in range(nk)]
            for (mant, e), row in zip(rows, phys):
                vv = list(mant) + [r.randint(-127, 127) for _ in range(AB * P - len(mant))]
                for w in range(AB):
                    ctx.set(dut.vin.data[row * AB + w], vv[w * P:(w + 1) * P])
                ctx.set(dut.vexp.data[row], int(e))
            for name, val in (("op", Op.ATTENTION), ("n_keys", nk), ("n_q", nq), ("causal", causal)):
                ctx.set(getattr(dut, name), val)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for _ in range(20000):
                if ctx.get(dut.done):
                    break
                await ctx.tick()
            else:
                raise TimeoutError(f"ATTENTION {nq}x{nk} causal={causal} never finished")
            await ctx.tick()
            mant = np.stack([x[0] for x in rows])
            ex = np.array([x[1] for x in rows])
            q, k, v = slice(0, nq), slice(nq, nq + nk), slice(nq + nk, nq + 2 * nk)
            out, oe, _ = fixed.attend(mant[q], ex[q], mant[k], ex[k], mant[v], ex[v],
                                      fixed.causal_mask(nq, nk) if causal else None)
            for a in range(nq):
                got = result_words(ctx, dut, a * AB, AB)[:c.head_dim]
                assert got == list(out[a]), f"ATTENTION {nq}x{nk} causal={causal}: row {a}"
                assert ctx.get(dut.oexp.data[a]) == oe[a], f"ATTENTION {nq}x{nk} causal={causal}: row {a} exponent"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
