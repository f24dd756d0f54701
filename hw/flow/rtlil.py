"""Fix-ups of Amaranth's RTLIL before Yosys synthesizes it.

Read/write collisions. Amaranth writes every synchronous read port (``$memrd_v2``) with
``COLLISION_X_MASK = 0``: a read of the address being written in the same cycle must return the
old word. An ECP5 block RAM does not guarantee that between its two ports, so Yosys's
``memory_libmap`` wraps such a memory in emulation logic -- a registered address comparison per
read port and a multiplexer on every output bit (``emulate_read_first`` in the Yosys log). The
``no_rw_check`` memory attribute that says a design never needs it is only honoured by
``memory_dff`` when it builds a synchronous port out of an asynchronous one, which Amaranth's
ports already are. :func:`collisions_dont_care` therefore sets ``COLLISION_X_MASK`` to all ones
on the read ports of every memory that carries ``no_rw_check`` (hw/engine.py marks its block
RAMs; tests/test_hw_engine.py answers every collision with random bits and still matches the
golden model).
"""

import re

__all__ = ["collisions_dont_care"]

_MEMORY = re.compile(r"^\s*memory\b.*\s(\\\S+)\s*$")
_PARAM = re.compile(r"^(\s*parameter \\COLLISION_X_MASK )(\d+)'([01]+)\s*$")
_MEMID = re.compile(r'^\s*parameter \\MEMID "\\\\(.*)"\s*$')


def collisions_dont_care(text: str) -> tuple[str, int]:
    """``text`` (RTLIL) with don't-care collisions on the read ports of ``no_rw_check``
    memories, and how many read ports were changed."""
    lines = text.split("\n")
    out, changed, i = [], 0, 0
    while i < len(lines):
        if lines[i].startswith("module "):
            j = i
            while j < len(lines) and lines[j] != "end":
                j += 1
            block, n = _patch_module(lines[i:j + 1])
            out.extend(block)
            changed += n
            i = j + 1
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out), changed


def _patch_module(lines):
    """One module's lines: the memories marked no_rw_check (the attribute lines just above
    their ``memory`` line), then those memories' read ports."""
    marked, pending = set(), False
    for line in lines:
        s = line.strip()
        if s == "attribute \\no_rw_check 1":
            pending = True
        elif s.startswith("attribute "):
            continue
        else:
            m = _MEMORY.match(line)
            if m and pending:
                marked.add(m.group(1)[1:])
            pending = False
    if not marked:
        return lines, 0
    out, changed, k = [], 0, 0
    while k < len(lines):
        line = lines[k]
        if line.strip().startswith("cell $memrd_v2 "):
            end = k
            while lines[end].strip() != "end":
                end += 1
            cell = lines[k:end + 1]
            memid = next((m.group(1) for m in map(_MEMID.match, cell) if m), None)
            if memid in marked:
                for n, c in enumerate(cell):
                    p = _PARAM.match(c)
                    if p:
                        width = int(p.group(2))
                        cell[n] = f"{p.group(1)}{width}'{'1' * width}"
                        changed += 1
            out.extend(cell)
            k = end + 1
            continue
        out.append(line)
        k += 1
    return out, changed
