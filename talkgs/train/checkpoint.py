"""Resumable training state: a dict of tensors and plain values, loadable with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from talkgs.errors import TalkgsError


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write atomically: an interrupted save leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise TalkgsError(f"no checkpoint at {path}") from None
    except (RuntimeError, EOFError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TalkgsError(f"checkpoint {path} is damaged ({reason}); start again with --force") from None
