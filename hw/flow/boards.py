"""The boards ``hmtx synth`` builds for, and the top it builds for each.

A :class:`Board` is build knowledge: the amaranth-boards platform, the FPGA family, the config
and clock a build uses unless told, nextpnr's cell type for each resource of the report and
the placement seeds to try. :func:`board_top` puts a core behind the UART bridge
(:class:`~hmtx.hw.board.BoardTop`, the gateware) at the board's clock; :func:`~hmtx.hw.flow.synth.synthesize`
and the virtual board (hmtx.sim.board_sim) both build their top with it.
"""

from dataclasses import dataclass

from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from ..board import DEFAULT_BAUD, BoardTop

__all__ = ["BOARDS", "Board", "board_top", "get_board"]


class _ULX3S85F(ULX3S_85F_Platform):
    # amaranth-boards lists openFPGALoader as required even for a build that never programs;
    # programming is a separate step (`openFPGALoader -b ulx3s top.bit`), so only build tools.
    @property
    def required_tools(self):
        return [t for t in super().required_tools if t != "openFPGALoader"]


@dataclass(frozen=True)
class Board:
    name: str
    platform: type
    family: str              # "ecp5" or "ice40"
    default_config: str
    target_mhz: float        # system clock the PLL makes by default
    bitstream_ext: str
    # nextpnr utilisation cell types for each reported resource
    cells: dict
    default_engine: str = "lanes"   # HmtxTop's engine `hmtx synth` builds unless told (hw/top.py)
    # nextpnr placement seeds `hmtx synth` tries unless told (the best is kept): on the 85F the
    # smollm build's Fmax moves by several MHz with the seed around its 100 MHz target (seeds
    # 1/2/3 routed at 99.61/99.75/106.10 MHz at cf6ee2a), so the default build is the best of three
    default_seeds: str = "1"


BOARDS = {
    "ulx3s-85f": Board("ulx3s-85f", _ULX3S85F, "ecp5", "smollm", 100.0, "bit",
                       {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "dsp": "MULT18X18D",
                        "bram": "DP16KD"}, default_seeds="1,2,3"),
    "icebreaker": Board("icebreaker", ICEBreakerPlatform, "ice40", "up5k", 24.0, "bin",
                        {"lut": "ICESTORM_LC", "ff": "ICESTORM_LC", "dsp": "ICESTORM_DSP",
                         "bram": "ICESTORM_RAM", "spram": "ICESTORM_SPRAM"}, "serial"),
}


def get_board(board):
    """The :class:`Board` named ``board``; ValueError naming the known ones otherwise."""
    if board not in BOARDS:
        raise ValueError(f"unknown board {board!r}; choose one of {', '.join(BOARDS)}")
    return BOARDS[board]


def board_top(board, core, *, sync_mhz=None, baud=DEFAULT_BAUD, platform=None):
    """The :class:`~hmtx.hw.board.BoardTop` that :func:`~hmtx.hw.flow.synth.synthesize` builds
    for ``board``: ``core`` behind the UART bridge at the board's clock (``sync_mhz``, default
    the board's target, as the PLL makes it) and ``baud``. The virtual board
    (hmtx.sim.board_sim) simulates its ``bridge``, so the two cannot drift apart."""
    spec = get_board(board)
    platform = spec.platform() if platform is None else platform
    return BoardTop(core, family=spec.family, ref_mhz=platform.default_clk_frequency / 1e6,
                    sync_mhz=spec.target_mhz if sync_mhz is None else sync_mhz, baud=baud)
