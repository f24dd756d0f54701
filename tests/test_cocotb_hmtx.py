"""cocotb on Verilator: the generated engine (HmtxTop) byte for byte against the golden device.

One Verilator model per configuration is built (and reused while the RTL sources are unchanged);
every test runs a group of cocotb tests from ``hmtx.sim.tests.cocotb_hmtx`` in it. A failing
cocotb test fails here with its message and seed (``HMTX_SEED=<n>`` reproduces it).

``tiny`` runs every group in ``make test``. ``smollm`` (d=576, N=64) takes minutes to elaborate
and compile on two cores and a weight load alone is 295 k bytes through the byte stream, so its
groups are marked slow; ``make test`` runs the weight-free ``smoke`` group on it only when a
current smollm model is already built (HMTX_SMOLLM=1 forces the build). ``up5k_serial`` is
the iCE40 build's engine (``HmtxTop(up5k, engine="serial")``, one time-shared multiplier) in
every group at modest sizes. ``tiny_c2`` and ``up5k_serial_c2`` are the same engines built for
contract 2 (``HmtxTop(config, engine, contract=2)``: folded keys, protocol 2.2 / 2.1) against the
golden device of contract 2; ``weights_order`` is the group where the contracts' rules differ.
``attn_pass`` (ATTN_PASS's passes and state rules) runs on the lane engine's tops: tiny,
tiny_c2 and (slow) smollm.
"""

import os

import pytest

from hmtx.sim.coverage import Coverage
from hmtx.sim.runner import build, is_built
from hmtx.sim.targets import engine_target

MODULE = "hmtx.sim.tests.cocotb_hmtx"

# Wall-clock limit of one simulator run (seconds): a hung simulator fails instead of hanging.
LIMIT = 1800


@pytest.fixture(scope="module")
def tiny():
    return build(engine_target("tiny"))


@pytest.fixture(scope="module")
def smollm():
    return build(engine_target("smollm"))


@pytest.fixture(scope="module")
def up5k_serial():
    return build(engine_target("up5k", engine="serial"))


@pytest.fixture(scope="module")
def tiny_c2():
    return build(engine_target("tiny", contract=2))


@pytest.fixture(scope="module")
def up5k_serial_c2():
    return build(engine_target("up5k", engine="serial", contract=2))


def print_coverage(out) -> None:
    """The functional coverage the cocotb tests saved (merged), as a table (pytest -s shows it)."""
    files = sorted(out.glob("coverage-*.json"))
    if files:
        cov = Coverage.from_json(files[0].read_text())
        for f in files[1:]:
            cov.merge(Coverage.from_json(f.read_text()))
        print(f"\n[{out.name}] " + cov.summary())


GROUPS = ["session", "smoke", "ring", "weights_order", "reset_mid_operation", "fuzz", "soak"]
# ATTN_PASS (protocol 1.3 / 2.2): the lane engine's tops only
LANE_GROUPS = GROUPS + ["attn_pass"]


@pytest.mark.parametrize("group", LANE_GROUPS)
def test_tiny(tiny, group):
    print_coverage(tiny.run(MODULE, tests=group, tag=group, wall_limit_s=LIMIT, env={"HMTX_CONFIG": "tiny"}))


@pytest.mark.slow
def test_tiny_soak_10k(tiny):
    print_coverage(tiny.run(MODULE, tests="soak", tag="soak10k", wall_limit_s=4 * LIMIT, env={"HMTX_CONFIG": "tiny", "HMTX_SOAK_OPS": "10000"}))


@pytest.mark.slow
# (smollm is the lane engine: ATTN_PASS's group too, at its tiles of 16 rows x 64 keys)
@pytest.mark.parametrize("group", ["session", "ring", "reset_mid_operation", "fuzz", "soak", "attn_pass"])
def test_smollm(smollm, group):
    print_coverage(smollm.run(MODULE, tests=group, tag=group, wall_limit_s=4 * LIMIT,
                              env={"HMTX_CONFIG": "smollm", "HMTX_SOAK_OPS": "300", "HMTX_FUZZ_CASES": "25",
                                   "HMTX_RESET_TRIALS": "2", "HMTX_WRAPS": "2"}))


def test_smollm_smoke(request):
    """smollm without a weight load: INFO, errors, full-size attention tiles, malformed frames."""
    if not os.environ.get("HMTX_SMOLLM"):
        target = engine_target("smollm", generate=False)
        if target is None or not is_built(target):
            pytest.skip("no current smollm model (minutes to build on 2 cores): `make test-all` or HMTX_SMOLLM=1 builds it")
    model = request.getfixturevalue("smollm")
    model.run(MODULE, tests="smoke", tag="smoke", wall_limit_s=LIMIT, env={"HMTX_CONFIG": "smollm"})


@pytest.mark.parametrize("group", GROUPS)
def test_up5k_serial(up5k_serial, group):
    # HMTX_ENGINE: the serial engine takes ~12,000 cycles per RECALL, the watchdogs scale with it
    print_coverage(up5k_serial.run(MODULE, tests=group, tag=group, wall_limit_s=LIMIT,
                                   env={"HMTX_CONFIG": "up5k", "HMTX_ENGINE": "serial", "HMTX_SOAK_OPS": "150",
                                        "HMTX_FUZZ_CASES": "20", "HMTX_RESET_TRIALS": "3", "HMTX_WRAPS": "2"}))


@pytest.mark.parametrize("group", LANE_GROUPS)
def test_tiny_c2(tiny_c2, group):
    print_coverage(tiny_c2.run(MODULE, tests=group, tag=group, wall_limit_s=LIMIT,
                               env={"HMTX_CONFIG": "tiny", "HMTX_CONTRACT": "2"}))


@pytest.mark.parametrize("group", ["session", "weights_order", "fuzz", "soak"])
def test_up5k_serial_c2(up5k_serial_c2, group):
    print_coverage(up5k_serial_c2.run(MODULE, tests=group, tag=group, wall_limit_s=LIMIT,
                                      env={"HMTX_CONFIG": "up5k", "HMTX_ENGINE": "serial", "HMTX_CONTRACT": "2",
                                           "HMTX_SOAK_OPS": "150", "HMTX_FUZZ_CASES": "20"}))
