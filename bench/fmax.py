"""The synthesized Fmax of each engine configuration, read from `hmtx synth` reports.

Only reports of the real engine (core ``HmtxTop``) count: the EchoCore stand-in builds measure
the UART bridge, not the datapath. Reports are searched in ``build/synth/*/`` (what `hmtx synth`
writes) and under ``docs/`` (reports committed with the synthesis results). When a config has
several, the newest wins. A config without one is reported as "not synthesized yet" — never
estimated.
"""

import glob
import json
import os
from pathlib import Path

__all__ = ["find_reports", "fmax_table", "NOT_SYNTHESIZED", "ENGINE_CORES"]

REPO = Path(__file__).resolve().parent.parent
ENGINE_CORES = ("HmtxTop", "hmtx")
NOT_SYNTHESIZED = "not synthesized yet"


def find_reports(repo: Path = REPO) -> list[dict]:
    """Every readable synthesis report of the engine, each with ``path`` and ``mtime`` added."""
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
        if rep.get("core") not in ENGINE_CORES:
            continue
        rep = dict(rep, path=os.path.relpath(path, repo), mtime=os.path.getmtime(path))
        found.append(rep)
    return found


def fmax_table(configs, repo: Path = REPO) -> dict:
    """``{config name: {"fmax_mhz", "board", "timing_met", "source"}}`` or, without a report,
    ``{"fmax_mhz": None, "reason": "not synthesized yet"}``. A report counts only when its lane
    count matches the config's P."""
    reports = find_reports(repo)
    table = {}
    for cfg in configs:
        mine = [r for r in reports if r["config"] == cfg.name and r.get("lanes", cfg.lanes) == cfg.lanes]
        if not mine:
            table[cfg.name] = {"fmax_mhz": None, "reason": NOT_SYNTHESIZED}
            continue
        best = max(mine, key=lambda r: r["mtime"])
        table[cfg.name] = {"fmax_mhz": float(best["fmax_mhz"]), "board": best.get("board"),
                           "timing_met": best.get("timing_met"), "source": best["path"]}
    return table
