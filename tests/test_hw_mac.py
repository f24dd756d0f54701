"""MacArray vs plain integer sums, dot and lane mode, random gaps and backpressure."""

import pytest

from hmtx.hw.mac import MacArray
from hwsim import rng, run_stream


@pytest.mark.parametrize("lane_mode", [False, True], ids=["dot", "lanes"])
@pytest.mark.parametrize("lanes,group_lanes", [(1, None), (5, None), (6, 2), (5, 2)])
def test_mac_array_matches_integer_sums(lanes, group_lanes, lane_mode):
    # one mode per run: the engine drains the pipeline between modes (lane results leave
    # after 3 cycles, dot results after 3 + ceil(log2 P), so mixed modes in flight collide)
    r = rng(10 + lanes)
    dut = MacArray(lanes, tag_bits=8, group_lanes=group_lanes)
    items, expect = [], []
    for tag in range(10):
        beats = r.randint(1, 4)
        dot, lanesum = 0, [0] * lanes
        for k in range(beats):
            if lane_mode:
                a = [r.randint(0, 32767)] * lanes
                b = [r.randint(-127, 127) for _ in range(lanes)]
            else:
                a = [r.randint(-32768, 32767) for _ in range(lanes)]
                b = [r.randint(-32768, 32767) for _ in range(lanes)]
            dot += sum(x * y for x, y in zip(a, b))
            lanesum = [s + x * y for s, x, y in zip(lanesum, a, b)]
            items.append({"a": a, "b": b, "first": k == 0, "last": k == beats - 1,
                          "lane_mode": lane_mode, "tag": tag})
        expect.append((tag, lanesum if lane_mode else dot))
    out = run_stream(dut, dut.i, dut.o, items, len(expect), r,
                     convert=lambda p: (p.tag, [p.lanes[l] for l in range(lanes)] if lane_mode else p.dot))
    assert out == expect
