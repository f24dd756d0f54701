"""The synthesized Fmax of each engine configuration, read from `hmtx synth` reports.

Only reports of the real engine (core ``HmtxTop``) count: the EchoCore stand-in builds measure
the UART bridge, not the datapath. Reports are searched in ``build/synth/*/`` (what `hmtx synth`
writes) and under ``docs/`` (reports committed with the synthesis results). When a config has
several, the newest wins. A config without one is reported as "not synthesized yet" — never
estimated.
"""

from pathlib import Path

from hmtx.hw.flow.reports import ENGINE_CORES, engine_report
from hmtx.hw.flow.reports import find_engine_reports as find_reports
from hmtx.model.paths import REPO

__all__ = ["find_reports", "fmax_table", "NOT_SYNTHESIZED", "ENGINE_CORES"]

NOT_SYNTHESIZED = "not synthesized yet"


def fmax_table(configs, repo: Path = REPO, contract: int = 1) -> dict:
    """``{config name: {"fmax_mhz", "board", "timing_met", "source"}}`` or, without a report,
    ``{"fmax_mhz": None, "reason": "not synthesized yet"}``. A report counts only when its lane
    count matches the config's P."""
    table = {}
    for cfg in configs:
        best = engine_report(cfg, repo, contract=contract)
        if best is None:
            table[cfg.name] = {"fmax_mhz": None, "reason": NOT_SYNTHESIZED}
            continue
        table[cfg.name] = {"fmax_mhz": float(best["fmax_mhz"]), "board": best.get("board"),
                           "timing_met": best.get("timing_met"), "source": best["path"]}
    return table
