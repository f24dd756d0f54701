"""Small tables in flip-flops whose synchronous read keeps its register inside the multiplexer.

The engine's exponent tables (one int8 or EXP_W entry per vector row or cache slot, 64-144
entries) are read at a new address every cycle in the exp2 and probability passes and once per
score. As ``lib.memory.Memory`` in flip-flops, a read is one 64:1 or 144:1 multiplexer between
the address register and the next register: on the routed LFE5U-85F smollm build it was the
slowest path of the design (11.6 ns, 9.4 ns of it routing between the table's flip-flops,
which spread over many slices). A block RAM would cost one DP16KD per read port (the engine
reads vexp through three). :class:`RegisterTable` keeps the flip-flops and moves the register
into the multiplexer instead: a read selects within banks of ``bank`` entries into a register
per bank, and the bank after it. The data then comes one cycle after the address, like a
block RAM's synchronous read port (old data when the same entry is written in that cycle).
"""

from amaranth.hdl import Elaboratable, Module, Signal, Shape

from .fanout import replicate

__all__ = ["RegisterTable"]


class _Port:
    def __init__(self, table, name, en, depth=None):
        self.addr = Signal(range(table.depth if depth is None else depth), name=f"{name}_addr")
        self.data = Signal(table.shape, name=f"{name}_data")
        if en:
            self.en = Signal(name=f"{name}_en")


class RegisterTable(Elaboratable):
    """``depth`` entries of ``shape`` in flip-flops (``data``: one Signal per entry, so a
    testbench can set or get an entry directly), no reset.

    * :meth:`write_port`: ``addr``, ``data``, ``en``; the entry changes at the clock edge (a
      later port wins over an earlier one in the same cycle).
    * :meth:`read_port` with ``domain="sync"``: ``data`` is the entry at the ``addr`` of the
      cycle before, read through a register per bank of ``bank`` entries (a power of two;
      default about sqrt of the entries the port reads) and then a bank select.
      With ``latency=2`` the port registers ``addr`` first, one copy per bank
      (:func:`~hmtx.hw.fanout.replicate`, which synthesis keeps apart), so that each bank's
      select starts at a flip-flop placed beside it: ``data`` is then the entry at the ``addr``
      of two cycles before, as it was one cycle before.
      ``base``/``size``: the port reads only entries ``base .. base+size-1`` (``addr`` counts
      from ``base``), so a read of one part of a table is a smaller multiplexer, without an adder
      in front of it.
    * :meth:`read_port` with ``domain="comb"``: ``data`` is the entry at ``addr`` now, one
      depth:1 multiplexer (for reads off the critical path).
    """

    def __init__(self, shape, depth, *, bank=None, name="table"):
        if depth < 1:
            raise ValueError(f"RegisterTable {name!r}: depth must be at least 1, got {depth}")
        self._bank_given = bank is not None
        if bank is None:
            bank = _default_bank(depth)
        if bank < 1 or bank & (bank - 1):
            raise ValueError(f"RegisterTable {name!r}: bank must be a power of two, got {bank}")
        self.shape, self.depth, self.bank, self.name = Shape.cast(shape), depth, bank, name
        self.data = [Signal(shape, name=f"{name}{k}", reset_less=True) for k in range(depth)]
        self._writes, self._reads = [], []

    def write_port(self):
        port = _Port(self, f"{self.name}_w{len(self._writes)}", en=True)
        self._writes.append(port)
        return port

    def read_port(self, domain="sync", *, latency=None, base=0, size=None):
        if domain not in ("sync", "comb"):
            raise ValueError(f"RegisterTable {self.name!r}: read domain must be 'sync' or 'comb', got {domain!r}")
        allowed = (0,) if domain == "comb" else (1, 2)
        latency = allowed[0] if latency is None else latency
        if latency not in allowed:
            raise ValueError(f"RegisterTable {self.name!r}: a {domain} read has latency "
                             f"{' or '.join(map(str, allowed))}, got {latency}")
        size = self.depth - base if size is None else size
        if base < 0 or size < 1 or base + size > self.depth:
            raise ValueError(f"RegisterTable {self.name!r}: entries {base}..{base + size - 1} are not "
                             f"within 0..{self.depth - 1}")
        port = _Port(self, f"{self.name}_r{len(self._reads)}", en=False, depth=size)
        port.latency, port.entries = latency, self.data[base:base + size]
        self._reads.append((domain, port))
        return port

    def elaborate(self, platform):
        m = Module()
        for port in self._writes:
            with m.If(port.en):
                with m.Switch(port.addr):
                    for k, entry in enumerate(self.data):
                        with m.Case(k):
                            m.d.sync += entry.eq(port.data)
        # (case statements, not an Array index: Yosys maps a variable index to a shifter whose
        # stages spread every input bit over many LUTs)
        for n, (domain, port) in enumerate(self._reads):
            if domain == "comb":
                _select(m, m.d.comb, port.data, port.addr, port.entries)
                continue
            B = self.bank if self._bank_given else _default_bank(len(port.entries))
            lo_bits = B.bit_length() - 1
            banks = [port.entries[b:b + B] for b in range(0, len(port.entries), B)]
            bank_q = [Signal(self.shape, name=f"{self.name}_r{n}_bank{b}", reset_less=True)
                      for b in range(len(banks))]
            if port.latency == 2:
                addrs = replicate(m, port.addr, len(banks) + 1, f"{self.name}_r{n}_addr")
            else:
                addrs = [port.addr] * (len(banks) + 1)
            for q, entries, addr in zip(bank_q, banks, addrs):
                _select(m, m.d.sync, q, addr[:lo_bits], entries)
            hi_q = Signal(range(len(banks)), name=f"{self.name}_r{n}_hi", reset_less=True)
            m.d.sync += hi_q.eq(addrs[-1] >> lo_bits)
            _select(m, m.d.comb, port.data, hi_q, bank_q)
        return m


def _default_bank(n):
    """A power of two near sqrt(n): the two multiplexer levels about equal."""
    return 1 << ((n - 1).bit_length() + 1) // 2


def _select(m, domain, target, index, values):
    if len(values) == 1:
        domain += target.eq(values[0])
        return
    with m.Switch(index):
        for k, v in enumerate(values):
            with m.Case(k):
                domain += target.eq(v)
