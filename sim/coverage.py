"""Functional coverage: counts of named bins on a few axes and of their cross product."""

import itertools
import json

__all__ = ["Coverage"]


class Coverage:
    """Cross coverage over named axes.

    >>> cov = Coverage("ops", op=["READ", "WRITE"], state=["empty", "full"])
    >>> cov.sample(op="READ", state="empty")

    Every sample must name every axis with one of its declared bins, so a typo cannot silently
    create a bin that is never reported as a hole.
    """

    def __init__(self, name: str, **axes):
        if not axes:
            raise ValueError("coverage needs at least one axis")
        self.name = name
        self.axes = {k: list(v) for k, v in axes.items()}
        self.hits = {key: 0 for key in itertools.product(*self.axes.values())}

    def sample(self, **values) -> None:
        if set(values) != set(self.axes):
            raise ValueError(f"coverage {self.name}: sample names {sorted(values)}, axes are {sorted(self.axes)}")
        for axis, value in values.items():
            if value not in self.axes[axis]:
                raise ValueError(f"coverage {self.name}: {value!r} is not a bin of axis {axis!r} ({self.axes[axis]})")
        self.hits[tuple(values[a] for a in self.axes)] += 1

    def merge(self, other: "Coverage") -> None:
        if other.axes != self.axes:
            raise ValueError(f"cannot merge coverage {other.name} into {self.name}: different axes")
        for key, n in other.hits.items():
            self.hits[key] += n

    def holes(self, *axes) -> list:
        """Unhit bins of the cross of ``axes`` (all axes when none are given)."""
        axes = axes or tuple(self.axes)
        idx = [list(self.axes).index(a) for a in axes]
        seen = {tuple(key[i] for i in idx) for key, n in self.hits.items() if n}
        return [combo for combo in itertools.product(*(self.axes[a] for a in axes)) if combo not in seen]

    def percent(self, *axes) -> float:
        axes = axes or tuple(self.axes)
        total = 1
        for a in axes:
            total *= len(self.axes[a])
        return 100.0 * (total - len(self.holes(*axes))) / total

    def summary(self) -> str:
        """A table: one row per combination of all axes but the last, one column per bin of the last."""
        names = list(self.axes)
        rows, col = names[:-1], names[-1]
        head = [" × ".join(rows) or "-"] + self.axes[col]
        lines = []
        for key in itertools.product(*(self.axes[a] for a in rows)):
            lines.append([" × ".join(key) or "all"] + [str(self.hits[key + (c,)]) for c in self.axes[col]])
        widths = [max(len(r[i]) for r in [head] + lines) for i in range(len(head))]
        fmt = lambda r: "  ".join(s.rjust(w) if i else s.ljust(w) for i, (s, w) in enumerate(zip(r, widths)))
        out = [f"functional coverage {self.name}: {self.percent():.0f}% of {len(self.hits)} cross bins "
               f"({' × '.join(names)})", fmt(head)] + [fmt(r) for r in lines]
        holes = self.holes()
        if holes:
            shown = ", ".join("/".join(h) for h in holes[:12])
            out.append(f"holes ({len(holes)}): {shown}{' …' if len(holes) > 12 else ''}")
        return "\n".join(out)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "axes": self.axes,
                           "hits": [[list(k), n] for k, n in self.hits.items()]})

    @classmethod
    def from_json(cls, text: str) -> "Coverage":
        d = json.loads(text)
        cov = cls(d["name"], **d["axes"])
        for key, n in d["hits"]:
            cov.hits[tuple(key)] = n
        return cov
