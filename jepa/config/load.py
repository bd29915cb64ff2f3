"""Loading an experiment config: `defaults:` composition, dotted overrides, key checks, YAML out.

`load(path, overrides)` composes a YAML file (its `defaults:` list first, in order, then the file
itself), applies dotted `key=value` overrides, checks every key against the schema before any
work is done (an unknown key is refused with the closest valid one), and returns a `Config` that
has passed the value rules of jepa/config/rules.py.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from jepa.config.rules import validate
from jepa.config.schema import (
    BlockMaskConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    DeepSpeedConfig,
    EmaConfig,
    HierarchyConfig,
    LaunchConfig,
    LevelConfig,
    LoggingConfig,
    LossSpikeConfig,
    MaskConfig,
    ModelConfig,
    OptimConfig,
    PredictorConfig,
    RopeConfig,
    SourceConfig,
)
from jepa.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
"""The repository's configs/ folder: the last place a config name or a `defaults:` entry is looked up."""


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Compose `path` with its `defaults:`, apply `key=value` overrides, validate, return the config."""
    raw = _compose(Path(path), stack=())
    for item in overrides:
        _set_dotted(raw, *_parse_override(item))
    return from_dict(raw, origin=str(path))


def from_dict(raw: dict, origin: str = "<dict>") -> Config:
    """Validate a plain nested dict against the schema and return a typed `Config`."""
    _check_keys(raw, Config, prefix="")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(raw))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{origin}: bad value for `{key}`: {msg}") from None
    validate(cfg)
    return cfg


def with_overrides(cfg: Config, overrides: list[str] | tuple[str, ...], origin: str = "<config>") -> Config:
    """`cfg` with dotted `key=value` overrides applied, checked and validated like `load`'s."""
    raw = to_dict(cfg)
    for item in overrides:
        _set_dotted(raw, *_parse_override(item))
    return from_dict(raw, origin=origin)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what `output_dir/config.yaml` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------- composition

def _compose(path: Path, stack: tuple[Path, ...]) -> dict:
    path = _resolve_path(path, base=stack[-1].parent if stack else None)
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"`defaults` form a cycle: {chain}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(data).__name__}")
    defaults = data.pop("defaults", [])
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise ConfigError(f"{path}: `defaults` must be a list of config file names")
    merged: dict = {}
    for name in defaults:
        _deep_merge(merged, _compose(Path(name), stack=(*stack, path)))
    _deep_merge(merged, data)
    return merged


def _resolve_path(path: Path, base: Path | None) -> Path:
    candidates = [path] if path.is_absolute() else [p / path for p in (base, Path.cwd(), CONFIG_DIR) if p]
    for cand in candidates:
        for c in (cand, cand.with_suffix(".yaml")) if cand.suffix != ".yaml" else (cand,):
            if c.is_file():
                return c.resolve()
    where = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"config file not found: {path} (looked in: {where})")


def _deep_merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


# ----------------------------------------------------------------------------- overrides

def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"malformed override {item!r}: expected dotted key=value, e.g. optim.lr=3e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"malformed override {item!r}: the value is not valid YAML") from None
    return key.split("."), value


def _set_dotted(raw: dict, parts: list[str], value: Any) -> None:
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


# ----------------------------------------------------------------------------- key checks

def _check_keys(raw: Any, schema: type, prefix: str) -> None:
    """Reject keys the schema does not have, naming the full key and the closest valid one."""
    if not isinstance(raw, dict):
        raise ConfigError(f"`{prefix.rstrip('.') or 'config'}` must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean `{prefix}{close[0]}`?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown config key `{prefix}{key}`{hint}")
        sub = _field_schema(schema, key)
        if sub is None or value is None:
            continue
        if isinstance(sub, list):  # a list of dataclasses
            if not isinstance(value, list):
                raise ConfigError(f"`{prefix}{key}` must be a list, got {value!r}")
            for i, item in enumerate(value):
                _check_keys(item, sub[0], prefix=f"{prefix}{key}[{i}].")
        else:
            _check_keys(value, sub, prefix=f"{prefix}{key}.")


def _field_schema(schema: type, name: str) -> type | list[type] | None:
    """The dataclass (or [dataclass] for a list of them) a field holds, else None."""
    hints = {
        "model": ModelConfig, "mask": MaskConfig, "hierarchy": HierarchyConfig, "data": DataConfig,
        "optim": OptimConfig, "ema": EmaConfig, "deepspeed": DeepSpeedConfig,
        "checkpoint": CheckpointConfig, "logging": LoggingConfig, "launch": LaunchConfig,
        "rope": RopeConfig, "predictor": PredictorConfig, "loss_spike": LossSpikeConfig,
    }
    lists = {"targets": BlockMaskConfig, "levels": LevelConfig, "sources": SourceConfig}
    if name in lists and schema in (MaskConfig, HierarchyConfig, DataConfig):
        return [lists[name]]
    sub = hints.get(name)
    return sub if sub is not None and any(f.name == name for f in dataclasses.fields(schema)) else None
