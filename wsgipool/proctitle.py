"""Process titles (``wsgipool: main [app]``, ``wsgipool: worker 3 [app]``) for ps and top.

Titles need the optional ``setproctitle`` package (``pip install 'wsgipool[proctitle]'``);
without it this does nothing, and ps shows the Python command line as before.
"""

from __future__ import annotations

__all__ = ["set_title"]


def set_title(role: str, app: str = "") -> None:
    """Set this process's title to ``wsgipool: ROLE [APP]`` when setproctitle is installed."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    setproctitle(f"wsgipool: {role} [{app}]" if app else f"wsgipool: {role}")
