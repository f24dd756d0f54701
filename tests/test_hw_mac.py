"""MacArray vs plain integer sums, dot and lane mode, random gaps and backpressure."""

import pytest

from hmtx.hw.mac import MacArray
from hwsim import rng, run_stream


@pytest.mark.parametrize("lanes", [1, 5])
def test_mac_array_matches_integer_sums(lanes):
    r = rng(10 + lanes)
    dut = MacArray(lanes, tag_bits=8)
    items, expect = [], []
    for tag in range(12):
        # the engine drains the pipeline between modes (lane results overtake dot results)
        lane_mode = tag >= 6
        beats = r.randint(1, 4)
        dot, lanesum = 0, [0] * lanes
        for k in range(beats):
            a = [r.randint(-32768, 32767) for _ in range(lanes)]
            b = [r.randint(-32768, 32767) for _ in range(lanes)]
            if lane_mode:
                a = [r.randint(0, 32767)] * lanes
                b = [r.randint(-127, 127) for _ in range(lanes)]
            dot += sum(x * y for x, y in zip(a, b))
            lanesum = [s + x * y for s, x, y in zip(lanesum, a, b)]
            items.append({"a": a, "b": b, "first": k == 0, "last": k == beats - 1,
                          "lane_mode": lane_mode, "tag": tag})
        expect.append((tag, lane_mode, dot, lanesum))
    out = run_stream(dut, dut.i, dut.o, items, len(expect), r,
                     convert=lambda p: (p.tag, p.dot, [p.lanes[l] for l in range(lanes)]))
    for (tag, lane_mode, dot, lanesum), (otag, odot, olanes) in zip(expect, out):
        assert otag == tag
        if lane_mode:
            assert olanes == lanesum, f"tag {tag}"
        else:
            assert odot == dot, f"tag {tag}"
