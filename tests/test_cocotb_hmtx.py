"""cocotb on Verilator: the generated engine (HmtxTop) byte for byte against the golden device.

One Verilator model per configuration is built (and reused while the RTL sources are unchanged);
every test runs a group of cocotb tests from ``hmtx.sim.tests.cocotb_hmtx`` in it. A failing
cocotb test fails here with its message and seed (``HMTX_SEED=<n>`` reproduces it).

``tiny`` runs every group in ``make test``. ``smollm`` (d=576, N=64) takes minutes to elaborate
and compile on two cores, so its full groups are marked slow; ``make test`` runs one short
sequence on it only when its model is already built (HMTX_SMOLLM=1 forces the build).
"""

import os

import pytest

from hmtx.sim.runner import build, is_built
from hmtx.sim.targets import engine_target

MODULE = "hmtx.sim.tests.cocotb_hmtx"


@pytest.fixture(scope="module")
def tiny():
    return build(engine_target("tiny"))


@pytest.fixture(scope="module")
def smollm():
    return build(engine_target("smollm"))


@pytest.mark.parametrize("group", ["session", "ring", "reset_mid_operation", "fuzz", "soak"])
def test_tiny(tiny, group):
    tiny.run(MODULE, tests=group, tag=group, env={"HMTX_CONFIG": "tiny"})


@pytest.mark.slow
def test_tiny_soak_10k(tiny):
    tiny.run(MODULE, tests="soak", tag="soak10k", env={"HMTX_CONFIG": "tiny", "HMTX_SOAK_OPS": "10000"})


@pytest.mark.slow
@pytest.mark.parametrize("group", ["session", "ring", "reset_mid_operation", "fuzz", "soak"])
def test_smollm(smollm, group):
    smollm.run(MODULE, tests=group, tag=group,
               env={"HMTX_CONFIG": "smollm", "HMTX_SOAK_OPS": "300", "HMTX_FUZZ_CASES": "25"})


def test_smollm_ring_short(request):
    """Weight load, one ring wrap with recalls, slot read-back and attention tiles on smollm."""
    if not os.environ.get("HMTX_SMOLLM"):
        target = engine_target("smollm", generate=False)
        if target is None or not is_built(target):
            pytest.skip("no current smollm model (minutes to build on 2 cores): `make test-all` or HMTX_SMOLLM=1 builds it")
    model = request.getfixturevalue("smollm")
    model.run(MODULE, tests="ring", tag="ring-short", env={"HMTX_CONFIG": "smollm", "HMTX_WRAPS": "1.1"})
