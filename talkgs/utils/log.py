"""Console output: one prefix, to stderr, so stdout stays free for data."""

from __future__ import annotations

import sys

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def info(msg: str) -> None:
    if not _quiet:
        print(f"talkgs: {msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"talkgs: warning: {msg}", file=sys.stderr, flush=True)


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr that disappears in quiet mode."""
    from tqdm import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    disable = kwargs.pop("disable", False)
    return tqdm(iterable, disable=_quiet or disable, file=sys.stderr, **kwargs)
