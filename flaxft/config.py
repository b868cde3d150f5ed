"""Typed run configuration: YAML files with a `base:` chain, plus dotted `key=value` overrides.

The sections and their fields are in flaxft.config_schema (re-exported here). Unknown keys and wrong types
are errors (with the closest valid key suggested), never ignored.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import pathlib
import sys
import types
import typing
from typing import Any, Optional

import yaml

from flaxft.config_schema import (CheckpointConfig, Config, DataConfig, DistributedConfig, MeshConfig, ModelConfig,
                                  PredictConfig, TrainConfig, all_keys, help_text, is_section, markdown_reference, validate)
from flaxft.errors import FlaxftError

__all__ = ["CheckpointConfig", "Config", "DataConfig", "DistributedConfig", "MeshConfig", "ModelConfig", "PredictConfig",
           "TrainConfig", "base_chain", "help_text", "load_config", "markdown_reference", "parse_override", "validate"]


def _unknown_key(key: str) -> FlaxftError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else "run `python -m flaxft.train --help` for the valid keys"
    return FlaxftError(f"unknown config key '{key}'; {hint}")


def _coerce(key: str, value: Any, tp) -> Any:
    """Check/convert one value to the field's type (YAML gives '5e-5' as a string, for instance)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if len(args) < len(typing.get_args(tp)):
                return None
            raise FlaxftError(f"config key '{key}' cannot be null")
        lists = [a for a in args if typing.get_origin(a) is list]
        if lists and isinstance(value, (list, tuple)):  # float | list[float]: a list takes the list form
            return _coerce(key, value, lists[0])
        return _coerce(key, value, next(a for a in args if typing.get_origin(a) is not list))
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(key, v, item_tp) for v in items]
    bad = FlaxftError(f"config key '{key}' must be {getattr(tp, '__name__', tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise TypeError(f"unsupported config type {tp} for {key}")


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in values:
        if name not in names:
            raise _unknown_key(prefix + name)
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if is_section(tp):
            if not isinstance(value, dict):
                raise FlaxftError(f"config key '{prefix}{name}' is a section; give its keys, e.g. {prefix}{name}.KEY=VALUE")
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, value, tp)
    return cls(**kwargs)


def base_chain(path: pathlib.Path) -> list[tuple[pathlib.Path, dict]]:
    """The config file and the files it pulls in through `base:` (a path relative to the file naming it),
    the config first, each with its values (without `base`)."""
    chain, seen = [], []
    while True:
        if not path.is_file():
            raise FlaxftError(f"config file '{path}' not found; pass an existing YAML file, e.g. --config configs/glue/mrpc.yaml")
        if path.resolve() in seen:
            raise FlaxftError(f"config file '{path}' includes itself through `base:`; remove the cycle")
        seen.append(path.resolve())
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise FlaxftError(f"config file '{path}' is not valid YAML ({str(e).splitlines()[0]}); fix its syntax") from None
        if not isinstance(values, dict):
            raise FlaxftError(f"config file '{path}' must hold a mapping of keys, not {type(values).__name__}")
        base = values.pop("base", None)
        chain.append((path, values))
        if base is None:
            return chain
        path = path.parent / base


def _read_yaml(path: pathlib.Path) -> dict:
    """Read a config file, merged over the files of its `base:` chain."""
    values: dict = {}
    for _, file_values in reversed(base_chain(path)):
        values = _merge(values, file_values)
    return values


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.learning_rate=5e-5` -> (['train', 'learning_rate'], '5e-5'-as-YAML)."""
    if "=" not in text:
        raise FlaxftError(f"override '{text}' is not KEY=VALUE; write e.g. train.batch_size=32")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key in {f.name for f in dataclasses.fields(Config)} - set(all_keys()):
        raise FlaxftError(f"config key '{key}' is a section; override one of its keys, e.g. {key}.KEY=VALUE")
    if key not in all_keys():
        raise _unknown_key(key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # a plain string such as a path with odd characters
    return key.split("."), value


def load_config(path: Optional[str | pathlib.Path] = None, overrides: list[str] = (),
                base: Optional[dict] = None) -> Config:
    """Config = defaults <- YAML file (and its bases) or `base` (a saved Config.to_dict()) <- key=value
    overrides, then validated."""
    from flaxft import storage  # here, not at the top: `python -m flaxft.config` needs only PyYAML

    values = _read_yaml(storage.path(path)) if path is not None else copy.deepcopy(base or {})
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    cfg = _build(Config, values)
    validate(cfg)
    return cfg


def main(argv: list[str]) -> int:
    """`python -m flaxft.config --files FILE`: what tpu/common.sh copies to the TPU workers."""
    parser = argparse.ArgumentParser(prog="python -m flaxft.config", description="Inspect a flaxft config file.")
    parser.add_argument("--files", metavar="FILE", required=True,
                        help="print FILE and the files of its `base:` chain, FILE first, one absolute path a line")
    args = parser.parse_args(argv)
    for path, _ in base_chain(pathlib.Path(args.files)):
        print(path.resolve())
    return 0


if __name__ == "__main__":
    from flaxft.cli import run_main

    sys.exit(run_main(main))
