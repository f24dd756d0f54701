# The engines HmtxTop can be built with are a contract of the wire protocol (INFO reports the
# kind): defined in hmtx.model.protocol, re-exported here for the hardware's command lines.
from hmtx.model.protocol import ENGINES

__all__ = ["ENGINES"]
