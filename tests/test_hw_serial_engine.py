"""SerialEngine (hw/serial_engine.py and its units, hw/serial_*.py) vs hmtx.model.fixed (the
testbench both engines share, tests/engine_testlib.py), built for contract 1 and for contract 2
(the folded keys), including an odd lane count; and the OR-merge that lets its units share a
port."""

import pytest
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hmtx.hw.serial_signatures import merge
from hmtx.hw.serial_engine import SerialEngine
from hmtx.model.configs import CONFIGS, EngineConfig
from engine_testlib import check_engine_against_golden

# d, d_h and head_dim not multiples of P: every loop has a partial last block
ODD = EngineConfig("odd20", d=20, d_h=12, n_slots=3, lanes=8, head_dim=12, max_queries=3, max_keys=5)
# P = 3: odd, not a power of 2 (key words are not halved; element = word * P + lane multiplies)
P3 = EngineConfig("p3", d=13, d_h=7, n_slots=3, lanes=3, head_dim=5, max_queries=2, max_keys=4)


@pytest.mark.parametrize("config,extreme", [(CONFIGS["tiny"], False), (ODD, False), (ODD, True), (P3, False)],
                         ids=["tiny", "odd20", "odd20-extreme", "p3"])
@pytest.mark.parametrize("contract", [1, 2])
def test_serial_engine_matches_golden(config, extreme, contract):
    dut = SerialEngine(config, contract=contract)
    # (contract 2 has no key ring)
    collisions = [("dat", dut._dat_r, dut._dat_w),
                  *([("key", dut._key_r, dut._key_w)] if contract == 1 else []),
                  ("mexp", dut._mexp_r, dut._mexp_w), ("kexp", dut._kexp_r, dut._kexp_w),
                  ("qbuf", dut.mac._qbuf_r, dut.mac._qbuf_w), ("wm", dut.mac._wm_r, dut.mac._wm_w),
                  ("sc", dut.softmax._sc_r, dut.softmax._sc_w)]
    # (the owner's last write lands >= 4 cycles before a start: the engine latches vexp[0] while idle)
    check_engine_against_golden(dut, config, extreme=extreme, seed=40, collisions=collisions,
                                idle_before_start=4, contract=contract)


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


@pytest.mark.parametrize("contract", [1, 2])
def test_verilog_has_no_constant_only_processes(contract):
    """A unit output some of whose bits no statement drives becomes ``always @* x[..] = const;``
    in the Verilog: a process that never runs (Verilator's ALWNEVER, an error for sim/runner.py).
    Every beat and request assigns all its fields (hw/serial_signatures.py) to avoid them."""
    from amaranth.back import verilog

    lines = verilog.convert(SerialEngine(P3, contract=contract), name="top").splitlines()
    never = [lines[k + 1].strip() for k, line in enumerate(lines) if line.strip() == "always @*"]
    assert not never, never
