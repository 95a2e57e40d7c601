"""Typed dataclass configs read from and written to YAML.

Dataclass defaults are the source of truth; a preset (configs/*.yaml, package data read with
importlib.resources, or $TALKGS_CONFIGS/*.yaml) or a saved run config only lists the fields it
changes. Unknown keys and values of the wrong type are refused with one readable line, so a typo in
a preset never silently falls back to a default.

Lists of named dataclasses (a field typed ``list[X]`` where ``X`` is a dataclass with a ``name`` field,
such as ``FitConfig.stages``) merge by name, so changing one field of one stage keeps everything else:

* a YAML **mapping** edits named items in place: ``stages: {face: {iterations: 100}}`` changes the
  face stage's iterations and keeps every other field of it, every other stage, and their order. A
  name the list does not hold is refused, naming the ones it does.
* a YAML **list** states the items and their order explicitly: items not listed are dropped (stages
  not listed are not run). Each entry needs a ``name`` and merges onto the item of the same name in
  the config being merged into (the n-th entry of a name onto the n-th item of that name), or onto
  the dataclass defaults for a name that config does not hold. So ``[{name: face, iterations: 100}]``
  runs the face stage alone, with its own sampler and densification settings.

A saved run config lists every field of every item, so it rebuilds the same config either way.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from talkgs.errors import TalkgsError

T = TypeVar("T")


def preset_dir() -> Any:  # a Path or an importlib.resources Traversable
    """Where named presets live: $TALKGS_CONFIGS, else the package talkgs.configs (configs/ in the checkout,
    package data, so an installed wheel has them too)."""
    env = os.environ.get("TALKGS_CONFIGS")
    return Path(env) if env else importlib.resources.files("talkgs.configs")


def preset_names() -> list[str]:
    """The named presets (``cpu``, ``quality``, ``tiny``), sorted."""
    d = preset_dir()
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in d.iterdir() if p.name.endswith(".yaml") and p.is_file())


def to_dict(cfg: Any) -> dict:
    """A plain, YAML-ready dict of a (nested) dataclass config."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        return to_dict(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TalkgsError(f"config: {where} must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except TalkgsError as e:
                errors.append(str(e))
        raise TalkgsError(errors[0] if errors else f"config: bad value for {where}: {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise TalkgsError(f"config: {where} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TalkgsError(f"config: {where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise TalkgsError(f"config: {where} must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        seq = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise TalkgsError(f"config: {where} must be {tp.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a (partial) dict, keeping defaults for missing fields."""
    return merge(cls(), data, where)


def merge(cfg: T, data: dict, where: str = "") -> T:
    """A copy of ``cfg`` with the fields in ``data`` replaced; nested dataclasses merge recursively."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise TalkgsError(f"config: unknown field(s) {', '.join(prefix + u for u in unknown)}")
    kwargs = {}
    for name, value in data.items():
        sub = f"{where}.{name}" if where else name
        current = getattr(cfg, name)
        item_cls = _named_item_type(hints[name])
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            kwargs[name] = merge(current, value, sub)
        elif item_cls is not None:
            kwargs[name] = _merge_named(item_cls, current, value, sub)
        else:
            kwargs[name] = _coerce(hints[name], value, sub)
    try:
        return dataclasses.replace(cfg, **kwargs)
    except ValueError as e:  # a dataclass's own check of its values (``__post_init__``): the user's config
        raise TalkgsError(f"config: {e}") from None


def _named_item_type(tp: Any) -> type | None:
    """``X`` when ``tp`` is ``list[X]`` and ``X`` is a dataclass with a ``name`` field, else None."""
    if typing.get_origin(tp) is not list:
        return None
    (item,) = typing.get_args(tp) or (None,)
    if dataclasses.is_dataclass(item) and "name" in {f.name for f in dataclasses.fields(item)}:
        return item
    return None


def _merge_named(item_cls: type, current: list | None, value: Any, where: str) -> list:
    """Merge a YAML mapping (edit named items) or list (explicit items, in order) onto ``current``."""
    current = list(current or [])
    known = ", ".join(dict.fromkeys(str(c.name) for c in current)) or "none"
    if isinstance(value, dict):
        out = list(current)
        for key, fields in value.items():
            sub = f"{where}.{key}"
            idx = [i for i, c in enumerate(current) if c.name == key]
            if not idx:
                raise TalkgsError(f"config: {where} has no item named {key!r} (known: {known})")
            if fields is None:
                continue
            if not isinstance(fields, dict):
                raise TalkgsError(f"config: {sub} must be a mapping of fields, got {fields!r}")
            if fields.get("name", key) != key:
                raise TalkgsError(f"config: {sub}.name cannot rename an item here; list {where} to rename")
            for i in idx:
                out[i] = merge(current[i], fields, sub)
        return out
    if not isinstance(value, (list, tuple)):
        raise TalkgsError(
            f"config: {where} must be a list of items or a mapping from item name to fields, got {value!r}"
        )
    seen: dict[str, int] = {}
    out = []
    for i, entry in enumerate(value):
        sub = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise TalkgsError(f"config: {sub} must be a mapping, got {entry!r}")
        if "name" not in entry:
            raise TalkgsError(f"config: {sub} needs a name (known: {known})")
        name = entry["name"]
        same = [c for c in current if c.name == name]
        k = seen.get(name, 0)
        seen[name] = k + 1
        base = same[k] if k < len(same) else item_cls()
        out.append(merge(base, entry, sub))
    return out


def load_yaml(path: str | os.PathLike | Any) -> dict:
    """The mapping in a YAML file (a path, or a Traversable such as a packaged preset)."""
    import yaml

    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TalkgsError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise TalkgsError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TalkgsError(f"config file {path} must hold a mapping at the top level")
    return data


def save_yaml(data: dict, path: str | os.PathLike) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def resolve_preset(name_or_path: str) -> Any:
    """A preset name (``cpu``, ``tiny``, ``quality``) or a path to a YAML file: a Path, or for a packaged
    preset an importlib.resources Traversable (both have ``read_text``; ``load_yaml`` takes either)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise TalkgsError(f"config file not found: {p}")
        return p
    candidate = preset_dir() / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = preset_names()
        where = f" in $TALKGS_CONFIGS={os.environ['TALKGS_CONFIGS']}" if os.environ.get("TALKGS_CONFIGS") else ""
        raise TalkgsError(
            f"unknown config preset {name_or_path!r}{where}" + (f" (known: {', '.join(known)})" if known else "")
        )
    return candidate


def load_section(cls: type[T], name_or_path: str | None, section: str) -> T:
    """The ``section`` of a preset or YAML file as a ``cls`` config (defaults when None)."""
    if name_or_path is None:
        return cls()
    data = load_yaml(resolve_preset(name_or_path))
    return from_dict(cls, data.get(section) or {}, section)
