"""Registered copies of a signal that synthesis keeps apart, to split high-fanout nets.

At P=64 one control bit of the lane array (a phase select, an accumulator's clear) drives
thousands of LUT inputs spread over the die; nextpnr places the driver somewhere in the middle
and every far sink pays the distance. Giving each lane group its own register lets the placer
put it next to the lanes it feeds. Yosys, however, merges registers with equal inputs
(``opt_merge``), so plain duplicated ``m.d.sync`` statements come back as one register. On
ECP5 the copies are therefore instantiated as ``TRELLIS_FF`` cells, which Yosys does not
merge; elsewhere (simulation, Verilog export, iCE40) they are ordinary registers, which is
the same logic.
"""

from amaranth.hdl import ClockSignal, Const, Elaboratable, Instance, Module, ResetSignal, Signal, Value

__all__ = ["Replicas", "replicate", "replicate_tree"]


def _is_ecp5(platform) -> bool:
    return getattr(platform, "family", None) == "ecp5"


class Replicas(Elaboratable):
    """``n`` copies of ``i``, each registered once (one cycle late), loaded when ``en``.

    ``reset``: the copies clear to zero on the domain's reset (for valid bits); otherwise they
    have no reset, like the datapath registers they stand for.
    """

    def __init__(self, width: int, n: int, name: str, reset: bool = False):
        if n < 1:
            raise ValueError(f"replicas: need at least one copy, got {n}")
        self.width, self.n, self.reset = width, n, reset
        self.i = Signal(width, name=f"{name}_i")
        self.en = Signal(init=1, name=f"{name}_en")
        self.o = [Signal(width, name=f"{name}{k}", reset_less=not reset) for k in range(n)]

    def elaborate(self, platform):
        m = Module()
        if not _is_ecp5(platform):
            with m.If(self.en):
                m.d.sync += [o.eq(self.i) for o in self.o]
            return m
        lsr = ResetSignal() if self.reset else Const(0)
        for k, o in enumerate(self.o):
            for b in range(self.width):
                m.submodules[f"ff{k}_{b}"] = Instance(
                    "TRELLIS_FF",
                    p_GSR="DISABLED", p_CEMUX="CE", p_CLKMUX="CLK", p_LSRMUX="LSR", p_REGSET="RESET",
                    p_SRMODE="LSR_OVER_CE",
                    i_CLK=ClockSignal(), i_CE=self.en, i_LSR=lsr, i_DI=self.i[b], o_Q=o[b],
                    a_keep=1)
        return m


def replicate(m: Module, value, n: int, name: str, *, reset: bool = False, en=None) -> list:
    """Add a :class:`Replicas` of ``value`` to ``m``; return the ``n`` registered copies
    (plain ``Value``s of ``value``'s width; slice or ``as_signed`` them as needed)."""
    value = Value.cast(value)
    r = Replicas(len(value), n, name, reset=reset)
    m.submodules[name] = r
    m.d.comb += r.i.eq(value)
    if en is not None:
        m.d.comb += r.en.eq(en)
    return r.o


def replicate_tree(m: Module, value, regions, name: str, *, reset: bool = False) -> list:
    """Two levels of copies: one per region, then one per leaf from its region's copy, so that
    no hop is longer than about half the way from the driver to the farthest leaf.
    ``regions[k]`` is leaf k's region (0 .. R-1). Returns the leaf copies, **two** cycles after
    ``value`` (take ``value`` a stage earlier than for :func:`replicate`)."""
    regions = list(regions)
    if not regions or min(regions) < 0:
        raise ValueError(f"replicate_tree {name}: need region numbers >= 0 per leaf, got {regions}")
    mids = replicate(m, value, max(regions) + 1, f"{name}_r", reset=reset)
    leaves = [None] * len(regions)
    for r, mid in enumerate(mids):
        ks = [k for k, rk in enumerate(regions) if rk == r]
        if ks:
            for k, o in zip(ks, replicate(m, mid, len(ks), f"{name}_r{r}_", reset=reset)):
                leaves[k] = o
    return leaves
