"""Malformed frames against the golden device (default: >= 2,000 frames) and against the RTL
through the sim backend (slow); tests/frame_fuzz.py says what is checked. The seed is printed;
HMTX_SEED=<seed> reproduces a run."""

import os
import random

import pytest

from frame_fuzz import KINDS, fuzz_device
from hmtx.host.backends import GoldenTransport
from hmtx.model.configs import get_config
from hmtx.model.golden_device import GoldenDevice

SEED = int(os.environ.get("HMTX_SEED", random.randrange(1 << 31)))
CFG = get_config("tiny")


@pytest.fixture(autouse=True)
def _print_seed():
    print(f"HMTX_SEED={SEED}")


def _report(stats, where):
    print(f"{where}: " + ", ".join(f"{k} {stats[k]}" for k in KINDS) +
          f"; {stats['responses']} responses, {stats['good_ok']} good frames answered OK")


def test_fuzz_golden_device_default():
    stats = fuzz_device(GoldenTransport(CFG, GoldenDevice(CFG)), CFG, 2400, SEED)
    _report(stats, f"golden, seed {SEED}")
    assert sum(stats[k] for k in KINDS) == 2400
    assert all(stats[k] > 0 for k in KINDS if k != "overlong"), stats
    assert stats["good_ok"] > 300


@pytest.mark.slow
def test_fuzz_golden_device_long():
    for i in range(4):
        stats = fuzz_device(GoldenTransport(CFG, GoldenDevice(CFG)), CFG, 10000, SEED + i)
        _report(stats, f"golden, seed {SEED + i}")
        assert stats["overlong"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("config,engine,frames", [("tiny-d32", "lanes", 10000), ("up5k", "serial", 5000)])
def test_fuzz_rtl_through_sim_backend(config, engine, frames):
    """The same streams through the generated Verilog (Verilator, the sim backend): byte for
    byte the golden device's answers (CYCLES counts excepted), none lost. tiny widened to d=32
    (the model tests/test_device_sim.py builds) with the lane engine, and up5k with the serial
    engine (the iCEBreaker's)."""
    from hmtx.host.backends_sim import SimTransport
    from hmtx.model.defaults import engine_config

    cfg = engine_config("tiny", 32, None) if config == "tiny-d32" else get_config(config)
    t = SimTransport(cfg, engine=engine)
    try:
        stats = fuzz_device(t, cfg, frames, SEED, timeout=300.0, cycles_exact=False)
    finally:
        t.close()
    _report(stats, f"RTL (sim backend, {config}, {engine} engine), seed {SEED}")
    assert stats["overlong"] > 0 and stats["good_ok"] > frames // 10


def _buggy(bug, frame):
    """``GoldenDevice._frame`` with one bug planted."""
    from hmtx.model import protocol as P

    def buggy(body, error):
        if bug == "crc_ignored_for_write" and body[:1] == bytes([P.Op.WRITE_MEMORY]) and len(body) == CFG.d + 3:
            return frame(body[:-1] + bytes([P.crc8(body[:-1])]), error)      # acts on a bad frame
        if bug == "escape_is_bad_crc" and error == "escape":
            return P.encode_response(P.Status.BAD_CRC, body[0] if body else 0)
        if bug == "overlong_dropped" and error == "overlong":
            return b""
        if bug == "failed_weights_kept" and body[:1] == bytes([P.Op.LOAD_WEIGHTS]) and P.crc8(body) != 0:
            return P.encode_response(P.Status.BAD_CRC, body[0])              # matrix not invalidated
        return frame(body, error)
    return buggy


@pytest.mark.parametrize("bug", ["crc_ignored_for_write", "escape_is_bad_crc", "overlong_dropped",
                                 "failed_weights_kept"])
def test_fuzz_finds_a_bug_planted_in_the_device_under_test(bug):
    """Against a reference: the RTL run's situation."""
    t = GoldenTransport(CFG)
    t.device._frame = _buggy(bug, t.device._frame)
    with pytest.raises(AssertionError, match=f"seed {SEED}, frame"):
        fuzz_device(t, CFG, 2400, SEED, timeout=0.3)


@pytest.mark.parametrize("bug", ["crc_ignored_for_write", "escape_is_bad_crc", "overlong_dropped"])
def test_fuzz_finds_a_bug_planted_in_the_golden_device_itself(bug, monkeypatch):
    """The reference has the bug too (the default run's situation): the protocol's rules --
    statuses per kind, one answer per frame -- still catch it."""
    from hmtx.model.golden_device import GoldenDevice
    original = GoldenDevice._frame
    monkeypatch.setattr(GoldenDevice, "_frame", lambda self, body, error: _buggy(bug, original.__get__(self))(body, error))
    with pytest.raises(AssertionError, match=f"seed {SEED}, frame"):
        fuzz_device(GoldenTransport(CFG, GoldenDevice(CFG)), CFG, 2400, SEED, timeout=0.3)
