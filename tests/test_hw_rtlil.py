"""hmtx.hw.flow.rtlil: read/write collisions become don't-care on the memories marked no_rw_check,
and Yosys then maps them to ECP5 block RAMs without its collision-emulation logic."""

import os
import subprocess

from amaranth.back import rtlil
from amaranth.hdl import Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from hmtx.hw.flow.rtlil import collisions_dont_care
from hmtx.hw.flow.synth import tool_env
from hmtx.model.paths import REPO

BUILD = os.path.join(REPO, "build", "test_rtlil")


class TwoMemories(wiring.Component):
    """A 512 x 36 memory with no_rw_check and one without, each with a sync read and a write."""
    waddr: In(9)
    raddr: In(9)
    wdata: In(36)
    we: In(1)
    marked: Out(36)
    plain: Out(36)

    def elaborate(self, platform):
        m = Module()
        for name, attrs in (("marked", {"no_rw_check": 1}), ("plain", None)):
            mem = m.submodules[f"{name}_mem"] = memory.Memory(shape=36, depth=512, init=[], attrs=attrs)
            w, r = mem.write_port(), mem.read_port()
            m.d.comb += [w.addr.eq(self.waddr), w.data.eq(self.wdata), w.en.eq(self.we),
                         r.addr.eq(self.raddr), getattr(self, name).eq(r.data)]
        return m


def _il():
    return rtlil.convert(TwoMemories(), name="top")


def test_only_the_marked_memorys_read_port_is_changed():
    text = _il()
    out, n = collisions_dont_care(text)
    assert n == 1
    assert out.count("parameter \\COLLISION_X_MASK 1'1") == 1
    assert out.count("parameter \\COLLISION_X_MASK 1'0") == text.count("parameter \\COLLISION_X_MASK 1'0") - 1
    # the changed port is the marked memory's read port
    cells = out.split("  cell ")
    changed = [c for c in cells if "COLLISION_X_MASK 1'1" in c]
    assert len(changed) == 1 and changed[0].startswith("$memrd_v2") and '"\\\\marked_mem"' in changed[0]
    assert collisions_dont_care(out) == (out, 1)      # idempotent
    assert collisions_dont_care("module \\x\nend\n") == ("module \\x\nend\n", 0)


def _synth_cells(tag, text):
    """Cell counts of ``text`` synthesized for ECP5 (Yosys ``stat``), and its log."""
    os.makedirs(BUILD, exist_ok=True)
    il, log = os.path.join(BUILD, f"{tag}.il"), os.path.join(BUILD, f"{tag}.log")
    with open(il, "w") as f:
        f.write(text)
    subprocess.run([tool_env()["YOSYS"], "-q", "-l", log, "-p", f"read_rtlil {il}; synth_ecp5 -top top; stat"],
                   check=True, capture_output=True)
    with open(log) as f:
        text = f.read()
    from hmtx.hw.flow.synth import parse_yosys_stat
    return parse_yosys_stat(text), text


def test_yosys_drops_the_collision_logic_of_the_marked_memory_only():
    plain_text = _il()
    before, _ = _synth_cells("before", plain_text)
    after, _ = _synth_cells("after", collisions_dont_care(plain_text)[0])
    # both memories are block RAMs either way
    assert before.get("DP16KD") == after.get("DP16KD") == 2
    # the marked memory's emulation -- an address comparison and a multiplexer on each of its
    # 36 output bits -- is gone (here 96 -> 53 LUT4); the unmarked memory keeps its own
    assert before["LUT4"] - after["LUT4"] >= 36, (before, after)
    assert after["LUT4"] >= 36, "the unmarked memory lost its emulation too"
    assert after.get("TRELLIS_FF", 0) <= before.get("TRELLIS_FF", 0)


def test_gate_level_rtlil_is_the_patched_one():
    """The gate-level flow synthesizes hmtx.sim.targets.engine_rtlil: HmtxTop with its block RAMs'
    collisions already don't-care, as `hmtx synth` builds it."""
    from hmtx.hw.top import HmtxTop
    from hmtx.model.configs import get_config
    from hmtx.sim.targets import ENGINE_TOPLEVEL, engine_rtlil

    text = engine_rtlil("tiny").read_text()
    assert collisions_dont_care(text)[0] == text       # nothing left to patch
    original = rtlil.convert(HmtxTop(get_config("tiny")), name=ENGINE_TOPLEVEL, emit_src=False)
    patched, n = collisions_dont_care(original)
    assert n > 0 and patched == text and original != text
