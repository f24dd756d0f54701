"""Compare device responses with the golden model, with a readable report on mismatch."""

__all__ = ["Scoreboard"]


class Scoreboard:
    """Counts checked transactions and fails on the first byte that differs from the model."""

    def __init__(self, log=None):
        self.log = log
        self.checked = 0
        self.bytes = 0

    def compare(self, what: str, expected: bytes, actual: bytes) -> None:
        expected, actual = bytes(expected), bytes(actual)
        if expected != actual:
            first = next((i for i, (e, a) in enumerate(zip(expected, actual)) if e != a),
                         min(len(expected), len(actual)))
            raise AssertionError(
                f"{what}: response differs from the golden model at byte {first} "
                f"(after {self.checked} matching transactions)\n"
                f"  expected ({len(expected)} B): {expected.hex(' ')}\n"
                f"  actual   ({len(actual)} B): {actual.hex(' ')}")
        self.checked += 1
        self.bytes += len(expected)

    def summary(self) -> str:
        return f"scoreboard: {self.checked} transactions, {self.bytes} response bytes matched the model"
