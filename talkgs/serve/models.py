"""The models a server may serve (``ModelCatalog``) and the ones it holds loaded (``ModelCache``).

A client names a model; it never gives a path. The catalog maps names to the files found in the folders and files
given to ``talkgs serve`` at start, so nothing outside them can be read (no path traversal).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from talkgs.errors import TalkgsError

MODEL_SUFFIX = ".safetensors"


class UnknownModel(TalkgsError):
    """A client named a model the server does not have."""


@dataclass(frozen=True)
class ModelEntry:
    """One servable model: its name, file and what its header says (read without loading the tensors)."""

    name: str
    path: Path
    resolution: int
    fps: float
    drive: str  # "code" (mouth-code path) or "audio" (direct path)
    encoders: tuple[str, ...]
    size_mb: float

    def info(self) -> dict:
        return {"name": self.name, "file": self.path.name, "resolution": self.resolution, "fps": self.fps,
                "drive": self.drive, "encoders": list(self.encoders), "size_mb": round(self.size_mb, 2)}


def read_entry(name: str, path: Path) -> ModelEntry:
    """The catalog entry of model file ``path``; one line when it is not a talkgs model."""
    from safetensors import SafetensorError, safe_open

    from talkgs.model.fitted import MODEL_FORMAT

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise TalkgsError(f"{path} is damaged or not a safetensors file ({str(e).splitlines()[0]})") from None
    if meta.get("format") != MODEL_FORMAT or "talkgs" not in meta:
        raise TalkgsError(f"{path} is not a fitted talkgs model")
    header = json.loads(meta["talkgs"])
    head = header.get("head", {})
    return ModelEntry(name=name, path=path, resolution=int(header["resolution"]), fps=float(header["fps"]),
                      drive=str(head.get("drive", "audio")), encoders=tuple(head.get("audio_encoders", ())),
                      size_mb=path.stat().st_size / 1e6)


class ModelCatalog:
    """Names -> model files, from the paths given at start (files, fitted subject folders, folders of either).

    A model file is named by its stem (``anna.safetensors`` -> ``anna``); a fitted subject folder by the folder's
    name. Two models with one name are refused at start, as is a path that holds no model.
    """

    def __init__(self, sources: list[str | Path]):
        from talkgs.data import schema

        if not sources:
            raise TalkgsError("give at least one model file or folder to serve")
        found: dict[str, Path] = {}

        def add(name: str, path: Path) -> None:
            if name in found and found[name] != path:
                raise TalkgsError(f"two models are named {name!r}: {found[name]} and {path}; rename one")
            found[name] = path

        for src in map(Path, sources):
            if src.is_file():
                name = src.parent.parent.name if src.name == Path(schema.MODEL).name and src.parent.name == "fit" \
                    else src.stem
                add(name, src.resolve())
            elif src.is_dir():
                before = len(found)
                if (src / schema.MODEL).is_file():
                    add(src.resolve().name, (src / schema.MODEL).resolve())
                else:
                    for child in sorted(src.iterdir()):
                        if child.is_file() and child.suffix == MODEL_SUFFIX:
                            add(child.stem, child.resolve())
                        elif child.is_dir() and (child / schema.MODEL).is_file():
                            add(child.name, (child / schema.MODEL).resolve())
                if len(found) == before:
                    raise TalkgsError(f"{src} holds no fitted model (no *{MODEL_SUFFIX} file, no fitted subject "
                                      "folder)")
            else:
                raise TalkgsError(f"{src} does not exist")
        self.entries = {name: read_entry(name, path) for name, path in sorted(found.items())}

    def __getitem__(self, name: str) -> ModelEntry:
        entry = self.entries.get(name) if isinstance(name, str) else None
        if entry is None:
            known = ", ".join(self.entries) or "none"
            raise UnknownModel(f"unknown model {name!r} (this server has: {known})")
        return entry

    def info(self) -> list[dict]:
        return [entry.info() for entry in self.entries.values()]


class ModelCache:
    """Loaded models by name, the ``capacity`` most recently used; a model is loaded once however many sessions ask
    for it at the same moment. A session keeps the model it got even after the cache drops it."""

    def __init__(self, catalog: ModelCatalog, capacity: int, device: str | None = None):
        self.catalog = catalog
        self.device = device
        self.capacity = capacity
        self._models: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.loads = 0  # models read from disk so far (a multiplexing test counts them)

    def get(self, name: str):
        """The ``FittedModel`` of ``name``, loaded on first use."""
        from talkgs.model.fitted import FittedModel
        from talkgs.serve.session import warm_up

        entry = self.catalog[name]
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            gate = self._loading.setdefault(name, threading.Lock())
        with gate:
            with self._lock:
                if name in self._models:
                    return self._models[name]
            model = FittedModel.load(entry.path)
            warm_up(model, self.device)
            with self._lock:
                self._models[name] = model
                self.loads += 1
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
                self._loading.pop(name, None)
            return model

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)
