"""hmtx.hw.flow.reports: which saved synthesis report gives a config's Fmax."""

import json
import os

from hmtx.hw.flow.reports import engine_report
from hmtx.model.configs import get_config


def _save(path, mtime, **report):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    os.utime(path, (mtime, mtime))


def test_newest_engine_report_of_the_config_wins(tmp_path):
    cfg = get_config("tiny")
    base = dict(config="tiny", lanes=cfg.lanes)
    _save(tmp_path / "docs/results/synth_tiny.json", 100, core="HmtxTop", fmax_mhz=90.0, **base)
    _save(tmp_path / "build/synth/old/synth_report.json", 50, core="HmtxTop", fmax_mhz=70.0, **base)
    # newer, but not evidence of the engine's speed: the stand-in, another P, an unfinished build
    _save(tmp_path / "build/synth/echo/synth_report.json", 200, core="EchoCore", fmax_mhz=140.0, **base)
    _save(tmp_path / "build/synth/p8/synth_report.json", 200, core="HmtxTop", fmax_mhz=60.0, config="tiny",
          lanes=cfg.lanes * 2)
    _save(tmp_path / "build/synth/unrouted/synth_report.json", 200, core="HmtxTop", fmax_mhz=None, **base)
    # another engine's build: its Fmax does not go with the lanes engine's cycle counts
    _save(tmp_path / "build/synth/serial/synth_report.json", 300, core="HmtxTop", fmax_mhz=30.0,
          engine="serial", **base)
    rep = engine_report(cfg, tmp_path)
    assert (rep["fmax_mhz"], rep["path"]) == (90.0, "docs/results/synth_tiny.json")
    assert engine_report(cfg, tmp_path, "serial")["fmax_mhz"] == 30.0
    assert engine_report(get_config("smollm"), tmp_path) is None
