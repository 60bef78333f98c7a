"""Configs are plain (nested) dataclasses; YAML presets and ``key=value`` overrides fill them.

    cfg = load_config(SinusoidConfig, "paper.yaml", ["train.iterations=1000", "maml.first_order=true"])

Unknown keys are errors (a typo must not silently fall back to a default). A config section whose keys
were renamed lists the old ones in ``LEGACY_KEYS`` and maps them in a classmethod ``upgrade_config(data)``,
so presets and the ``config.json`` of runs written before the rename still load. A key that only moved
(e.g. into a block of its own: ``masquerade_seed`` -> ``masquerade.seed``) is listed instead in the
section's ``RENAMED_KEYS`` (old key -> its dotted path in the section), mapped where it is read: in a
preset, an override or a dict given to :func:`from_dict`, so the later of two layers wins whichever form
each uses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from fastmaml.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, checking keys and converting simple types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {path or '<root>'} must be a mapping, got {type(data).__name__}")
    data = _move_renamed(cls, data, path)
    if hasattr(cls, "upgrade_config"):
        data = cls.upgrade_config(data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in section '{path}'" if path else ""
        raise ConfigError(f"unknown config key(s) {unknown}{where}; valid keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{path}.{name}" if path else name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_config(cls: type[T], preset: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Defaults of ``cls``, then the YAML ``preset`` (if any), then ``key.sub=value`` overrides."""
    data: dict[str, Any] = to_dict(cls())
    if preset is not None:
        _merge_preset(data, Path(preset), (), cls)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.iterations=1000)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = _renamed_path(cls, key.strip().split("."))
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config section {part!r} in override {item!r}")
            node = node[part]
        if parts[-1] not in node and parts[-1] not in _legacy_keys(cls, parts[:-1]):
            where = f" in section '{'.'.join(parts[:-1])}'" if len(parts) > 1 else ""
            raise ConfigError(f"unknown config key {key!r} in override {item!r}; valid keys{where}: {sorted(node)}")
        node[parts[-1]] = _section_value(value, f"override {item!r}", cls, parts)
    return from_dict(cls, data)


def _legacy_keys(cls: type, section: list[str]) -> tuple[str, ...]:
    """The old key names the dataclass of config section ``section`` (a path from ``cls``) still reads."""
    return tuple(getattr(_section_class(cls, section), "LEGACY_KEYS", ()))


def _dataclass_of(tp: Any) -> type | None:
    """``tp`` when it is a dataclass, ``X`` when it is ``X | None`` of a dataclass ``X``, else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def _section_class(cls: type | None, section: list[str]) -> type | None:
    """The dataclass of config section ``section`` (a path of field names from ``cls``); None if not one."""
    for part in section:
        if cls is None:
            return None
        cls = _dataclass_of(typing.get_type_hints(cls).get(part))
    return cls


def _renamed_path(cls: type, parts: list[str]) -> list[str]:
    """A key path (``source.masquerade_seed``) with each renamed key replaced by its new path
    (``source.masquerade.seed``), per the ``RENAMED_KEYS`` of the section it is in."""
    out: list[str] = []
    for part in parts:
        renamed = getattr(_section_class(cls, out), "RENAMED_KEYS", {})
        out += renamed[part].split(".") if part in renamed else [part]
    return out


def _move_renamed(cls: type, data: dict[str, Any], path: str) -> dict[str, Any]:
    """``data`` (one section of class ``cls``, not modified) with its renamed keys moved to their new paths.

    ConfigError when a key is given both under its old name and its new path."""
    renamed = getattr(cls, "RENAMED_KEYS", {})
    if not any(k in data for k in renamed):
        return data
    out = dict(data)
    for old, new in renamed.items():
        if old not in out:
            continue
        *parents, leaf = new.split(".")
        node = out
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict):
                raise ConfigError(f"config section {'.'.join(filter(None, [path, part]))} must be a mapping, got "
                                  f"{node[part]!r}")
            node[part] = dict(node[part])
            node = node[part]
        if leaf in node:
            where = f"{path}." if path else ""
            raise ConfigError(f"{where}{old} and {where}{new} both given (the first is the old name of the "
                              f"second); keep {where}{new}")
        node[leaf] = out.pop(old)
    return out


def _section_value(value: Any, source: str, cls: type, section: list[str]) -> Any:
    """``value`` as set for the whole config ``section``: a mapping for a dataclass section becomes that
    section's defaults with ``value`` merged in (renamed keys moved where they live, unknown keys refused), so
    that later layers (overrides of ``train_source.x``, a preset's ``extends``) find every key in place."""
    tp = _section_class(cls, section)
    if tp is None or not isinstance(value, dict):
        return value
    try:
        full = to_dict(tp())
    except TypeError:  # a section without defaults for every key: from_dict checks it
        return value
    _merge(full, value, source, cls, ".".join(section))
    return full


def _merge_preset(data: dict, path: Path, chain: tuple[Path, ...], cls: type) -> None:
    """Merge the YAML preset at ``path`` into ``data``; ``extends: other.yaml`` (a file beside it) merges first."""
    if path.resolve() in chain:
        raise ConfigError(f"config preset {path} extends itself through {' -> '.join(p.name for p in chain)}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config preset {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config preset {path} is not valid YAML: {e}") from e
    if isinstance(loaded, dict) and "extends" in loaded:
        base = loaded.pop("extends")
        if not isinstance(base, str) or Path(base).name != base:
            raise ConfigError(f"{path}: 'extends' must name a preset file in the same folder, got {base!r}")
        _merge_preset(data, path.parent / base, chain + (path.resolve(),), cls)
    _merge(data, loaded, str(path), cls)


def _merge(base: dict, new: dict, source: str, cls: type, path: str = "") -> None:
    if not isinstance(new, dict):
        raise ConfigError(f"{source}: section {path or '<root>'} must be a mapping")
    section = path.split(".") if path else []
    renamed = getattr(_section_class(cls, section), "RENAMED_KEYS", {})
    for key, value in new.items():
        if key in renamed and key not in base:  # the old name of a key that moved: merged where it now lives
            *parents, leaf = renamed[key].split(".")
            for part in reversed(parents):
                value, leaf = {leaf: value}, part
            key = leaf
        where = f"{path}.{key}" if path else key
        if key not in base and key not in _legacy_keys(cls, section):
            raise ConfigError(f"{source}: unknown config key {where!r}; valid keys"
                              f"{f' in section {path!r}' if path else ''}: {sorted(base)}")
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            _merge(base[key], value, source, cls, where)
        else:
            base[key] = _section_value(value, source, cls, section + [key])


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        shorthand = getattr(tp, "SHORTHAND", None)
        if shorthand and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            # A config class may let one plain value stand for its main field: [clean.log] for [{path: clean.log}].
            value = {shorthand: value}
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        last: Exception | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as e:
                last = e
        raise last or ConfigError(f"{path}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path} must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_convert(arg, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    return value
