"""Write a folder of outputs so that an interrupted run leaves nothing half-written.

Outputs go to a hidden staging folder beside the destination (same file system, so the final moves
are renames) and are moved into place only when everything succeeded. Files in the destination
that talkgs did not write are never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from talkgs.errors import TalkgsError


def check_destination(dest: Path, force: bool, what: str = "output folder") -> None:
    """Refuse an existing, non-empty destination unless ``force``."""
    if dest.exists() and not dest.is_dir():
        raise TalkgsError(f"{dest} exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise TalkgsError(f"{what} {dest} already exists; pass --force to replace talkgs' files in it")


def check_output_file(out: Path, force: bool) -> None:
    """Refuse to write file ``out`` over an existing one unless ``force``, or into a missing folder."""
    if out.is_dir():
        raise TalkgsError(f"{out} is a folder; give a file name")
    if out.exists() and not force:
        raise TalkgsError(f"{out} already exists; pass --force to replace it")
    if not out.resolve().parent.is_dir():
        raise TalkgsError(f"cannot write {out}: folder {out.resolve().parent} does not exist")


class StagingDir:
    """Context manager: ``with StagingDir(dest) as tmp: ...write into tmp...``.

    On a clean exit, each entry of ``tmp`` replaces the entry of the same name in ``dest``; entries
    listed in ``stale`` (relative paths from an earlier run) that this run did not write are removed.
    On an exception (Ctrl-C included) the staging folder is deleted and ``dest`` is untouched.
    """

    def __init__(self, dest: str | os.PathLike, stale: list[str] | None = None):
        self.dest = Path(dest)
        self.stale = stale or []
        self.path: Path | None = None

    def __enter__(self) -> Path:
        parent = self.dest.resolve().parent
        if not parent.is_dir():
            raise TalkgsError(f"cannot write {self.dest}: folder {parent} does not exist")
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.talkgs-tmp-", dir=parent))
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.path is not None
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            self.dest.mkdir(exist_ok=True)
            written = {p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()}
            for rel in self.stale:
                target = self.dest / rel
                if rel not in written and target.is_file():
                    target.unlink()
            for entry in sorted(self.path.iterdir()):
                _move_into(entry, self.dest / entry.name)
        finally:
            shutil.rmtree(self.path, ignore_errors=True)


def _move_into(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, merging folders so that unrelated files already in ``dst`` survive."""
    if src.is_dir():
        if dst.exists() and not dst.is_dir():
            dst.unlink()
        dst.mkdir(exist_ok=True)
        for child in sorted(src.iterdir()):
            _move_into(child, dst / child.name)
        return
    if dst.is_dir():
        shutil.rmtree(dst)
    os.replace(src, dst)
