"""The one model of the N-slot memory ring (hmtx.model.ring.RingSlots) and its users."""

import numpy as np
import pytest

from hmt_testlib import SEED
from hmtx.host.backends import GoldenTransport
from hmtx.host.device import Device
from hmtx.host.runtime import CheckedDevice
from hmtx.model import fixed
from hmtx.model.configs import get_config
from hmtx.model.golden_device import GoldenDevice
from hmtx.model.recall import RecallCache, SoftwareDevice
from hmtx.model.ring import RingSlots

CFG = get_config("tiny")                      # N = 4


def test_fill_saturates_and_write_ptr_wraps():
    ring = RingSlots(3)
    assert (ring.writes, ring.fill, ring.write_ptr, ring.full) == (0, 0, 0, False)
    seen = []
    for i in range(8):
        assert ring.write_ptr == i % 3
        slot = ring.advance(10 + i)
        seen.append((slot, ring.fill, ring.write_ptr, ring.last_slot))
    assert seen == [(0, 1, 1, 0), (1, 2, 2, 1), (2, 3, 0, 2), (0, 3, 1, 0),
                    (1, 3, 2, 1), (2, 3, 0, 2), (0, 3, 1, 0), (1, 3, 2, 1)]
    assert ring.writes == 8 and ring.full
    assert ring.slot_segment == [16, 17, 15]


def test_age_order_before_and_after_wrap():
    ring = RingSlots(4)
    assert ring.age_order() == []
    for seg in range(3):
        ring.advance(seg)
    assert ring.age_order() == [0, 1, 2]                    # not full: slot order is age order
    ring.advance(3)
    assert ring.age_order() == [0, 1, 2, 3]                 # exactly full, not yet wrapped
    ring.advance(4)                                         # overwrites slot 0 (segment 0)
    assert ring.age_order() == [1, 2, 3, 0]
    assert [ring.slot_segment[s] for s in ring.age_order()] == [1, 2, 3, 4]
    for seg in range(5, 10):
        ring.advance(seg)
    assert ring.age_order() == [2, 3, 0, 1]
    assert [ring.slot_segment[s] for s in ring.age_order()] == [6, 7, 8, 9]


def test_one_slot_ring():
    ring = RingSlots(1)
    for i in range(3):
        assert ring.advance() == 0 and ring.fill == 1 and ring.write_ptr == 0
    assert ring.age_order() == [0]


def test_reset_empties_the_ring():
    ring = RingSlots(2)
    for seg in range(5):
        ring.advance(seg)
    ring.reset()
    assert (ring.writes, ring.fill, ring.write_ptr, ring.full) == (0, 0, 0, False)
    assert ring.slot_segment == [-1, -1] and ring.age_order() == []
    with pytest.raises(ValueError, match="no memory"):
        ring.last_slot
    assert ring.advance(7) == 0 and ring.slot_segment == [7, -1]


@pytest.mark.parametrize("bad", [0, -1, 2.0, "4", None, True])
def test_bad_size(bad):
    with pytest.raises(ValueError, match="cache size N"):
        RingSlots(bad)


def test_every_user_holds_the_one_ring():
    """The recall caches, the software device, the golden device and the runtime's mirror of the
    device all keep their ring in a RingSlots (no copy of its arithmetic of their own)."""
    assert isinstance(RecallCache("fixed", 3, 8, 4).ring, RingSlots)
    assert isinstance(SoftwareDevice(3).ring, RingSlots)
    golden = GoldenDevice(CFG)
    assert isinstance(golden.ring, RingSlots) and golden.ring.n_slots == CFG.n_slots
    chk = CheckedDevice(Device(GoldenTransport(CFG, device=golden), CFG), CFG)
    assert isinstance(chk.ring, RingSlots) and chk.ring is not golden.ring


def test_golden_device_and_mirror_follow_the_ring_through_wrap_and_reset():
    rng = np.random.default_rng(SEED)
    golden = GoldenDevice(CFG)
    with Device(GoldenTransport(CFG, device=golden), CFG) as dev:
        chk = CheckedDevice(dev, CFG)
        chk.load_weights(*[fixed.quantize_weight(rng.normal(size=(CFG.d, CFG.d_h)) * 0.1) for _ in range(2)])
        for i in range(2 * CFG.n_slots + 1):
            m, e = fixed.quantize_bfp(rng.normal(size=CFG.d))
            chk.write(m, int(e))                           # checks the device's slot and fill
            assert (golden.fill, golden.write_ptr) == (chk.fill, chk.ring.write_ptr)
            assert chk.ring.writes == golden.ring.writes == i + 1
            chk.check_cache()                              # STATUS and every valid slot
        st = dev.status()
        assert (st.fill, st.write_ptr) == (CFG.n_slots, 1)
        chk.reset()
        assert (golden.fill, golden.write_ptr, chk.fill) == (0, 0, 0)
        st = dev.status()
        assert (st.fill, st.write_ptr) == (0, 0)
