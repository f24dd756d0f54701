"""The saved `hmtx synth` reports of the engine, one lookup for every reader (`hmtx run`'s
device-time estimate, `hmtx bench`'s µs per recall).

Reports are searched where `hmtx synth` writes them (``build/synth/*/``) and under ``docs/``
(reports committed with the synthesis results, so a fresh clone has them). Only builds of the
engine itself count: the EchoCore stand-in's reports measure the UART bridge, not the datapath.
The newest matching report wins; nothing is estimated. Reports name their engine (``"engine"``:
``lanes`` or ``serial``, hw/top.py); a report from before that field is a lanes build. Cycle
counts and Fmax must come from the same engine, so every lookup names one.
"""

import glob
import json
import os
from pathlib import Path

from hmtx.model.paths import REPO

__all__ = ["ENGINE_CORES", "find_engine_reports", "engine_report"]
ENGINE_CORES = ("HmtxTop", "hmtx")


def find_engine_reports(repo: Path = REPO) -> list[dict]:
    """Every readable engine report, each with ``path`` (relative to ``repo``) and ``mtime`` added."""
    repo = Path(repo)
    paths = glob.glob(str(repo / "build" / "synth" / "*" / "*.json"))
    paths += glob.glob(str(repo / "docs" / "**" / "*.json"), recursive=True)
    found = []
    for path in paths:
        try:
            with open(path) as f:
                rep = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(rep, dict) or "fmax_mhz" not in rep or "config" not in rep:
            continue
        if rep.get("core") not in ENGINE_CORES or rep["fmax_mhz"] is None:
            continue
        found.append(dict(rep, path=os.path.relpath(path, repo), mtime=os.path.getmtime(path)))
    return found


def engine_report(cfg, repo: Path = REPO, engine: str = "lanes", contract: int = 1) -> dict | None:
    """The newest report of ``cfg`` (same config name and lane count) built with ``engine`` for
    ``contract`` (a report from before contracts were recorded is contract 1), or None."""
    mine = [r for r in find_engine_reports(repo)
            if r["config"] == cfg.name and r.get("lanes", cfg.lanes) == cfg.lanes
            and r.get("engine", "lanes") == engine and (r.get("contract") or 1) == contract]
    return max(mine, key=lambda r: r["mtime"]) if mine else None
