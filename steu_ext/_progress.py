"""When to show progress bars: ``progress=None`` (the default of the long-running functions) means "when
stderr is a terminal", so an interactive user sees the work advance and logs and CI output stay clean;
``True``/``False`` force it (the CLI: on unless ``--quiet``)."""
from __future__ import annotations

import sys
from typing import Optional

__all__ = ["show_progress"]


def show_progress(progress: Optional[bool] = None) -> bool:
    """``progress`` itself when given, else whether stderr is an interactive terminal."""
    if progress is not None:
        return bool(progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
