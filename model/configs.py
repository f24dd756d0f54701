"""Named hardware/golden configurations.

One object describes a build of the recall engine: the model dimensions the golden model needs
(d, d_h, N, attention tile sizes) and the hardware-only parallelism P. The golden model, the
Amaranth generator, the simulators and the host all take their sizes from here.
"""

from dataclasses import asdict, dataclass, replace

__all__ = ["EngineConfig", "CONFIGS", "get_config"]


@dataclass(frozen=True)
class EngineConfig:
    """Sizes of one recall/attention engine.

    Parameters
    ----------
    name : str
        Configuration name.
    d : int
        Model hidden size (length of S_n, M_i and P_n).
    d_h : int
        Memory-search projection size (columns of W_q and W_k).
    n_slots : int
        N, the number of memory slots in the long-term cache ring.
    lanes : int
        P, the number of parallel multipliers in the MAC lane array (hardware only).
    head_dim : int
        Head size of the attention mode (Q, K, V rows).
    max_queries : int
        Largest number of query rows in one attention tile.
    max_keys : int
        Largest number of key/value rows in one attention tile.
    """

    name: str
    d: int
    d_h: int
    n_slots: int
    lanes: int
    head_dim: int
    max_queries: int
    max_keys: int

    def __post_init__(self):
        for field in ("d", "d_h", "n_slots", "lanes", "head_dim", "max_queries", "max_keys"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"config {self.name!r}: {field} must be a positive integer, got {value!r}")

    def with_(self, **changes) -> "EngineConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS = {
    # Small enough that Amaranth's Python simulator runs a whole command sequence in seconds.
    # d is deliberately not a power of two so partial lane blocks are always exercised.
    "tiny": EngineConfig("tiny", d=24, d_h=8, n_slots=4, lanes=4, head_dim=8, max_queries=4, max_keys=8),
    # SmolLM2-135M (d=576) with the shipped HMT checkpoint; sized for an LFE5U-85F.
    "smollm": EngineConfig("smollm", d=576, d_h=256, n_slots=64, lanes=64, head_dim=64, max_queries=16, max_keys=64),
    # Fits an iCE40 UP5K (8 SB_MAC16, 120 Kb EBR).
    "up5k": EngineConfig("up5k", d=64, d_h=32, n_slots=16, lanes=8, head_dim=16, max_queries=4, max_keys=16),
}


def get_config(name: str) -> EngineConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(CONFIGS)}") from None
