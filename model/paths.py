"""Where the checkout is: the one place that computes the repository root.

Everything the project reads or writes beside its code (``data/``, ``checkpoints/``, ``docs/``,
``build/``) is found from :data:`REPO`. The package is installed in editable mode (``make
install``), so this is the folder the sources live in.
"""

from pathlib import Path

__all__ = ["REPO"]

REPO = Path(__file__).resolve().parent.parent
