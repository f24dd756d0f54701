"""`hmtx gen`: write the Verilog and RTLIL of the engine's top level and check its ports.

The emitted Verilog is parsed back with pyverilog (after stripping the Yosys ``(* ... *)``
attributes it cannot read); the top-level ports found there must match, name for name and
width for width, both the Amaranth component's signature and the port names docs/protocol.md
promises (``cmd__payload``/``cmd__valid``/``cmd__ready``, ``rsp__...``). The port table is written
next to the Verilog; any drift is an error (exit status 1), never a warning.
"""

import re
import sys
import time
from pathlib import Path

from hmtx.model.paths import REPO

TOPLEVEL = "hmtx_top"
PROTOCOL_DOC = REPO / "docs" / "protocol.md"


def register(sub):
    p = sub.add_parser("gen", help="write Verilog + RTLIL of HmtxTop for a config and check its ports",
                       description=__doc__)
    p.add_argument("--config", default="tiny", help="named engine configuration (default tiny)")
    p.add_argument("--out", default="build/gen", help="output folder (default build/gen)")
    from hmtx.hw import ENGINES
    p.add_argument("--engine", choices=ENGINES, default="lanes",
                   help="HmtxTop's datapath: lanes (P MAC lanes, hw/engine.py; default) or serial "
                        "(one time-shared multiplier, hw/serial_engine.py); serial writes to "
                        "OUT/CONFIG-serial")
    p.add_argument("--contract", type=int, choices=(1, 2), default=1,
                   help="arithmetic contract (docs/arithmetic.md section 10): 1 (default) or 2, the "
                        "folded keys (protocol 2.x); 2 writes to OUT/CONFIG[-ENGINE]-c2")
    p.set_defaults(func=run)


def strip_attributes(text: str) -> str:
    """Remove Yosys ``(* ... *)`` attributes (pyverilog's parser does not know them)."""
    return re.sub(r"\(\*.*?\*\)", "", text, flags=re.S)


def signature_ports(component) -> dict:
    """{verilog name: (direction, width)} from the component's signature, plus clk and rst."""
    from amaranth.hdl import Shape
    from amaranth.lib.wiring import Flow
    ports = {"clk": ("input", 1), "rst": ("input", 1)}
    for path, member in component.signature.members.flatten():
        if not member.is_port:
            continue
        direction = "input" if member.flow == Flow.In else "output"
        ports["__".join(str(p) for p in path)] = (direction, Shape.cast(member.shape).width)
    return ports


def verilog_ports(path: Path, module: str) -> dict:
    """{name: (direction, width)} of ``module``'s ports as pyverilog parses the file."""
    from pyverilog.vparser import ast as vast
    from pyverilog.vparser.parser import parse
    # PLY writes its parser table (parsetab.py) into outputdir: a temporary folder, so that
    # nothing but the outputs lands in the user's folder
    import shutil
    import tempfile
    tmp = tempfile.mkdtemp(prefix="hmtx-pyverilog-")
    try:
        tree, _ = parse([str(path)], outputdir=tmp, debug=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mods = [d for d in tree.description.definitions if isinstance(d, vast.ModuleDef) and d.name == module]
    if len(mods) != 1:
        raise ValueError(f"{path}: expected one module {module!r}, found {len(mods)}")
    ports = {}

    def width(node):
        if node.width is None:
            return 1
        return abs(int(node.width.msb.value) - int(node.width.lsb.value)) + 1

    def walk(node):
        if isinstance(node, (vast.Input, vast.Output, vast.Inout)):
            kind = {vast.Input: "input", vast.Output: "output", vast.Inout: "inout"}[type(node)]
            ports[node.name] = (kind, width(node))
            return
        for child in node.children():
            if not isinstance(child, vast.ModuleDef):
                walk(child)

    for item in mods[0].items:
        walk(item)
    for port in mods[0].portlist.ports:
        walk(port)
    return ports


def protocol_ports(doc: Path) -> dict:
    """Port names and payload width the protocol document names: {name: width or None}."""
    text = doc.read_text()
    names = set(re.findall(r"`((?:cmd|rsp)__(?:payload|valid|ready))`", text))
    m = re.search(r"stream\.Signature\((\d+)\)", text)
    if not names or not m:
        raise ValueError(f"{doc}: cannot find the cmd/rsp port names and stream.Signature(width)")
    width = int(m.group(1))
    return {n: (width if n.endswith("payload") else 1) for n in names}


def check_ports(expected: dict, found: dict, documented: dict) -> list[str]:
    problems = []
    for name, (d, w) in expected.items():
        if name not in found:
            problems.append(f"port {name} ({d} [{w}]) of the signature is missing from the Verilog")
        elif found[name] != (d, w):
            problems.append(f"port {name}: signature says {d} [{w}], Verilog has {found[name][0]} [{found[name][1]}]")
    for name in found.keys() - expected.keys():
        problems.append(f"port {name} in the Verilog is not in the signature")
    stream_ports = {n for n in expected if n not in ("clk", "rst")}
    for name in documented.keys() ^ stream_ports:
        problems.append(f"port {name}: docs/protocol.md and the signature disagree on its existence")
    for name in documented.keys() & stream_ports:
        if documented[name] != expected[name][1]:
            problems.append(f"port {name}: docs/protocol.md says width {documented[name]}, "
                            f"signature {expected[name][1]}")
    return problems


def generate(config_name: str, out: Path, engine: str = "lanes", contract: int = 1) -> tuple[Path, list[str]]:
    """Write <out>/<config>/hmtx_top.{v,il,ports.md} (<out>/<config>-<engine>/ for an engine
    other than lanes, ``-c2`` appended for contract 2); return (verilog path, port problems)."""
    from amaranth.back import rtlil, verilog

    from hmtx.hw.top import HmtxTop
    from hmtx.model.configs import get_config

    cfg = get_config(config_name)
    folder = Path(out) / (cfg.name + ("" if engine == "lanes" else f"-{engine}")
                          + ("" if contract == 1 else f"-c{contract}"))
    folder.mkdir(parents=True, exist_ok=True)
    vpath, ilpath = folder / f"{TOPLEVEL}.v", folder / f"{TOPLEVEL}.il"
    # separate instances: an elaborated design is not converted twice
    top = HmtxTop(cfg, engine, contract)
    vpath.write_text(verilog.convert(top, name=TOPLEVEL, emit_src=False))
    ilpath.write_text(rtlil.convert(HmtxTop(cfg, engine, contract), name=TOPLEVEL, emit_src=False))
    stripped = folder / f"{TOPLEVEL}.noattr.v"
    stripped.write_text(strip_attributes(vpath.read_text()))
    expected = signature_ports(top)
    found = verilog_ports(stripped, TOPLEVEL)
    documented = protocol_ports(PROTOCOL_DOC)
    problems = check_ports(expected, found, documented)
    lines = [f"# Ports of `{TOPLEVEL}` (config {cfg.name}, engine {engine}, contract {contract})", "",
             f"Checked: pyverilog parse of `{vpath.name}` == HmtxTop signature == docs/protocol.md.", "",
             "| port | direction | width | in protocol.md |", "|---|---|---|---|"]
    for name, (d, w) in sorted(found.items()):
        lines.append(f"| `{name}` | {d} | {w} | {'yes' if name in documented else '-'} |")
    (folder / f"{TOPLEVEL}.ports.md").write_text("\n".join(lines) + "\n")
    return vpath, problems


def run(args) -> int:
    from .cli_options import check_output_path

    t0 = time.perf_counter()
    try:
        check_output_path(args.out, "--out", folder=True)
        vpath, problems = generate(args.config, Path(args.out), args.engine, args.contract)
    except ValueError as e:                   # bad input: exit 2, as every hmtx command
        print(f"hmtx gen: error: {e}", file=sys.stderr)
        return 2
    if problems:
        print(f"hmtx gen: PORT DRIFT in {vpath}:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"wrote {vpath} (+ .il, .ports.md) in {time.perf_counter() - t0:.1f} s; ports match "
          f"the signature and docs/protocol.md")
    return 0
