"""The designs the cocotb suites run on: the stand-in and the engine in a named configuration.

Elaborating the engine takes from seconds (tiny) to about a minute (smollm), so its Verilog is
cached under build/sim/<config>/rtl/ keyed by the hash of every Python source that can change it
(hw/ and model/, the wire protocol included), the configuration, the engine kind and the arithmetic
contract (``HmtxTop(config, engine, contract)``). The "serial" engine's files and models live under
build/sim/<config>-serial/, contract 2's under build/sim/<config>[-serial]-c2/.
"""

import hashlib
import json
from pathlib import Path

from hmtx.model.paths import REPO

from .runner import BUILD, SimTarget, component_target, write_verilog

__all__ = ["standin_target", "engine_target", "engine_rtlil", "ENGINE_TOPLEVEL"]

ENGINE_TOPLEVEL = "hmtx_top"     # the module name `hmtx gen` writes


def standin_target() -> SimTarget:
    from .standin import StandIn
    return component_target("standin", StandIn(), "standin")


def _engine_name(config, engine, contract=1) -> str:
    # the target's folder and name (the runner keys its models on the name and drops a name's
    # older models): "lanes" and contract 1 keep the plain config name, and with it the existing caches
    return config.name + ("" if engine == "lanes" else f"-{engine}") + ("" if contract == 1 else f"-c{contract}")


def rtl_model_files() -> list[Path]:
    """The model/ modules the gateware imports, directly or through each other: only they can
    change the generated RTL (training or evaluation code in model/ must not force a rebuild)."""
    import ast
    seen, todo = set(), []

    def imports_of(path: Path):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1 and path.parent.name == "model":
                    base = f"hmtx.model.{base}" if base else "hmtx.model"
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[:2] == ["hmtx", "model"] and len(parts) > 2:
                    f = REPO / "model" / f"{parts[2]}.py"
                    if f.is_file() and f not in seen:
                        seen.add(f)
                        todo.append(f)

    for f in sorted((REPO / "hw").glob("*.py")):
        imports_of(f)
    while todo:
        imports_of(todo.pop())
    return sorted(seen)


def _engine_sources_digest(config, engine="lanes", contract=1) -> str:
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    if engine != "lanes":
        h.update(f"engine={engine}".encode())   # (a lanes digest stays what it was)
    if contract != 1:
        h.update(f"contract={contract}".encode())
    files = sorted((REPO / "hw").glob("*.py")) + rtl_model_files()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _engine_file(config, engine, suffix, write, generate=True, contract=1) -> Path | None:
    """``build/sim/<name>/rtl/hmtx_top<suffix>`` (name: :func:`_engine_name`), made by
    ``write(HmtxTop(config, engine, contract), path)`` unless its stamp says it was made from the
    current sources (None when it is stale and ``generate`` is false)."""
    from hmtx.hw import ENGINES
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    path = BUILD / _engine_name(config, engine, contract) / "rtl" / f"{ENGINE_TOPLEVEL}{suffix}"
    stamp = path.with_name(path.name + ".sha256")
    key = _engine_sources_digest(config, engine, contract)
    if not (path.exists() and stamp.exists() and stamp.read_text().strip() == key):
        if not generate:
            return None
        from hmtx.hw.top import HmtxTop
        path.parent.mkdir(parents=True, exist_ok=True)
        write(HmtxTop(config, engine, contract), path)
        stamp.write_text(key + "\n")
    return path


def engine_target(config_name: str, *, engine: str = "lanes", contract: int = 1,
                  generate: bool = True) -> SimTarget | None:
    """``hmtx.hw.top.HmtxTop(get_config(config_name), engine, contract)`` as a simulation target,
    named ``<config>`` for the "lanes" engine and contract 1, ``-<engine>`` and ``-c<contract>``
    appended otherwise (None when its cached Verilog is stale and ``generate`` is false)."""
    from hmtx.model.configs import get_config
    config = get_config(config_name)
    path = _engine_file(config, engine, ".v", lambda top, path: write_verilog(top, ENGINE_TOPLEVEL, path), generate,
                        contract)
    if path is None:
        return None
    return SimTarget(name=_engine_name(config, engine, contract), sources=(path,), toplevel=ENGINE_TOPLEVEL)


def engine_rtlil(config_name: str, engine: str = "lanes", contract: int = 1) -> Path:
    """RTLIL of the same ``HmtxTop`` as :func:`engine_target`, as ``hmtx synth`` hands it to
    Yosys (block-RAM collisions made don't-care, hw/flow/rtlil.py), for the gate-level flow: the
    netlist simulated is then the netlist built. Cached like the Verilog."""
    from amaranth.back import rtlil

    from hmtx.hw.flow.rtlil import collisions_dont_care
    from hmtx.model.configs import get_config

    def write(top, path):
        path.write_text(collisions_dont_care(rtlil.convert(top, name=ENGINE_TOPLEVEL, emit_src=False))[0])

    return _engine_file(get_config(config_name), engine, ".il", write, contract=contract)
