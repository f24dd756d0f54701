"""The types on the wires between the parts of the top (hw/top.py): the protocol's opcodes and
status codes as Amaranth enums, the command header's layout, and the parts of the engine's
signature that each part of the top drives."""

import types

from amaranth.hdl import signed
from amaranth.lib import data, enum, wiring

from hmtx.model.protocol import Op as WireOp, Status as WireStatus

__all__ = ["Opcode", "Status", "Header", "ENGINE_CONTROL", "ENGINE_WRITES", "ENGINE_READS",
           "engine_part", "engine_part_of"]


def _wire_enum(name, source):
    # the numbers come from the protocol's executable form (model/protocol.py), never from here
    def body(namespace):
        for member in source:
            namespace[member.name] = int(member)
    return types.new_class(name, (enum.Enum,), {"shape": 8}, body)


#: The opcodes of docs/protocol.md section 3, one byte. Which of them a top decodes is its
#: protocol's (``protocol.gateware_version(engine, contract)``, ``ops_of``: the serial engine has
#: no ATTN_PASS and answers 0x21 BAD_OPCODE; hw/top.py ``opcodes``). (A register that holds a
#: received opcode stays a plain byte: it holds unknown opcodes too, and 0 before any.)
Opcode = _wire_enum("Opcode", WireOp)
#: The status codes of docs/protocol.md section 4, one byte.
Status = _wire_enum("Status", WireStatus)

#: Body bytes 1..7 of a command, as each opcode reads them (docs/protocol.md section 3): the
#: LOAD_WEIGHTS header, the ATTENTION and ATTN_PASS headers and READ_SLOT's slot; ``bytes`` is how
#: the parser fills them, one per body byte. (WRITE_MEMORY/RECALL payloads go straight to the
#: engine.) ATTN_PASS's flags as model/protocol.py's ATTN_* bits.
Header = data.UnionLayout({
    "bytes": data.ArrayLayout(8, 7),
    "weights": data.StructLayout({"matrix": 8, "exp": signed(8), "shift": 8, "row_offset": 16, "rows": 16}),
    "attention": data.StructLayout({"n_q": 8, "n_k": 8,
                                    "flags": data.StructLayout({"causal": 1, "reserved": 7})}),
    "attn_pass": data.StructLayout({"n_q": 8, "n_k": 8,
                                    "flags": data.StructLayout({"causal": 1, "pass_": 2, "q": 1, "first": 1,
                                                                "last": 1, "reserved": 2}),
                                    "diag": signed(16)}),
    "read_slot": data.StructLayout({"slot": 16}),
})

# The members of EngineSignature (hw/engine.py), by the part of the top that drives them: the
# command processor starts operations, the frame parser writes the payload into the engine's
# memories, the response generator reads the results.
# (ATTN_PASS's members are in every engine's signature; an engine without it leaves them
# unconnected, and these parts then drive them 0: see hw/top.py)
ENGINE_CONTROL = ("start", "op", "slot", "n_keys", "n_q", "causal", "wq_exp", "wk_exp", "wq_shift",
                  "wk_shift", "busy", "done", "apass", "afirst", "alast", "diag")
ENGINE_WRITES = ("wr_dat_addr", "wr_dat_data", "wr_dat_en", "wr_w_addr", "wr_w_data", "wr_w_en",
                 "wr_vexp_addr", "wr_vexp_data", "wr_vexp_en", "wr_rs_addr", "wr_rs_byte", "wr_rs_data",
                 "wr_rs_en")
ENGINE_READS = ("rd_dat_addr", "rd_dat_data", "rd_key_addr", "rd_key_data", "rd_pm_addr", "rd_pm_data",
                "rd_mexp_addr", "rd_mexp_data", "rd_kexp_addr", "rd_kexp_data", "rd_oexp_addr",
                "rd_oexp_data", "rd_rs_addr", "rd_rs_data")


def engine_part(engine, names) -> wiring.Signature:
    """The members ``names`` of ``engine``'s signature (an :class:`~hmtx.hw.engine.EngineSignature`),
    as a signature of their own, seen from the engine: a part of the top takes it as ``In(...)``."""
    members = engine.signature.members
    return wiring.Signature({name: members[name] for name in names})


def engine_part_of(engine, names):
    """The engine's own signals of those members, as an interface that ``wiring.connect`` joins
    with a part's port. Every member of the engine's signature must be in exactly one part."""
    parts = ENGINE_CONTROL + ENGINE_WRITES + ENGINE_READS
    if sorted(parts) != sorted(engine.signature.members.keys()):
        raise ValueError("the engine's signature and the top's parts of it disagree: "
                         f"{sorted(set(parts) ^ set(engine.signature.members.keys()))}")
    return types.SimpleNamespace(signature=engine_part(engine, names),
                                 **{name: getattr(engine, name) for name in names})
