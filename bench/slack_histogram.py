"""Summarise nextpnr's slack histogram(s) in a log (``top.tim``): the Fmax lines and how many
endpoints fall short of the clock, and by how much.

    python bench/slack_histogram.py build/synth/ulx3s-85f-smollm-p64/top.tim [more logs]

nextpnr prints one histogram after placement (from its delay *estimates*) and, if routing
finishes, none after it; the bins are fixed-width and the bars are drawn in units of N
endpoints ('*') with '+' for a partial unit, so the counts here are approximate (a '+' counts as
half a unit, and a bin counts as "worse than X" only when its upper edge is at or below X).
"""

import re
import sys

__all__ = ["summarise"]

_HIST = re.compile(r"Slack histogram:\nInfo:  legend: \* represents (\d+) endpoint")
_BIN = re.compile(r"\[\s*(-?\d+),\s*(-?\d+)\) \|(\**)(\+?)")
_FMAX = re.compile(r"Max frequency for clock '[^']+': ([\d.]+) MHz")


def summarise(text: str) -> dict:
    m = _HIST.search(text)
    if not m:
        raise ValueError("no 'Slack histogram' in this log (was it written by nextpnr with a clock constraint?)")
    unit = int(m.group(1))
    body = text[m.end():].split("Info: Checksum")[0]
    bins = [(int(lo), int(hi), len(stars) * unit + (unit // 2 if plus else 0))
            for lo, hi, stars, plus in _BIN.findall(body)]
    failing = sum(c if hi <= 0 else c * -lo / (hi - lo) for lo, hi, c in bins if lo < 0)
    return {"fmax_mhz": [float(f) for f in _FMAX.findall(text)],
            "endpoints": sum(c for _, _, c in bins),
            "failing": round(failing),
            "short_by_2ns": sum(c for _, hi, c in bins if hi <= -2000),
            "short_by_4ns": sum(c for _, hi, c in bins if hi <= -4000),
            "worst_ps": bins[0][0] if bins else None}


def main(argv=None) -> int:
    for path in (argv if argv is not None else sys.argv[1:]):
        with open(path) as f:
            s = summarise(f.read())
        print(f"{path}: Fmax lines {s['fmax_mhz']} MHz; endpoints ~{s['endpoints']}, short of the clock "
              f"~{s['failing']}, by >2 ns ~{s['short_by_2ns']}, by >4 ns ~{s['short_by_4ns']}; "
              f"worst bin from {s['worst_ps']} ps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
