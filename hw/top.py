"""Top level of the hmtx engine: command frames in, response frames out (docs/protocol.md)."""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model.configs import EngineConfig
from hmtx.model.protocol import Status as WireStatus, gateware_version, ops_of, takes_attn_pass

from . import ENGINES
from .command import CommandProcessor
from .engine import Engine
from .frame_parser import FrameParser
from .response import ResponseGenerator
from .slip import SlipDecoder, SlipEncoder
from .wire import ENGINE_CONTROL, ENGINE_READS, ENGINE_WRITES, engine_part_of

__all__ = ["HmtxTop", "CommandGate", "OPCODES", "STATUS", "ENGINES", "engine_class", "opcodes"]


def opcodes(engine: str = "lanes", contract: int = 1) -> dict:
    """The opcodes that ``HmtxTop(config, engine, contract)`` decodes, by name: those of its
    protocol, ``protocol.gateware_version(engine, contract)`` (the serial engine's has no
    ATTN_PASS)."""
    return {op.name: int(op) for op in ops_of(gateware_version(engine, contract))}


# The wire constants exist once, in the protocol's executable form (model/protocol.py); the
# tests compare this RTL with the golden device byte for byte. (The gateware's enums of them:
# hw/wire.py.) OPCODES: the lane engine's top's.
OPCODES = opcodes()
STATUS = {st.name: int(st) for st in WireStatus}


def engine_class(kind: str):
    """The engine class of ``kind`` (one of :data:`ENGINES`): Engine for "lanes", SerialEngine
    for "serial"."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
    if kind == "serial":
        # imported only when asked for: the ECP5 builds and their tests never need it
        from .serial_engine import SerialEngine
        return SerialEngine
    return Engine


class CommandGate(wiring.Component):
    """The command bytes' way in: one register, which takes a byte only while ``open``.

    ``i.ready`` then depends on flip-flops and ``open`` only -- not on the byte's value, as the
    SLIP decoder's ready does. A byte is passed on the cycle after it was taken; the next one
    is taken the cycle after the decoder took it.

    Members
    -------
    open : In(1)
    i : In(stream.Signature(8))
    o : Out(stream.Signature(8))
    """

    open: In(1)
    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        in_valid = Signal()
        in_byte = Signal(8)
        m.d.comb += [self.i.ready.eq(self.open & ~in_valid), self.o.valid.eq(in_valid),
                     self.o.payload.eq(in_byte)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [in_byte.eq(self.i.payload), in_valid.eq(1)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += in_valid.eq(0)
        return m


class HmtxTop(wiring.Component):
    """The hmtx recall/attention engine behind a framed byte-stream host interface.

    The parts, in the order the bytes flow::

        cmd -> CommandGate -> SlipDecoder -> FrameParser --frame--> CommandProcessor
                                                                           | respond
        rsp <- SlipEncoder <---------------------------------------- ResponseGenerator

    and the engine (:class:`~hmtx.hw.engine.EngineSignature`) beside them: its memories written
    by the frame parser, its operations started by the command processor, its results read by
    the response generator -- each through its part of the signature (hw/wire.py). The gate
    is open while the command processor receives.

    Bytes from ``cmd`` are taken, registered, un-SLIPped and registered again while the
    command processor receives, one per two cycles: the :class:`~hmtx.hw.frame_parser.FrameParser`
    captures the header, runs the CRC over the body and writes the payload straight to its
    place in the engine's memories (vector mantissas to P-byte words of ``dat``, exponents to
    ``vexp``, weight mantissas to ``w`` at word ``j*ceil(d/P) + c//P``). At END the
    :class:`~hmtx.hw.command.CommandProcessor` judges the frame in the documented order,
    updates the device state or starts the engine, and has the
    :class:`~hmtx.hw.response.ResponseGenerator` send the response from registers and the
    engine's result memories, CRC'd on the fly and SLIP-encoded onto ``rsp``. ``cmd`` is not
    ready while a command executes or its response is being sent (protocol: stop-and-wait).

    ``engine`` picks the datapath behind the same interface: ``"lanes"`` (default), the
    pipelined P-lane :class:`~hmtx.hw.engine.Engine` (ECP5), or ``"serial"``,
    :class:`~hmtx.hw.serial_engine.SerialEngine` with one time-shared multiplier (iCE40 UP5K).
    Both give the same responses, CYCLES' counts aside, except that only the lane engine has
    ATTN_PASS: each top speaks ``protocol.gateware_version(engine, contract)`` (``version``),
    1.3 / 2.2 with the lane engine, 1.2 / 2.1 with the serial one (which answers 0x21
    BAD_OPCODE). ``engine_kind`` keeps the choice for reports.

    ``contract`` (1 or 2, docs/arithmetic.md section 10) is the arithmetic the engine computes
    and so the protocol major version the device speaks (docs/protocol.md section 8): contract 2's
    WRITE_MEMORY needs both weights and stores the folded key K'_i, its RECALL never reads W_q,
    its READ_SLOT returns K'_i, and INFO reports 2.x.

    Members
    -------
    cmd : In(stream.Signature(8))
        Command frame bytes.
    rsp : Out(stream.Signature(8))
        Response frame bytes.
    """

    cmd: In(stream.Signature(8))
    rsp: Out(stream.Signature(8))

    def __init__(self, config: EngineConfig, engine: str = "lanes", contract: int = 1):
        if not isinstance(config, EngineConfig):
            raise ValueError(f"HmtxTop needs an EngineConfig, got {type(config).__name__}")
        for name in ("d", "d_h", "n_slots", "lanes", "head_dim", "max_queries", "max_keys"):
            if getattr(config, name) > 0xFFFF:
                raise ValueError(f"config {config.name!r}: {name} does not fit the protocol's u16")
        if config.max_queries > 255 or config.max_keys > 255:
            raise ValueError(f"config {config.name!r}: tile sizes must fit the protocol's u8 header")
        self.config = config
        # (ValueError for an unknown kind or contract)
        self.engine = engine_class(engine)(config, contract=contract)
        self.engine_kind = engine
        self.contract = contract
        self.version = gateware_version(engine, contract)
        if takes_attn_pass(self.version) != self.engine.attn_pass:
            raise ValueError(f"protocol {self.version} and the {engine} engine disagree about ATTN_PASS")
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        eng = m.submodules.engine = self.engine
        m.submodules.gate = gate = CommandGate()
        m.submodules.dec = dec = SlipDecoder()
        m.submodules.parser = parser = FrameParser(eng, self.version)
        m.submodules.command = command = CommandProcessor(eng, self.version)
        m.submodules.response = response = ResponseGenerator(eng, self.engine_kind, self.version)
        m.submodules.enc = enc = SlipEncoder()

        wiring.connect(m, wiring.flipped(self.cmd), gate.i)
        m.d.comb += gate.open.eq(command.receiving)
        wiring.connect(m, gate.o, dec.i)
        wiring.connect(m, dec.o, parser.i)
        wiring.connect(m, parser.frame, command.frame)
        wiring.connect(m, command.respond, response.request)
        wiring.connect(m, response.o, enc.i)
        wiring.connect(m, enc.o, wiring.flipped(self.rsp))

        wiring.connect(m, parser.engine, engine_part_of(eng, ENGINE_WRITES))
        wiring.connect(m, command.engine, engine_part_of(eng, ENGINE_CONTROL))
        wiring.connect(m, response.engine, engine_part_of(eng, ENGINE_READS))
        return m
