"""Block RAM and DSP floorplan for the engine on the LFE5U-85F, applied to the synthesized netlist.

At P=64 the engine's memories fill 198 of the 208 DP16KD, so they span the die whatever the
placer does; left to itself, nextpnr scatters the blocks of one lane over every block-RAM row,
and a lane's weight bytes, its data and key words and its multiplier end up tens of tiles apart
(docs/synthesis.md, "What still limits smollm"). This pass pins them instead (nextpnr's ``BEL``
attribute, its generic absolute placement constraint), so that everything one lane quad (four
int8 lanes, one 32-bit block-RAM column) reads sits together:

* the quad's blocks of every engine memory -- its column of each ``w`` row memory, its two
  16-bit columns of ``dat`` and the ``key`` columns of its lanes -- side by side in one
  block-RAM row (a column's lanes follow from its port width: Yosys maps ``dat`` as 1024 x 18);
* its four lane multipliers (``mac.prod<l>``) in the DSP row next to that block-RAM row, in the
  DSP tile nearest to the middle of the quad's blocks.

The spare block RAMs of each row are left in the middle of the die, for the small memories.

A lane group (two quads) stays in one half of a row, so the per-group control copies
(``hw/fanout.py``) and the per-cluster address copies (``hw/flow/netlist.py``, two columns per
cluster) each serve one compact region. Groups ``2i`` and ``2i + 1`` share row ``i`` (48
blocks at P=64): the key words interleave the halves of q in blocks of 4 lanes
(``Engine.key_place``), so key lanes ``4g .. 4g + 3`` (two key blocks) feed exactly lane group
``g``, and are filed with its first quad. Every other
cell (the small memories, the scalar multipliers, all logic) is left to the placer.

At smaller P each quad's column of ``w`` has more rows (36 at P=16, 72 at P=8), so two lane
groups no longer fit a block-RAM row; the quads are then laid one after the other along the
rows, each row filled to an equal share (P=32: two quads a row, P=16: one, P=8: each quad over
two rows), with the same left/right halves and spares in the middle.

The geometry below is the LFE5U-85F's as nextpnr names it, read from its placements here
(``NEXTPNR_BEL`` of placed DP16KD and MULT18X18D cells): 13 tile columns that each hold four
DP16KD per block-RAM row (tiles x, x+2, x+4, x+6, bels EBR0..3) and four MULT18X18D per DSP row
(tiles x, x+1, x+4, x+5, bels MULT18_0/1/4/5), block-RAM rows at y = 22, 46, 70, 82 and DSP rows
at y = 10, 34, 58: 13 x 4 x 4 = 208 DP16KD and 13 x 4 x 3 = 156 MULT18X18D, the part's counts.
"""

import re
from collections import defaultdict

from ..engine import key_block_lanes
from .netlist import bram_columns, top_module

__all__ = ["ECP5_85K", "floorplan_engine", "region_of_bel"]


class _Ecp5Geometry:
    def __init__(self, columns, bram_rows, dsp_rows, dsp_row_of):
        self.columns = columns            # x of each tile column's first tile
        self.bram_rows = bram_rows
        self.dsp_rows = dsp_rows
        self.dsp_row_of = dsp_row_of      # block-RAM row y -> nearest DSP row y

    @property
    def brams_per_row(self):
        return 4 * len(self.columns)

    def bram_bel(self, row_y, pos):
        col, k = divmod(pos, 4)
        return f"X{self.columns[col] + 2 * k}/Y{row_y}/EBR{k}"

    def dsp_bel(self, row_y, col, k):
        dx = (0, 1, 4, 5)[k]
        return f"X{self.columns[col] + dx}/Y{row_y}/MULT18_{dx}"


ECP5_85K = _Ecp5Geometry(
    columns=(4, 13, 22, 31, 40, 49, 58, 69, 78, 87, 96, 105, 114),
    bram_rows=(22, 46, 70, 82),
    dsp_rows=(10, 34, 58),
    # y=82 has no DSP row above it; 58 is the nearest (24 tiles)
    dsp_row_of={22: 10, 46: 34, 70: 58, 82: 58},
)

# engine memories whose block-RAM columns belong to lanes, and their lane width in bits
_LANE_MEMORIES = (
    (re.compile(r"\.engine\.w\d+$"), 8),
    (re.compile(r"\.engine\.dat$"), 8),
    (re.compile(r"\.engine\.key$"), 16),
)
_LANE_MULT = re.compile(r"\.engine\.mac\.prod(\d+)_")
QUAD = 4          # int8 lanes per 32-bit block-RAM column
GROUP_QUADS = 2   # quads per lane group (hw/engine.py's lane groups of 8)


def floorplan_engine(netlist: dict, geometry=ECP5_85K) -> dict:
    """Set ``BEL`` on the engine's lane block RAMs and lane multipliers in ``netlist`` (Yosys
    JSON, changed in place). Returns counts for the log; raises ValueError (changing nothing)
    if the blocks do not fit the rows this way."""
    columns = bram_columns(netlist)
    cells = top_module(netlist)["cells"]
    mults = {}
    for name, c in cells.items():
        m = _LANE_MULT.search(name) if c["type"] == "MULT18X18D" else None
        if m:
            lane = int(m.group(1))
            if lane in mults:
                raise ValueError(f"floorplan: two multipliers for lane {lane}: {mults[lane]}, {name}")
            mults[lane] = name
    P = max(mults) + 1 if mults else 0
    quads = defaultdict(list)                         # quad -> [block RAM cell names]
    for name in sorted(columns, key=lambda n: (columns[n][0], _natural(n))):
        mem, col, _ = columns[name]
        for pattern, lane_bits in _LANE_MEMORIES:
            if pattern.search(mem):
                lane = col * _data_bits(cells[name]) // lane_bits
                if lane_bits == 16 and P:
                    # a key lane serves two q lanes of one lane group (Engine.key_place):
                    # file it with the first
                    B = key_block_lanes(P)
                    lane = 2 * B * (lane // B) + lane % B
                quads[lane // QUAD].append(name)
                break
    if not quads:
        return {"brams": 0, "mults": 0, "quads": 0}

    try:
        spans, placement = _rows_by_lane_group(quads, geometry)
    except _RowOverflow as overflow:
        # a quad's w column has more rows than P=64's nine (72, 36 and 18 at P = 8, 16, 32):
        # the lane groups do not fit a row each, so the quads are laid along the rows instead
        total = sum(len(v) for v in quads.values())
        capacity = geometry.brams_per_row * len(geometry.bram_rows)
        if total > capacity:
            raise ValueError(f"floorplan: the engine's lane memories need {total} block RAMs; the "
                             f"rows hold {capacity} ({overflow})") from None
        spans, placement = _rows_in_sequence(quads, geometry)

    # each quad's four multipliers: a whole DSP tile column in the DSP row by its block-RAM row,
    # the free one nearest to the middle of its blocks
    taken = set()
    mult_bels = {}
    for q in sorted(spans):
        lanes = [l for l in range(q * QUAD, (q + 1) * QUAD) if l in mults]
        if not lanes:
            continue
        y, lo, hi = spans[q]
        dsp_y = geometry.dsp_row_of[y]
        mid = (lo + hi - 1) / 2 / 4
        free = [c for c in range(len(geometry.columns)) if (dsp_y, c) not in taken]
        if not free:
            raise ValueError(f"floorplan: DSP row y={dsp_y} is full")
        col = min(free, key=lambda c: (abs(c - mid), c))
        taken.add((dsp_y, col))
        for k, lane in enumerate(lanes):
            mult_bels[mults[lane]] = geometry.dsp_bel(dsp_y, col, k)

    for name, bel in {**placement, **mult_bels}.items():
        cells[name].setdefault("attributes", {})["BEL"] = bel
    return {"brams": len(placement), "mults": len(mult_bels), "quads": len(spans)}


class _RowOverflow(ValueError):
    pass


def _rows_by_lane_group(quads, geometry):
    """P=64's layout: lane groups 2i and 2i + 1 in block-RAM row i (mod the rows), their quads
    one after the other along it, the first group from the left end and the second ending at
    the right end, so the spare blocks stay in the middle of the die, where the placer can put
    the small memories (scores, probabilities, FIFOs) next to the central logic that uses them.
    Returns ({quad: (row y, first, end position)}, {cell: bel}); raises _RowOverflow."""
    rows = geometry.bram_rows
    row_quads = defaultdict(list)
    for q in sorted(quads):
        row_quads[rows[(q // (2 * GROUP_QUADS)) % len(rows)]].append(q)
    placement, spans = {}, {}
    for y, qs in row_quads.items():
        used = sum(len(quads[q]) for q in qs)
        if used > geometry.brams_per_row:
            raise _RowOverflow(f"floorplan: block-RAM row y={y} would need {used} blocks "
                               f"(quads {qs}); it has {geometry.brams_per_row}")
        left = [q for q in qs if (q // GROUP_QUADS) % 2 == 0]
        right = [q for q in qs if (q // GROUP_QUADS) % 2 == 1]
        pos = 0
        for q in left + right:
            if q == (right or [None])[0]:
                pos = geometry.brams_per_row - sum(len(quads[r]) for r in right)
            spans[q] = (y, pos, pos + len(quads[q]))
            for name in quads[q]:
                placement[name] = geometry.bram_bel(y, pos)
                pos += 1
    return spans, placement


def _rows_in_sequence(quads, geometry):
    """Smaller P: the quads one after the other through the rows, each row filled to an equal
    share of the blocks (a quad longer than the share continues in the next row, which is the
    next band of the die); in each row the first half of its pieces from the left end and the
    rest ending at the right end, the spare blocks in the middle as in :func:`_rows_by_lane_group`.
    A quad's span (for its multipliers) is its longest piece. P=16: one quad per row; P=32: two;
    P=8: each quad over two rows."""
    rows = geometry.bram_rows
    total = sum(len(v) for v in quads.values())
    share = -(-total // len(rows))
    pieces = defaultdict(list)                 # row y -> [(quad, [cells])]
    r, used = 0, 0
    for q in sorted(quads):
        cells = list(quads[q])
        while cells:
            take = min(len(cells), share - used)
            pieces[rows[r]].append((q, cells[:take]))
            cells, used = cells[take:], used + take
            if used == share and r + 1 < len(rows):
                r, used = r + 1, 0
    placement, spans = {}, {}
    for y, row in pieces.items():
        half = -(-len(row) // 2)
        pos = 0
        for k, (q, cells) in enumerate(row):
            if k == half:
                pos = geometry.brams_per_row - sum(len(c) for _, c in row[half:])
            if q not in spans or len(cells) > spans[q][2] - spans[q][1]:
                spans[q] = (y, pos, pos + len(cells))
            for name in cells:
                placement[name] = geometry.bram_bel(y, pos)
                pos += 1
    return spans, placement


def region_of_bel(bel: str, geometry=ECP5_85K):
    """The region of the die a bel lies in: the left or right half (a lane group's half of a
    block-RAM row) of a band of 24 tile rows (one block-RAM row each), for
    hmtx.hw.flow.netlist.split_by_region."""
    m = re.match(r"X(\d+)/Y(\d+)/", bel)
    if not m:
        raise ValueError(f"floorplan: not an ECP5 bel name: {bel!r}")
    x, y = int(m.group(1)), int(m.group(2))
    middle = geometry.columns[len(geometry.columns) // 2] + 4     # x of block-RAM position 26
    return int(x >= middle), y // 24


def _data_bits(cell):
    """Data bits per word of a DP16KD: its port width without the parity bits (a 36-bit port
    holds four bytes, an 18-bit port two)."""
    width = int(str(cell["parameters"]["DATA_WIDTH_A"]), 2)
    return width * 8 // 9 if width >= 9 else width


def _natural(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
