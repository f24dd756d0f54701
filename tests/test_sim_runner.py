"""sim.runner.build: concurrent requests for one model compile it once. sim.targets: each engine
kind has its own cached Verilog and target name."""

import threading
import time
import types

import pytest

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


def test_engine_targets_are_separate_per_engine_and_contract(tmp_path, monkeypatch):
    from hmtx.hw import top
    from hmtx.sim import targets

    monkeypatch.setattr(targets, "BUILD", tmp_path / "sim")
    # no elaboration: a stand-in engine, and a "Verilog" that only says which engine and contract it has
    # (the stand-in says whether it has ATTN_PASS, as the top checks against its protocol)
    monkeypatch.setattr(top, "engine_class",
                        lambda kind: lambda config, contract: types.SimpleNamespace(attn_pass=kind == "lanes"))
    monkeypatch.setattr(targets, "write_verilog",
                        lambda t, name, path: path.write_text(f"// {t.engine_kind}" + f" c{t.contract}" * (t.contract != 1)
                                                              + "\n"))
    assert targets.engine_target("tiny", engine="serial", generate=False) is None     # nothing cached yet
    lanes, serial = targets.engine_target("tiny"), targets.engine_target("tiny", engine="serial")
    # the runner keys models on the name: "lanes" keeps the name (and the caches) it had
    assert (lanes.name, serial.name) == ("tiny", "tiny-serial")
    assert lanes.sources[0] == tmp_path / "sim" / "tiny" / "rtl" / "hmtx_top.v"
    assert serial.sources[0] == tmp_path / "sim" / "tiny-serial" / "rtl" / "hmtx_top.v"
    assert serial.sources[0].read_text() == "// serial\n" and lanes.sources[0].read_text() == "// lanes\n"
    assert targets.engine_target("tiny", engine="serial", generate=False) == serial
    stamp = lambda t: t.sources[0].with_name("hmtx_top.v.sha256").read_text()
    assert stamp(lanes) != stamp(serial)
    # contract 2 has targets of its own, beside contract 1's
    c2, serial_c2 = targets.engine_target("tiny", contract=2), targets.engine_target("tiny", engine="serial", contract=2)
    assert (c2.name, serial_c2.name) == ("tiny-c2", "tiny-serial-c2")
    assert c2.sources[0].read_text() == "// lanes c2\n" and serial_c2.sources[0].read_text() == "// serial c2\n"
    assert len({stamp(t) for t in (lanes, serial, c2, serial_c2)}) == 4
    assert targets.engine_target("tiny", generate=False) == lanes       # still current
    with pytest.raises(ValueError, match="unknown engine 'wide'"):
        targets.engine_target("tiny", engine="wide")


def test_rtl_cache_key_covers_what_the_gateware_imports_and_nothing_else():
    """The cached Verilog is keyed by hw/ and the model/ modules hw/ imports (transitively):
    editing the training or evaluation code must not force a Verilator rebuild, editing the
    fixed-point contract or the protocol must."""
    from hmtx.model.paths import REPO
    from hmtx.sim.targets import rtl_model_files
    names = {f.name for f in rtl_model_files()}
    assert {"fixed.py", "protocol.py", "configs.py"} <= names
    assert not names & {"train.py", "hmt.py", "evaluate.py", "corpus.py", "backbone.py"}
    # transitively: every model/ module a listed one imports is listed too
    import ast
    for f in rtl_model_files():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hmtx.model."):
                assert f"{node.module.split('.')[2]}.py" in names, f"{f.name} imports {node.module}"
    assert all(f.parent == REPO / "model" for f in rtl_model_files())


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_cocotb_runner_extends_cocotbs_own_commands(sim, monkeypatch):
    """The two methods cocotb's runners build their commands with must still exist (a cocotb
    upgrade that renames them fails here, not as a silently missing timeout), and our runner
    changes only what it is asked to."""
    from cocotb_tools.runner import get_runner
    base = type(get_runner(sim))
    assert callable(getattr(base, "_build_command", None)) and callable(getattr(base, "_get_sim_cmd_prefix", None))
    monkeypatch.setenv("SIM_CMD_PREFIX", "nice")
    plain = runner.cocotb_runner(sim)
    assert isinstance(plain, base) and plain._get_sim_cmd_prefix() == ["nice"]
    limited = runner.cocotb_runner(sim, wall_limit_s=7)
    assert limited._get_sim_cmd_prefix() == ["timeout", "--kill-after=10", "7", "nice"]
    if sim == "verilator":
        r = runner.cocotb_runner(sim, make_args=["X=1"])
        # (cocotb's own command needs a configured build; stand it in to see how ours composes)
        base_cmds = [["verilator", "-cc"], ["make", "-C", "b"]]
        monkeypatch.setattr(base, "_build_command", lambda self: base_cmds)
        assert r._build_command() == [["verilator", "-cc"], ["make", "-C", "b", "X=1"]]
        assert base_cmds[-1] == ["make", "-C", "b"]                 # cocotb's list left as it was
