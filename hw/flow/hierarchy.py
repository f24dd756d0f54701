"""What each module of a design costs: Yosys's cell statistics per module of the hierarchy.

A build that does not fit says by how much (nextpnr's utilisation); this says where. The same
synthesis as the build runs again with ``-noflatten`` (Amaranth names each module after its
path, ``top.bridge.core.engine.mac``), and ``stat`` counts the primitives of each module on its
own. Sums over a module and everything below it come from those paths.
"""

import re
import subprocess

from .yosys_script import yosys_synth_commands

__all__ = ["CATEGORIES", "parse_hierarchy_stat", "module_costs", "costs_table", "run_hierarchy"]

# primitive cell types per resource, by family (a cell type not listed counts under "other")
CATEGORIES = {
    "ice40": {"lut": ("SB_LUT4",), "ff": ("SB_DFF",), "carry": ("SB_CARRY",),
              "dsp": ("SB_MAC16",), "bram": ("SB_RAM40_4K",), "spram": ("SB_SPRAM256KA",)},
    "ecp5": {"lut": ("LUT4",), "ff": ("TRELLIS_FF",), "carry": ("CCU2C",),
             "dsp": ("MULT18X18D", "ALU54B"), "bram": ("DP16KD",), "lutram": ("TRELLIS_DPR16X4",),
             # the slice multiplexers that join LUT4s into wider functions
             "mux": ("PFUMX", "L6MUX21")},
}

_MODULE = re.compile(r"^=== (\S+) ===\s*$")
_CELL = re.compile(r"^\s+(\d+)\s+([A-Z][A-Z0-9_]*)\s*$")


def parse_hierarchy_stat(text):
    """``{module path: {cell type: count}}`` from the last ``stat`` of a ``-noflatten`` Yosys
    run: each module's own primitives, without its submodules'."""
    start = text.rfind("Printing statistics.")
    if start >= 0:
        text = text[start:]
    end = text.find("=== design hierarchy ===")
    if end >= 0:
        text = text[:end]
    modules, current = {}, None
    for line in text.splitlines():
        match = _MODULE.match(line)
        if match:
            current = modules.setdefault(match.group(1), {})
            continue
        match = _CELL.match(line)
        if match and current is not None:
            # submodule instances are listed by their (lower-case) path, so only primitives match
            current[match.group(2)] = current.get(match.group(2), 0) + int(match.group(1))
    if not modules:
        raise ValueError("no '=== module ===' sections in the Yosys statistics")
    return modules


def _categorise(cells, family):
    cats = CATEGORIES[family]
    out = {k: 0 for k in cats}
    out["other"] = 0
    for cell, n in cells.items():
        for k, prefixes in cats.items():
            if cell.startswith(prefixes):
                out[k] += n
                break
        else:
            out["other"] += n
    return out


def module_costs(modules, family):
    """Per module, its own and its subtree's resources: ``{path: {"own": {...}, "total":
    {...}}}`` with counts per resource (``CATEGORIES[family]`` plus ``other``)."""
    if family not in CATEGORIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(CATEGORIES)}")
    own = {path: _categorise(cells, family) for path, cells in modules.items()}
    costs = {}
    for path in modules:
        total = {k: 0 for k in own[path]}
        for other, counts in own.items():
            if other == path or other.startswith(path + "."):
                for k, n in counts.items():
                    total[k] += n
        costs[path] = {"own": own[path], "total": total}
    return costs


def costs_table(costs, *, depth=6, min_share=0.01, key="lut", markdown=False):
    """The modules down to ``depth`` levels whose subtree holds at least ``min_share`` of the
    design's ``key`` resource, in hierarchy order, each with its subtree's counts: aligned
    text, or a markdown table."""
    roots = [p for p in costs if "." not in p]
    if not roots:
        raise ValueError("no top module among the module paths")
    whole = sum(costs[r]["total"][key] for r in roots) or 1
    kinds = [k for k in next(iter(costs.values()))["total"] if any(c["total"][k] for c in costs.values())]
    header = ["module", *kinds, f"% of {key}"]
    rows = []
    for path in sorted(costs):
        level = path.count(".")
        total = costs[path]["total"]
        if level >= depth or total[key] < min_share * whole:
            continue
        name = path.rsplit(".", 1)[-1]
        rows.append([("&nbsp;" * 2 if markdown else "  ") * level + name,
                     *(str(total[k]) for k in kinds), f"{100 * total[key] / whole:.1f}"])
    if markdown:
        return "\n".join(["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
                         + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [header, *rows])


def run_hierarchy(build_dir, family, synth_opts, *, name="top", yosys="yosys", env=None):
    """Synthesize ``NAME.il`` in ``build_dir`` again without flattening (the build's synthesis
    options; the same ``opt_clean -purge`` split as the ECP5 build, which also keeps Yosys
    0.70's abc9 from asserting on the unflattened design) and return
    :func:`parse_hierarchy_stat` of it. Writes ``hierarchy.ys`` and ``hierarchy.log`` there.
    ``env``: the environment Yosys runs in (None: this process's)."""
    if family not in CATEGORIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(CATEGORIES)}")
    script = "\n".join([f"read_rtlil {name}.il",
                        *yosys_synth_commands(family, [*synth_opts, "-noflatten"], name, purge=True),
                        "tee -q -o hierarchy_stat.txt stat", ""])
    with open(f"{build_dir}/hierarchy.ys", "w") as f:
        f.write(script)
    subprocess.run([yosys, "-q", "-l", "hierarchy.log", "hierarchy.ys"], cwd=build_dir, check=True,
                   stdout=subprocess.DEVNULL, env=env)
    with open(f"{build_dir}/hierarchy_stat.txt") as f:
        return parse_hierarchy_stat(f.read())
