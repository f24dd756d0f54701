"""The N-slot ring of the long-term memory cache: the one model of its bookkeeping.

Memory i (counting writes from 0 since the last reset) goes to slot ``i mod N``; the cache holds
``min(writes, N)`` memories in slots ``0 .. fill-1``; once full, each write overwrites the oldest.
The recall model's caches (:mod:`hmtx.model.recall`), the golden device
(:mod:`hmtx.model.golden_device`, whose STATUS reports ``fill`` and ``write_ptr``) and the host
runtime's mirror of the device (:mod:`hmtx.host.runtime`) all keep one :class:`RingSlots`, so they
cannot disagree about which slot a write goes to or which slots are searched.

Plain Python, no numpy or torch: the golden device depends on it.
"""

__all__ = ["RingSlots"]


class RingSlots:
    """Ring bookkeeping of the long-term memory cache: which slot the next write goes to, how many
    slots hold memories, and which segment each slot holds (``-1``: none, or not recorded)."""

    def __init__(self, n_slots: int):
        if not isinstance(n_slots, int) or isinstance(n_slots, bool) or n_slots < 1:
            raise ValueError(f"cache size N must be a positive integer, got {n_slots!r}")
        self.n_slots = n_slots
        self.reset()

    def reset(self) -> None:
        """Empty the ring (a new document; the device's RESET_CACHE)."""
        self.writes = 0                 # memories written since the last reset
        self.slot_segment = [-1] * self.n_slots

    @property
    def fill(self) -> int:
        """Slots holding a memory (saturates at N)."""
        return min(self.writes, self.n_slots)

    @property
    def full(self) -> bool:
        return self.writes >= self.n_slots

    @property
    def write_ptr(self) -> int:
        """The slot the next write goes to (the device's write pointer)."""
        return self.writes % self.n_slots

    @property
    def last_slot(self) -> int:
        """The slot the most recent write went to."""
        if self.writes == 0:
            raise ValueError("the ring holds no memory yet: there is no last written slot")
        return (self.writes - 1) % self.n_slots

    def advance(self, segment: int = -1) -> int:
        """Record a write (of the memory of ``segment``, if given); returns the slot it went to."""
        slot = self.write_ptr
        self.slot_segment[slot] = segment
        self.writes += 1
        return slot

    def age_order(self) -> list[int]:
        """Valid slots, oldest memory first (FIFO order)."""
        if self.writes <= self.n_slots:
            return list(range(self.writes))
        start = self.write_ptr
        return [(start + i) % self.n_slots for i in range(self.n_slots)]

    def __repr__(self) -> str:
        return f"RingSlots(n_slots={self.n_slots}, writes={self.writes}, fill={self.fill}, write_ptr={self.write_ptr})"
