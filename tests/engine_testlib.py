"""One golden check for either engine (hw/engine.py's lanes, hw/serial_engine.py's serial): the
same memories and control members (EngineSignature), so one testbench drives both. Writes that
wrap the ring, a recall after each, attention tiles (full, causal, one key), garbage in every
padding lane, and every block-RAM read/write collision answered with random bits."""

import collections

import numpy as np
from amaranth.hdl import Value
from amaranth.sim import Simulator

from hmtx.hw.engine import Op
from hmtx.model import fixed
from hwsim import rng

__all__ = ["rand_weight", "rand_vec", "result_words", "check_engine_against_golden"]


def rand_weight(r, d, d_h, extreme=False):
    """A projection: ``extreme`` full-range mantissas and exponents (saturating scores, one-hot
    softmax), else scaled like a trained one, so that scores are O(1) and the softmax spreads."""
    if extreme:
        mant = np.array([[r.choice([-127, 127, r.randint(-127, 127)]) for _ in range(d_h)]
                         for _ in range(d)], dtype=np.int64)
        return fixed.QuantWeight(mant=mant, exp=r.randint(fixed.EXP_MIN, fixed.EXP_MAX),
                                 shift=fixed.projection_shift(mant))
    g = np.random.default_rng(r.randrange(1 << 30))
    return fixed.quantize_weight(g.normal(0, 1.5 / np.sqrt(d), (d, d_h)))


def rand_vec(r, n, extreme=False):
    if extreme:
        return (np.array([r.choice([-127, 127, r.randint(-127, 127)]) for _ in range(n)], dtype=np.int64),
                r.choice([fixed.EXP_MIN, fixed.EXP_MAX, r.randint(fixed.EXP_MIN, fixed.EXP_MAX)]))
    g = np.random.default_rng(r.randrange(1 << 30))
    mant, exp = fixed.quantize_bfp(g.normal(0, 1, n) * 2.0 ** g.integers(-2, 3))
    return mant.astype(np.int64), int(exp)


def result_words(ctx, dut, first, n_words):
    """The int16 elements of result words ``first ..`` of ``n_words`` (lane order): word w is
    stored as its low bytes at ``out_base + 2w``, its high bytes at the next word."""
    got = []
    for w in range(first, first + n_words):
        lo = ctx.get(dut.dat.data[dut.out_base + 2 * w])
        hi = ctx.get(dut.dat.data[dut.out_base + 2 * w + 1])
        got += [(hi[l] << 8) | (lo[l] & 0xFF) for l in range(dut.P)]
    return got


def check_engine_against_golden(dut, config, *, extreme, seed, collisions, idle_before_start=0, contract=1):
    """Run ``dut`` (an Engine or SerialEngine of ``config``) against hmtx.model.fixed; assert
    every stored M/K word and exponent, every recall's probabilities, P_n and exponent, every
    attention row. ``contract`` 2 (the engine's): each write's folded key K'_i (its int8 words
    in ``dut.kf``, its exponent in ``kexp``) against ``fixed.fold_key``, each recall against
    ``fixed.recall_folded``. ``collisions`` is [(name, read port, write port)] of the memories read and
    written by the engine: a same-address read during a write gets random bits (the chip's
    no_rw_check don't-care), so a collision whose read is used fails the comparison.
    ``idle_before_start`` cycles pass between the owner's last memory write and each start.
    A write and a recall follow the attention tiles. Returns the recall cycle counts (start to done)."""
    r = rng(seed)
    c = config
    assert getattr(dut, "contract", 1) == contract, "the engine's contract is not the one checked"
    P, CB, AB = dut.P, dut.CB, dut.AB
    wq, wk = rand_weight(r, c.d, c.d_h, extreme), rand_weight(r, c.d, c.d_h, extreme)
    recall_cycles, spread = [], []

    def words(vec, n_words):
        v = list(vec) + [r.randint(-127, 127) for _ in range(n_words * P - len(vec))]  # garbage pad
        return [v[k * P:(k + 1) * P] for k in range(n_words)]

    async def run_op(ctx, **kw):
        for _ in range(idle_before_start):
            await ctx.tick()
        for k, v in kw.items():
            ctx.set(getattr(dut, k), v)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for cyc in range(200000):
            assert ctx.get(dut.busy)
            if ctx.get(dut.done):
                await ctx.tick()
                assert not ctx.get(dut.busy)
                return cyc
            await ctx.tick()
        raise TimeoutError("engine never finished")

    async def load(ctx, base, vec, exp, exp_row, n_words):
        # through the owner's write port, a word a cycle, as the top's frame parser writes: the
        # lane engine under contract 2 copies the vector into qbuf from there
        for k, w in enumerate(words(vec, n_words)):
            ctx.set(dut.wr_dat_addr, base + k)
            ctx.set(dut.wr_dat_data, w)
            ctx.set(dut.wr_dat_en, (1 << P) - 1)
            await ctx.tick()
        ctx.set(dut.wr_dat_en, 0)
        ctx.set(dut.vexp.data[exp_row], exp)

    async def tb(ctx):
        for w in range(dut.vin.depth):
            ctx.set(dut.vin.data[w], [r.randint(-128, 127) for _ in range(P)])
        for name, qw in (("wq", wq), ("wk", wk)):
            mem = getattr(dut, name)
            for j in range(c.d_h):
                for cb in range(CB):
                    ctx.set(mem.data[j * CB + cb], [int(qw.mant[cb * P + l, j]) if cb * P + l < c.d else 0
                                                    for l in range(P)])
        for name, qw in (("wq", wq), ("wk", wk)):
            ctx.set(getattr(dut, f"{name}_exp"), qw.exp)
            ctx.set(getattr(dut, f"{name}_shift"), qw.shift)
        cache_m, cache_e, cache_kf, cache_kfe = {}, {}, {}, {}

        async def write_and_recall(n):
            slot = n % c.n_slots
            m_mant, m_exp = rand_vec(r, c.d, extreme)
            await load(ctx, 0, m_mant, m_exp, 0, CB)
            await run_op(ctx, op=Op.WRITE, slot=slot)
            cache_m[slot], cache_e[slot] = m_mant, m_exp
            k_mant, k_exp = fixed.project(wk, m_mant[None], np.array([m_exp]))
            got_m = [ctx.get(dut.mem.data[slot * CB + k])[l] for k in range(CB) for l in range(P)][:c.d]
            assert got_m == list(m_mant), f"write {n}: M"
            if contract == 1:
                # key words may interleave q's halves (key_element): gather by element
                held = {dut.key_element(kb, k): ctx.get(dut.key.data[slot * dut.KB + kb])[k]
                        for kb in range(dut.KB) for k in range(dut.KP)}
                assert [held.get(e) for e in range(c.d_h)] == list(k_mant[0]), f"write {n}: K"
            assert ctx.get(dut.mexp.data[slot]) == m_exp, f"write {n}: M's exponent"
            if contract == 1:
                assert ctx.get(dut.kexp.data[slot]) == k_exp[0], f"write {n}: K's exponent"
            else:
                kf, kfe = fixed.fold_key(wq, k_mant, k_exp)
                cache_kf[slot], cache_kfe[slot] = kf[0], int(kfe[0])
                got_kf = [ctx.get(dut.kf.data[slot * CB + k])[l] for k in range(CB) for l in range(P)][:c.d]
                assert got_kf == list(kf[0]), f"write {n}: K'"
                assert ctx.get(dut.kexp.data[slot]) == kfe[0], f"write {n}: K' exponent"

            fill = min(n + 1, c.n_slots)
            s_mant, s_exp = rand_vec(r, c.d, extreme)
            await load(ctx, 0, s_mant, s_exp, 0, CB)
            recall_cycles.append(await run_op(ctx, op=Op.RECALL, n_keys=fill))
            ms, mes = np.stack([cache_m[i] for i in range(fill)]), np.array([cache_e[i] for i in range(fill)])
            if contract == 1:
                km, ke = zip(*[fixed.project(wk, cache_m[i][None], np.array([cache_e[i]])) for i in range(fill)])
                out, oe, p = fixed.recall(wq, s_mant, s_exp, np.concatenate(km), np.concatenate(ke), ms, mes)
            else:
                out, oe, p = fixed.recall_folded(s_mant, s_exp, np.stack([cache_kf[i] for i in range(fill)]),
                                                 np.array([cache_kfe[i] for i in range(fill)]), ms, mes, c.d_h)
            assert [ctx.get(dut.pm.data[i]) for i in range(fill)] == list(p), f"recall {n}: probs"
            assert result_words(ctx, dut, 0, CB)[:c.d] == list(out), \
                f"recall {n}: P_n"
            assert ctx.get(dut.oexp.data[0]) == oe, f"recall {n}: P_n's exponent"
            spread.append(int((p > 0).sum()))

        for n in range(c.n_slots + 2):
            await write_and_recall(n)

        for causal, nq, nk in ((False, c.max_queries, c.max_keys), (True, 2, 3), (True, 1, 1)):
            rows = [rand_vec(r, c.head_dim, extreme) for _ in range(nq + 2 * nk)]
            phys = list(range(nq)) + [c.max_queries + b for b in range(nk)] + \
                [c.max_queries + c.max_keys + b for b in range(nk)]
            for (mant, e), row in zip(rows, phys):
                await load(ctx, row * AB, mant, e, row, AB)
            await run_op(ctx, op=Op.ATTENTION, n_keys=nk, n_q=nq, causal=causal)
            mant = np.stack([x[0] for x in rows])
            ex = np.array([x[1] for x in rows])
            q, k, v = slice(0, nq), slice(nq, nq + nk), slice(nq + nk, nq + 2 * nk)
            out, oe, _ = fixed.attend(mant[q], ex[q], mant[k], ex[k], mant[v], ex[v],
                                      fixed.causal_mask(nq, nk) if causal else None)
            for a in range(nq):
                got = result_words(ctx, dut, a * AB, AB)[:c.head_dim]
                assert got == list(out[a]), f"attention causal={causal} row {a}"
                assert ctx.get(dut.oexp.data[a]) == oe[a], f"attention causal={causal} row {a}: exponent"
        # and back to the cache: a write and a recall after the attention tiles
        await write_and_recall(c.n_slots + 2)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    watched = [sig for _, rp, wp in collisions for sig in (wp.en, wp.addr, rp.addr)]
    seen = collections.Counter()
    chaos = rng(seed + 1)

    async def collide(ctx):
        async for _, _, *vals in ctx.tick().sample(*watched):
            for k, (name, rp, _) in enumerate(collisions):
                en, wa, ra = vals[3 * k:3 * k + 3]
                if en and wa == ra:
                    seen[name] += 1
                    data = Value.cast(rp.data)
                    ctx.set(data, chaos.getrandbits(len(data)))
    sim.add_testbench(collide, background=True)
    sim.run()
    print("read/write collisions (answered with random bits):", dict(seen))
    print("recall cycles", recall_cycles, "nonzero probabilities", spread)
    if not extreme:
        assert max(spread) >= 2, "every softmax was one-hot: the test data does not exercise it"
    return recall_cycles
