"""sim.runner.build: concurrent requests for one model compile it once."""

import threading
import time

from hmtx.sim import runner


def test_concurrent_builds_of_one_target_compile_once(tmp_path, monkeypatch):
    src = tmp_path / "top.v"
    src.write_text("module top(input clk, input rst); endmodule\n")
    target = runner.SimTarget(name="lockcheck", sources=(src,), toplevel="top")
    monkeypatch.setattr(runner, "BUILD", tmp_path / "sim")
    calls, inside, overlaps = [], [], []

    def fake_compile(target, sim, waves, fst, args, tag, build_dir):
        calls.append(build_dir)
        if inside:
            overlaps.append(build_dir)
        inside.append(1)
        time.sleep(0.3)  # long enough for the other thread to reach the lock
        build_dir.mkdir(parents=True)
        (build_dir / "built.ok").write_text(tag + "\n")
        inside.pop()

    monkeypatch.setattr(runner, "_compile", fake_compile)
    models, errors = [], []

    def ask():
        try:
            models.append(runner.build(target, sim="verilator", waves=False))
        except Exception as e:  # surfaced below with the thread's error
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(calls) == 1, f"model compiled {len(calls)} times"
    assert not overlaps
    assert len({m.build_dir for m in models}) == 1 and len(models) == 3
