"""The Yosys commands of a synthesis, shared by ``hmtx synth`` (:mod:`hmtx.hw.flow.synth`), its
per-module cost report (:mod:`hmtx.hw.flow.hierarchy`) and the gate-level simulation
(:mod:`hmtx.sim.gatelevel`), so that the netlist simulated and costed is the netlist built.

Yosys 0.70's abc9 step (synth_lattice always runs it) was seen to abort with "Assert
`GetSize(conn.first) == GetSize(conn.second)' failed" on HmtxTop builds for ECP5 — with LUT RAM
(hence ``-nolutram``, :data:`hmtx.hw.flow.synth.DEFAULT_SYNTH_OPTS`) and also without it, depending
on the netlist (seen on the tiny config; the debug log ends while abc9 maps outputs onto the
`$connect` cells that keep aliased public wire names). Purging those names right before the LUT
mapping avoids it: on ECP5 synth_ecp5 runs in two halves with `opt_clean -purge` between them
(names of internal wires are lost, cells keep their `src`).
"""

__all__ = ["yosys_synth_commands"]


def yosys_synth_commands(family, synth_opts, top, *, purge=None):
    """The Yosys commands that synthesize the design read before them: what ``hmtx synth`` runs,
    and what the gate-level flow (hmtx.sim.gatelevel) runs on the same RTLIL, so that the
    netlist simulated is the netlist built. ``purge`` (default: on ECP5) synthesizes in two
    halves with the purge between them (module docstring)."""
    if family not in ("ecp5", "ice40"):
        raise ValueError(f"unknown FPGA family {family!r}; expected 'ecp5' or 'ice40'")

    def synth(*extra):
        return " ".join([f"synth_{family}", *synth_opts, *extra, "-top", top])

    if family == "ecp5" if purge is None else purge:
        return [synth("-run", "begin:map_luts"), "opt_clean -purge", synth("-run", "map_luts:")]
    return [synth()]
