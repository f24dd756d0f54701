"""cocotb on Verilator: the verification environment checked on the stand-in device.

One Verilator model is built per session (reused across runs while its Verilog is unchanged) and
each test runs a group of cocotb tests in it; a failing cocotb test fails here with its message
and the seed (``HMTX_SEED=<n>`` reproduces it). ``SIM=icarus`` runs them on Icarus instead.
"""

import pytest

from hmtx.sim.coverage import Coverage
from hmtx.sim.runner import build
from hmtx.sim.targets import standin_target


MODULE = "hmtx.sim.tests.cocotb_standin"

# Wall-clock limit of one simulator run (seconds): a hung simulator fails instead of hanging.
LIMIT = 1800


@pytest.fixture(scope="module")
def standin():
    return build(standin_target())


@pytest.mark.parametrize("group", ["sequences", "reset_mid_operation", "fuzz", "soak", "record"])
def test_standin(standin, group):
    out = standin.run(MODULE, tests=group, tag=group, wall_limit_s=LIMIT)
    assert (out / "results.xml").is_file()
    if (cov := out / "coverage-soak.json").exists():
        print("\n" + Coverage.from_json(cov.read_text()).summary())


@pytest.mark.slow
def test_standin_soak_10k(standin):
    standin.run(MODULE, tests="soak", tag="soak10k", wall_limit_s=4 * LIMIT, env={"HMTX_SOAK_OPS": "10000"})


def test_failures_are_reported_with_seed(standin):
    """The runner turns a failing cocotb test into an AssertionError naming it and its seed."""
    with pytest.raises(AssertionError) as e:
        standin.run(MODULE, tests="sequences/stalls=none", tag="broken", seed=7,
                    env={"HMTX_STANDIN_BREAK": "1"})
    msg = str(e.value)
    assert "sequences/stalls=none FAILED" in msg and "seed 7" in msg and "HMTX_SEED=7" in msg
