"""SerialEngine (hw/serial_engine.py and its units, hw/serial_*.py) vs hmtx.model.fixed: writes that
wrap the ring, recalls and attention tiles, every block-RAM read/write collision answered with
random bits; and the OR-merge that lets its units share a port."""

import collections

import numpy as np
import pytest
from amaranth.hdl import Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hmtx.hw.engine import Op
from hmtx.hw.serial_signatures import merge
from hmtx.hw.serial_engine import SerialEngine
from hmtx.model import fixed
from hmtx.model.configs import CONFIGS, EngineConfig
from hwsim import rng

# d, d_h and head_dim not multiples of P: every loop has a partial last block
ODD = EngineConfig("odd20", d=20, d_h=12, n_slots=3, lanes=8, head_dim=12, max_queries=3, max_keys=5)
# P = 3: odd, not a power of 2 (key words are not halved; element = word * P + lane multiplies)
P3 = EngineConfig("p3", d=13, d_h=7, n_slots=3, lanes=3, head_dim=5, max_queries=2, max_keys=4)


def rand_weight(r, d, d_h, extreme):
    if extreme:     # full-range mantissas and exponents: saturating scores, one-hot softmax
        mant = np.array([[r.choice([-127, 127, r.randint(-127, 127)]) for _ in range(d_h)] for _ in range(d)])
        return fixed.QuantWeight(mant=mant, exp=r.randint(fixed.EXP_MIN, fixed.EXP_MAX),
                                 shift=fixed.projection_shift(mant))
    g = np.random.default_rng(r.randrange(1 << 30))
    return fixed.quantize_weight(g.normal(0, 1.5 / np.sqrt(d), (d, d_h)))


def rand_vec(r, n, extreme):
    if extreme:
        return (np.array([r.choice([-127, 127, r.randint(-127, 127)]) for _ in range(n)]),
                r.choice([fixed.EXP_MIN, fixed.EXP_MAX, r.randint(fixed.EXP_MIN, fixed.EXP_MAX)]))
    g = np.random.default_rng(r.randrange(1 << 30))
    mant, exp = fixed.quantize_bfp(g.normal(0, 1, n) * 2.0 ** g.integers(-2, 3))
    return mant.astype(np.int64), int(exp)


@pytest.mark.parametrize("config,extreme", [(CONFIGS["tiny"], False), (ODD, False), (ODD, True), (P3, False)],
                         ids=["tiny", "odd20", "odd20-extreme", "p3"])
def test_serial_engine_matches_golden(config, extreme):
    r = rng(40)
    c = config
    dut = SerialEngine(c)
    P, CB, AB = dut.P, dut.CB, dut.AB
    wq, wk = rand_weight(r, c.d, c.d_h, extreme), rand_weight(r, c.d, c.d_h, extreme)
    spread = []

    def words(vec, n_words):
        v = list(vec) + [r.randint(-127, 127) for _ in range(n_words * P - len(vec))]  # garbage pad
        return [v[k * P:(k + 1) * P] for k in range(n_words)]

    async def run_op(ctx, **kw):
        # (the owner's last write lands >= 4 cycles before a start: the engine latches vexp[0] while idle)
        for _ in range(4):
            await ctx.tick()
        for k, v in kw.items():
            ctx.set(getattr(dut, k), v)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for _ in range(200000):
            assert ctx.get(dut.busy)
            if ctx.get(dut.done):
                await ctx.tick()
                assert not ctx.get(dut.busy)
                return
            await ctx.tick()
        raise TimeoutError("engine never finished")

    def out_lane(ctx, w, lane):
        # result word w: its low bytes at out_base + 2w, its high bytes at + 1
        lo = ctx.get(dut.dat.data[dut.out_base + 2 * w])[lane]
        hi = ctx.get(dut.dat.data[dut.out_base + 2 * w + 1])[lane]
        return (hi << 8) | (lo & 0xFF)

    async def tb(ctx):
        for w in range(dut.vin.depth):
            ctx.set(dut.vin.data[w], [r.randint(-128, 127) for _ in range(P)])
        for name, qw in (("wq", wq), ("wk", wk)):
            mem = getattr(dut, name)
            for j in range(c.d_h):
                for cb in range(CB):
                    ctx.set(mem.data[j * CB + cb], [int(qw.mant[cb * P + l, j]) if cb * P + l < c.d else 0
                                                    for l in range(P)])
        ctx.set(dut.wq_exp, wq.exp)
        ctx.set(dut.wq_shift, wq.shift)
        ctx.set(dut.wk_exp, wk.exp)
        ctx.set(dut.wk_shift, wk.shift)
        cache_m, cache_e = {}, {}
        for n in range(c.n_slots + 2):
            slot = n % c.n_slots
            m_mant, m_exp = rand_vec(r, c.d, extreme)
            for k, w in enumerate(words(m_mant, CB)):
                ctx.set(dut.vin.data[k], w)
            ctx.set(dut.vexp.data[0], m_exp)
            await run_op(ctx, op=Op.WRITE, slot=slot)
            cache_m[slot], cache_e[slot] = m_mant, m_exp
            k_mant, k_exp = fixed.project(wk, m_mant[None], np.array([m_exp]))
            got_m = [ctx.get(dut.mem.data[slot * CB + k])[l] for k in range(CB) for l in range(P)][:c.d]
            held = {dut.key_element(kb, k): ctx.get(dut.key.data[slot * dut.KB + kb])[k]
                    for kb in range(dut.KB) for k in range(dut.KP)}
            assert got_m == list(m_mant), f"write {n}: M"
            assert [held.get(e) for e in range(c.d_h)] == list(k_mant[0]), f"write {n}: K"
            assert ctx.get(dut.kexp.data[slot]) == k_exp[0] and ctx.get(dut.mexp.data[slot]) == m_exp

            fill = min(n + 1, c.n_slots)
            s_mant, s_exp = rand_vec(r, c.d, extreme)
            for k, w in enumerate(words(s_mant, CB)):
                ctx.set(dut.vin.data[k], w)
            ctx.set(dut.vexp.data[0], s_exp)
            await run_op(ctx, op=Op.RECALL, n_keys=fill)
            km, ke = zip(*[fixed.project(wk, cache_m[i][None], np.array([cache_e[i]])) for i in range(fill)])
            out, oe, p = fixed.recall(wq, s_mant, s_exp, np.concatenate(km), np.concatenate(ke),
                                      np.stack([cache_m[i] for i in range(fill)]),
                                      np.array([cache_e[i] for i in range(fill)]))
            assert [ctx.get(dut.pm.data[i]) for i in range(fill)] == list(p), f"recall {n}: probs"
            assert [out_lane(ctx, k, l) for k in range(CB) for l in range(P)][:c.d] == list(out), f"recall {n}"
            assert ctx.get(dut.oexp.data[0]) == oe
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
    # Every memory the units both read and write is synthesized with Yosys's no_rw_check: a read
    # of the address being written in the same cycle returns don't-care data on the chip. Here
    # every such collision returns random bits, so one whose read is used shows up as a mismatch.
    pairs = [("dat", dut._dat_r, dut._dat_w), ("key", dut._key_r, dut._key_w),
             ("mexp", dut._mexp_r, dut._mexp_w), ("kexp", dut._kexp_r, dut._kexp_w),
             ("qbuf", dut.mac._qbuf_r, dut.mac._qbuf_w), ("wm", dut.mac._wm_r, dut.mac._wm_w),
             ("sc", dut.softmax._sc_r, dut.softmax._sc_w)]
    watched = [sig for _, rp, wp in pairs for sig in (wp.en, wp.addr, rp.addr)]
    collisions = collections.Counter()
    chaos = rng(41)

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
    if not extreme:
        assert max(spread) >= 2, "every softmax was one-hot: the test data does not exercise it"


def test_merge_ors_the_sources_and_fans_out_the_rest():
    sig = wiring.Signature({"a": Out(4), "b": In(4)})
    sink = sig.flip().create()
    x, y = sig.create(path=("x",)), sig.create(path=("y",))
    m = Module()
    merge(m, sink, x, y)
    sel = Signal()
    # the sources take turns: the one not driving holds 0
    m.d.comb += [x.a.eq(Mux(sel, 5, 0)), y.a.eq(Mux(sel, 0, 9)), sink.b.eq(3)]

    async def tb(ctx):
        for s, want in ((1, 5), (0, 9)):
            ctx.set(sel, s)
            assert ctx.get(sink.a) == want
            assert ctx.get(x.b) == 3 and ctx.get(y.b) == 3

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    with pytest.raises(TypeError, match="does not have the members"):
        merge(m, sink, wiring.Signature({"a": Out(4)}).create())


def test_verilog_has_no_constant_only_processes():
    """A unit output some of whose bits no statement drives becomes ``always @* x[..] = const;``
    in the Verilog: a process that never runs (Verilator's ALWNEVER, an error for sim/runner.py).
    Every beat and request assigns all its fields (hw/serial_signatures.py) to avoid them."""
    from amaranth.back import verilog

    lines = verilog.convert(SerialEngine(P3), name="top").splitlines()
    never = [lines[k + 1].strip() for k, line in enumerate(lines) if line.strip() == "always @*"]
    assert not never, never
