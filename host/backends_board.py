"""The ``board-sim`` backend: the virtual board (:mod:`hmtx.sim.board_sim`, the board top that
``hmtx synth`` builds, UART included, under Verilator behind a pseudo-terminal), started for the
connection and reached through the unchanged :class:`~hmtx.host.transport.SerialTransport`."""

from hmtx.model.configs import EngineConfig

from .transport import DEFAULT_BAUD, SerialTransport, Transport

__all__ = ["BoardSimTransport", "board_for_config", "parse_board_sim_spec"]


def board_for_config(config: EngineConfig) -> str:
    """The board a config is built for by default (the one whose default config it is; else the
    ULX3S 85F)."""
    from hmtx.hw.flow.boards import BOARDS
    for name, b in sorted(BOARDS.items()):
        if b.default_config == config.name:
            return name
    return "ulx3s-85f"


def parse_board_sim_spec(spec: str, config: EngineConfig) -> tuple[EngineConfig, int]:
    """``board-sim[:CONFIG][@BAUD]`` -> (engine config, baud). Without CONFIG: ``config`` (the
    one the host expects); BAUD defaults to :data:`hmtx.host.transport.DEFAULT_BAUD`."""
    from hmtx.model.configs import get_config

    rest = spec[len("board-sim"):]
    baud = DEFAULT_BAUD
    if "@" in rest:
        rest, _, b = rest.rpartition("@")
        try:
            baud = int(b)
        except ValueError:
            raise ValueError(f"device {spec!r}: baud rate {b!r} is not an integer") from None
    if rest and not rest.startswith(":"):
        raise ValueError(f"unknown device {spec!r}; use board-sim[:CONFIG][@BAUD]")
    name = rest[1:]
    return (get_config(name) if name else config), baud


class BoardSimTransport(Transport):
    """The virtual board (:mod:`hmtx.sim.board_sim`) started for this connection, reached through
    the unchanged :class:`~hmtx.host.transport.SerialTransport` on its pseudo-terminal.

    ``stats()`` gives the board's counters (simulated cycles, i.e. wire + device time, bytes and
    frames each way); ``close()`` closes the port and stops the board."""

    def __init__(self, config: EngineConfig, *, baud: int | None = None, board: str | None = None,
                 engine: str | None = None, contract: int = 1, log=None):
        from hmtx.sim.board_sim import BoardSim, board_design

        baud = DEFAULT_BAUD if baud is None else baud
        self.design = board_design(board or board_for_config(config), config, engine=engine, baud=baud,
                                   contract=contract)
        self.engine = self.design.engine
        self.board = BoardSim(self.design, log=log)
        try:
            self.serial = SerialTransport(self.board.port, baud)
        except BaseException:
            self.board.close()
            raise
        self.name = f"board-sim:{config.name}"
        self.port = self.board.port

    def write(self, data: bytes) -> None:
        if not self.board.alive():
            raise ConnectionError(f"{self.name}: the virtual board exited:\n{self.board.log_tail()}")
        self.serial.write(data)

    def read(self, timeout: float) -> bytes:
        data = self.serial.read(timeout)
        if not data and not self.board.alive():
            raise ConnectionError(f"{self.name}: the virtual board exited:\n{self.board.log_tail()}")
        return data

    def stats(self) -> dict:
        return self.board.stats()

    def close(self) -> None:
        try:
            self.serial.close()
        finally:
            self.board.close()
