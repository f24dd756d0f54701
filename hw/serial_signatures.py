"""What the units of the sequential engine share: the operation they work on (:func:`job_layout`),
the start/done handshake with the sequencer (:data:`Control`), the face of the one multiplier
(:class:`MacPort`), memory-port signatures, and :func:`merge`, which lets units that take turns
drive one port."""

import operator
from functools import reduce

from amaranth.hdl import Cat, Const, Mux, Value, signed, unsigned
from amaranth.lib import data, enum, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from hmtx.model import fixed

__all__ = ["OperandA", "OperandB", "Control", "MacPort", "job_layout", "fetch_layout", "request_layout",
           "read_port", "write_port", "merge", "any_of", "step_lane", "is_element", "element", "beat",
           "requantize", "lane_bits"]


class OperandA(enum.Enum, shape=2):
    """The multiplier's first operand: a lane of the ``dat`` word, the query buffer, or the
    aligned weights."""
    DAT = 0
    QBUF = 1
    WM = 2


class OperandB(enum.Enum, shape=2):
    """The multiplier's second operand: a lane of the ``w`` word, of the ``key`` word or of the
    ``dat`` word."""
    W = 0
    KEY = 1
    DAT = 2


def lane_bits(n: int) -> int:
    """Bits of a lane index among ``n`` lanes (at least one)."""
    return max(1, (n - 1).bit_length())


def job_layout(e):
    """The operation and its operands as the sequencer holds them from start to done (``e``: the
    engine's :class:`~hmtx.hw.engine.EngineLayout`).

    ``write``/``attn``: the op (neither: RECALL); ``causal``: an ATTENTION with the causal mask;
    ``a``: the query row (0 for the other ops); ``keep_lim``: key ``b`` of a causal row is
    attended iff ``b <= keep_lim``; ``vexp0``: the input vector's exponent, ``vexp[0]``."""
    c = e.config
    return data.StructLayout({
        "write": 1, "attn": 1, "causal": 1,
        "slot": range(c.n_slots), "n_keys": range(e.KMAX + 1), "n_q": range(c.max_queries + 1),
        "a": range(c.max_queries + 1),
        "keep_lim": signed(12), "vexp0": signed(8),
    })


def fetch_layout(e):
    """What a unit asks of the multiplier in one cycle, the cycle it addresses the operands'
    memories: ``mul``, a beat of a dot product (``first`` starts the sum, ``last`` ends it) of
    operands ``a`` and ``b``; ``lane``/``klane``, the lane of the ``dat``/``w`` and ``key`` words
    to take (``lane`` also picks ``dat_lane`` without a beat); ``idx``, the address of the query
    buffer (``e.QD`` deep) and of the aligned weights."""
    return data.StructLayout({
        "mul": 1, "first": 1, "last": 1, "a": OperandA, "b": OperandB,
        "lane": lane_bits(e.P), "klane": lane_bits(e.KP),
        "idx": range(max(e.QD, e.KMAX)),
    })


def request_layout():
    """A requantization, ``shift_round_sat(x [* m], s, 32 if wide else 16)``: of the accumulator
    (``from_acc``) or of ``x``."""
    return data.StructLayout({"from_acc": 1, "x": signed(32), "m": unsigned(16), "use_m": 1,
                              "s": signed(14), "wide": 1})


class MacPort(wiring.Signature):
    """The shared multiplier as a unit sees it (``Out(MacPort(e))`` on the unit).

    ``fetch`` (:func:`fetch_layout`) every cycle; ``dat_lane``, the lane of the ``dat`` word
    ``fetch.lane`` picked, a cycle after the word's address; ``acc``, a finished dot product (one
    cycle, the cycle after its last product is added); ``rq``, a requantization (asked only
    while the unit holds the multiplier and the requantizer is idle: every unit waits for the
    result of one before it asks the next); ``y``, its result (one cycle)."""

    def __init__(self, e):
        super().__init__({
            "fetch": Out(fetch_layout(e)),
            "dat_lane": In(signed(8)),
            "acc": In(stream.Signature(signed(fixed.ACC_BITS), always_ready=True)),
            "rq": Out(stream.Signature(request_layout())),
            "y": In(stream.Signature(signed(32), always_ready=True)),
        })


#: The sequencer's handshake with a stage (``Out(Control)`` on the sequencer): ``start`` for one
#: cycle, then ``done`` for one cycle, in the stage's last cycle.
Control = wiring.Signature({"start": Out(1), "done": In(1)})


def read_port(depth, shape):
    """A synchronous read port of a ``depth`` x ``shape`` memory, as the memory sees it: ``In()``
    of it on a unit that addresses the memory."""
    return memory.ReadPort.Signature(addr_width=ceil_log2(depth), shape=shape)


def write_port(depth, shape, granularity=None):
    """A write port of a ``depth`` x ``shape`` memory, as the memory sees it."""
    return memory.WritePort.Signature(addr_width=ceil_log2(depth), shape=shape, granularity=granularity)


def any_of(*values):
    """The OR of ``values``: the one of them that is not 0."""
    return reduce(operator.or_, (Value.cast(v) for v in values))


def merge(m, sink, *sources):
    """Connect ``sources``, interfaces of one signature, to ``sink``, which has the flipped
    signature: each member the sink takes in is the OR of the sources' (:func:`any_of`), each
    member it gives out goes to every source.

    Only for units that take turns: a unit holds every member it drives at 0 while it is not
    the one using the sink (what an Amaranth ``comb`` assignment made only in some states does),
    so the OR is the active unit's value -- the multiplexer by state of one big FSM, spread over
    its units."""
    sink_members = list(sink.signature.flatten(sink))
    flat = [list(src.signature.flatten(src)) for src in sources]
    for src, members in zip(sources, flat):
        if [p for p, *_ in members] != [p for p, *_ in sink_members]:
            raise TypeError(f"{src!r} does not have the members of {sink!r}")
    for k, (path, member, value) in enumerate(sink_members):
        values = [members[k][2] for members in flat]
        if isinstance(value, Const):        # (``ready`` of an always-ready stream)
            continue
        if member.flow == In:
            m.d.comb += value.eq(any_of(*values))
        else:
            m.d.comb += [v.eq(value) for v in values]


def step_lane(P, word, lane):
    """Advance an element index kept as (word, lane) of ``P`` lanes."""
    return [lane.eq(Mux(lane == P - 1, 0, lane + 1)), word.eq(Mux(lane == P - 1, word + 1, word))]


def is_element(P, word, lane, n):
    """(word, lane) of ``P`` lanes is element ``n``."""
    return (word == n // P) & (lane == n % P)


def element(P, word, lane):
    """The element index of (word, lane): ``word * P + lane``, wiring alone when P is a power of 2."""
    if P & (P - 1) == 0:
        return Cat(lane[:(P - 1).bit_length()], word)
    return word * P + lane


# (Every field of a beat or a request is assigned, 0 where unused: a unit's output some of whose
# bits no statement drives becomes a constant-only ``always @*`` in the Verilog, which never runs
# -- Verilator's ALWNEVER.)

def beat(fetch, a, b, lane, first, last, klane=0, idx=0, mul=1):
    """Fetch operands ``a`` and ``b`` (lane ``lane``/``klane``, buffer entry ``idx``) for a beat of
    a dot product (``mul``; without it, only ``dat_lane``)."""
    return [fetch.mul.eq(mul), fetch.first.eq(first), fetch.last.eq(last), fetch.a.eq(a), fetch.b.eq(b),
            fetch.lane.eq(lane), fetch.klane.eq(klane), fetch.idx.eq(idx)]


def requantize(rq, s, wide=0, x=None, m=None):
    """Ask for ``shift_round_sat(x [* m], s, 32 if wide else 16)``; ``x`` None: the accumulator."""
    p = rq.payload
    return [rq.valid.eq(1), p.s.eq(s), p.wide.eq(wide), p.from_acc.eq(x is None), p.x.eq(0 if x is None else x),
            p.use_m.eq(m is not None), p.m.eq(0 if m is None else m)]

