"""Top level of the hmtx engine: a byte stream of command frames in, response frames out.

(First integration stub: the signature is final; the command processor is being filled in.)
"""

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model.configs import EngineConfig

__all__ = ["HmtxTop"]


class HmtxTop(wiring.Component):
    """The hmtx recall/attention engine behind a framed byte-stream host interface.

    Members
    -------
    cmd : In(stream.Signature(8))
        Command frame bytes (see docs/protocol.md).
    rsp : Out(stream.Signature(8))
        Response frame bytes.
    """

    cmd: In(stream.Signature(8))
    rsp: Out(stream.Signature(8))

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise ValueError(f"HmtxTop needs an EngineConfig, got {type(config).__name__}")
        self.config = config
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.cmd.ready.eq(1)
        return m
