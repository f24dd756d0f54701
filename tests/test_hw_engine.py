"""Engine (memories + sequencer + MAC) vs hmtx.model.fixed: writes that wrap the ring, recalls
and attention tiles, with garbage in every padding lane of the input buffer."""

import collections
import re

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Value
from amaranth.sim import Simulator

from hmtx.hw.engine import Engine, Op
from hmtx.model import fixed
from hmtx.model.configs import CONFIGS, EngineConfig
from hwsim import rng

# d, d_h and head_dim not multiples of P: every loop has a partial last block
ODD = EngineConfig("odd20", d=20, d_h=12, n_slots=3, lanes=8, head_dim=12, max_queries=3, max_keys=5)
# P=16: two lane groups (hw/fanout.py's per-group control copies), partial blocks again
WIDE = EngineConfig("wide16", d=40, d_h=20, n_slots=3, lanes=16, head_dim=20, max_queries=2, max_keys=4)
# 32 lanes: key words interleave q's halves in blocks of 4 lanes (Engine.KBL = 4 < KP = 16), and
# d_h = 40 leaves the last q word's second half with no element at all
WIDE32 = EngineConfig("wide32", d=40, d_h=40, n_slots=2, lanes=32, head_dim=20, max_queries=2, max_keys=3)


def rand_weight(r, d, d_h, extreme=False):
    # extreme: full-range mantissas and exponents (saturating scores, one-hot softmax)
    if extreme:
        mant = np.array([[r.choice([-127, 127, r.randint(-127, 127)]) for _ in range(d_h)]
                         for _ in range(d)], dtype=np.int64)
        return fixed.QuantWeight(mant=mant, exp=r.randint(fixed.EXP_MIN, fixed.EXP_MAX),
                                 shift=fixed.projection_shift(mant))
    # scaled like a trained projection, so that scores are O(1) and the softmax is not one-hot
    g = np.random.default_rng(r.randrange(1 << 30))
    return fixed.quantize_weight(g.normal(0, 1.5 / np.sqrt(d), (d, d_h)))


def rand_vec(r, n, extreme=False):
    if extreme:
        return (np.array([r.choice([-127, 127, r.randint(-127, 127)]) for _ in range(n)], dtype=np.int64),
                r.choice([fixed.EXP_MIN, fixed.EXP_MAX, r.randint(fixed.EXP_MIN, fixed.EXP_MAX)]))
    g = np.random.default_rng(r.randrange(1 << 30))
    mant, exp = fixed.quantize_bfp(g.normal(0, 1, n) * 2.0 ** g.integers(-2, 3))
    return mant.astype(np.int64), int(exp)


# wide16 also stores ``w`` in rows of 16 words (8 rows, the last partial), as smollm's 4608
# words are stored in 9 rows of 512
@pytest.mark.parametrize("config,extreme,w_rows", [(CONFIGS["tiny"], False, 512), (ODD, False, 512), (ODD, True, 512),
                                                   (WIDE, False, 16), (WIDE32, False, 512)],
                         ids=["tiny", "odd20", "odd20-extreme", "wide16", "wide32"])
def test_engine_matches_golden(config, extreme, w_rows):
    r = rng(20)
    c = config
    dut = Engine(c, w_row_depth=w_rows)
    assert len(dut.w_rows) == -(-2 * c.d_h * dut.CB // w_rows)
    P, CB, HB, AB = dut.P, dut.CB, dut.HB, dut.AB
    wq, wk = rand_weight(r, c.d, c.d_h, extreme), rand_weight(r, c.d, c.d_h, extreme)
    n_writes = c.n_slots + 2
    log, spread = [], []

    def words(vec, n_words):
        v = list(vec) + [r.randint(-127, 127) for _ in range(n_words * P - len(vec))]  # garbage pad
        return [v[k * P:(k + 1) * P] for k in range(n_words)]

    async def run_op(ctx, **kw):
        for k, v in kw.items():
            ctx.set(getattr(dut, k), v)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for cyc in range(200000):
            if ctx.get(dut.done):
                await ctx.tick()
                return cyc
            await ctx.tick()
        raise TimeoutError("engine never finished")

    def out_lane(ctx, w, l):
        # result word w is stored as its low bytes at out_base + 2w, high bytes at + 1
        lo = ctx.get(dut.dat.data[dut.out_base + 2 * w])[l]
        hi = ctx.get(dut.dat.data[dut.out_base + 2 * w + 1])[l]
        return (hi << 8) | (lo & 0xFF)

    async def tb(ctx):
        for w in range(dut.vin.depth):
            ctx.set(dut.vin.data[w], [r.randint(-128, 127) for _ in range(P)])
        for name, qw in (("wq", wq), ("wk", wk)):
            mem = getattr(dut, name)
            for j in range(c.d_h):
                for cb in range(CB):
                    lanes = [int(qw.mant[cb * P + l, j]) if cb * P + l < c.d else 0 for l in range(P)]
                    ctx.set(mem.data[j * CB + cb], lanes)
        ctx.set(dut.wq_exp, wq.exp)
        ctx.set(dut.wq_shift, wq.shift)
        ctx.set(dut.wk_exp, wk.exp)
        ctx.set(dut.wk_shift, wk.shift)
        cache_m, cache_e = {}, {}
        for n in range(n_writes):
            slot = n % c.n_slots
            m_mant, m_exp = rand_vec(r, c.d, extreme)
            for k, w in enumerate(words(m_mant, CB)):
                ctx.set(dut.vin.data[k], w)
            ctx.set(dut.vexp.data[0], m_exp)
            await run_op(ctx, op=Op.WRITE, slot=slot)
            cache_m[slot], cache_e[slot] = m_mant, m_exp
            k_mant, k_exp = fixed.project(wk, m_mant[None], np.array([m_exp]))
            got_m = [ctx.get(dut.mem.data[slot * CB + k])[l] for k in range(CB) for l in range(P)][:c.d]
            # key words interleave q's halves (Engine.key_element): gather by element
            held = {dut.key_element(kb, k): ctx.get(dut.key.data[slot * dut.KB + kb])[k]
                    for kb in range(dut.KB) for k in range(dut.KP)}
            got_k = [held.get(e) for e in range(c.d_h)]
            assert got_m == list(m_mant), f"write {n}: M"
            assert got_k == list(k_mant[0]), f"write {n}: K"
            assert ctx.get(dut.kexp.data[slot]) == k_exp[0] and ctx.get(dut.mexp.data[slot]) == m_exp

            fill = min(n + 1, c.n_slots)
            s_mant, s_exp = rand_vec(r, c.d, extreme)
            for k, w in enumerate(words(s_mant, CB)):
                ctx.set(dut.vin.data[k], w)
            ctx.set(dut.vexp.data[0], s_exp)
            cycles = await run_op(ctx, op=Op.RECALL, n_keys=fill)
            km, ke = zip(*[fixed.project(wk, cache_m[i][None], np.array([cache_e[i]])) for i in range(fill)])
            out, oe, p = fixed.recall(wq, s_mant, s_exp, np.concatenate(km), np.concatenate(ke),
                                      np.stack([cache_m[i] for i in range(fill)]),
                                      np.array([cache_e[i] for i in range(fill)]))
            got = [out_lane(ctx, k, l) for k in range(CB) for l in range(P)][:c.d]
            assert [ctx.get(dut.pm.data[i]) for i in range(fill)] == list(p), f"recall {n}: probs"
            assert got == list(out), f"recall {n}: P_n"
            assert ctx.get(dut.oexp.data[0]) == oe
            log.append(cycles)
            spread.append(int((p > 0).sum()))

        for causal, nq, nk in ((False, c.max_queries, c.max_keys), (True, 2, 3), (True, 1, 1)):
            rows = [rand_vec(r, c.head_dim, extreme) for _ in range(nq + 2 * nk)]
            phys = list(range(nq)) + [c.max_queries + b for b in range(nk)] + \
                [c.max_queries + c.max_keys + b for b in range(nk)]
            for (mant, e), row in zip(rows, phys):
                for k, w in enumerate(words(mant, AB)):
                    ctx.set(dut.vin.data[row * AB + k], w)
                ctx.set(dut.vexp.data[row], e)
            await run_op(ctx, op=Op.ATTENTION, n_keys=nk, n_q=nq, causal=causal)
            mant = np.stack([x[0] for x in rows])
            ex = np.array([x[1] for x in rows])
            q, k, v = slice(0, nq), slice(nq, nq + nk), slice(nq + nk, nq + 2 * nk)
            out, oe, _ = fixed.attend(mant[q], ex[q], mant[k], ex[k], mant[v], ex[v],
                                      fixed.causal_mask(nq, nk) if causal else None)
            for a in range(nq):
                got = [out_lane(ctx, a * AB + k, l) for k in range(AB) for l in range(P)][:c.head_dim]
                assert got == list(out[a]), f"attention causal={causal} row {a}"
                assert ctx.get(dut.oexp.data[a]) == oe[a]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    # The block RAMs are synthesized with Yosys's no_rw_check (hw/engine.py): a read of the
    # address being written in the same cycle returns don't-care data on the chip. Here every
    # such collision returns random bits instead of the old word, so a collision whose read
    # is used shows up as a mismatch against the golden model.
    pairs = ([("dat", dut._dat_r, dut._dat_w), ("key", dut._key_r, dut._key_w),
              ("wm", dut.softmax.wm_r, dut.softmax.wm_w), ("sc", dut.softmax.sc_r, dut.softmax.sc_w)]
             + [(f"w{k}", rp, wp) for k, (rp, wp) in enumerate(zip(dut._w_r, dut._w_w))])
    watched = [sig for _, rp, wp in pairs for sig in (wp.en, wp.addr, rp.addr)]
    collisions = collections.Counter()
    chaos = rng(21)

    async def collide(ctx):
        async for _, _, *vals in ctx.tick().sample(*watched):
            for k, (name, rp, _) in enumerate(pairs):
                en, wa, ra = vals[3 * k:3 * k + 3]
                if en and wa == ra:
                    collisions[name] += 1
                    data = Value.cast(rp.data)
                    ctx.set(data, chaos.getrandbits(len(data)))
    sim.add_testbench(collide, background=True)
    sim.run()
    print("read/write collisions (answered with random bits):", dict(collisions))
    print("recall cycles", log, "nonzero probabilities", spread)
    if not extreme:
        assert max(spread) >= 2, "every softmax was one-hot: the test data does not exercise it"


def test_floorplan_names_stay_at_the_engine():
    """hw/flow/floorplan.py finds the lane block RAMs as ``engine.dat``, ``engine.key``,
    ``engine.w<r>`` and the lane multipliers as ``engine.mac.prod<l>``: those stay directly in
    the engine (the units reach the memories through ports), the unit memories in their units."""
    dut = Engine(WIDE, w_row_depth=16)
    text = rtlil.convert(dut, name="engine")
    where, module, wires = {}, None, collections.defaultdict(set)
    for line in text.splitlines():
        if line.startswith("module "):
            module = line.split()[1].lstrip("\\")
        elif line.lstrip().startswith(("memory ", "wire ")):
            name = line.split()[-1].lstrip("\\")
            if line.lstrip().startswith("memory "):
                where[name] = module
            else:
                wires[module].add(name)
    rows = [f"w{r}" for r in range(len(dut.w_rows))]
    assert len(rows) == 8 and all(where[n] == "engine" for n in ["dat", "key", *rows])
    assert {where[n] for n in ("sc", "pm", "wm", "lut")} == {"engine.softmax"}
    assert where["oexp"] == "engine.exps"
    assert {f"prod{l}" for l in range(dut.P)} <= wires["engine.mac"]
    assert re.search(r"^module \\engine\.score$", text, re.M) and "sc0_p1" in wires["engine.score"]
