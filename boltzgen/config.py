"""Settings from a YAML file: ``--config FILE.yaml`` of ``boltzgen sample``, ``run``, ``train`` and ``free-energy``.

A config file is a mapping. A *section* mirrors a settings dataclass field by field, with nested
mappings for nested dataclasses; fields it leaves out keep the defaults of the dataclass that holds
them. The other top-level keys are the command's *run options*, named after their flags (``--particles``
-> ``particles``, ``--no-compile`` -> ``no_compile``). Files and folders (``--out``, ``--model``,
``--data``, ...) stay on the command line. For example, for ``boltzgen sample``::

    particles: 1000
    runs: 4
    seed: 7
    temperature: 310.0           # K
    sampling:                    # boltzgen.sampling.SampleSettings
      n_levels: 200
      bridge: {cess: 0.8, moves: 5}
      mixing:
        moves: 500
        torsions: {moves: 2, reflect: 0.5}

Flags given on the command line override the file, which overrides the defaults (the CLI does that;
this module only reads and checks). Unknown keys and values of the wrong type are a ValueError naming
the key and the file. A float field also takes a number YAML left as a string (PyYAML reads ``1e-4``,
without a dot, as text).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Config:
    """What a config file holds for one command.

    Attributes:
        path: the file.
        sections: {section name: the settings dataclass with the file's values over its defaults}, for every
            section the command reads (the default instance where the file has none).
        options: {run option: value} for the run options the file sets (checked against their types).
    """

    path: Path
    sections: dict
    options: dict


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def check_value(value, hint, where: str):
    """``value`` checked against the type ``hint`` (bool, int, float, str, X | None, list[X]); returns it
    (a float field gets a float). Raises ValueError naming ``where``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(hint)
        if value is None and type(None) in arms:
            return None
        for arm in (a for a in arms if a is not type(None)):
            try:
                return check_value(value, arm, where)
            except ValueError:
                continue
    elif origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, list):
            return [check_value(v, item, f"{where}[{k}]") for k, v in enumerate(value)]
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif hint is float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, numbers.Real) and not isinstance(number, bool) and math.isfinite(number):
            return float(number)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{where}: unsupported setting type {hint!r}")
    raise ValueError(f"{where}: expected {_describe(hint)}, got {value!r} ({type(value).__name__})")


def _unknown(key: str, known, where: str, holder: str) -> ValueError:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ValueError(f"{where}: unknown key {key!r} ({holder} holds: {', '.join(known)}){hint}")


def update_dataclass(instance, values, where: str, path: str):
    """A copy of the dataclass ``instance`` with the fields ``values`` (a mapping) names replaced.

    Nested dataclass fields take nested mappings and start from the nested instance of ``instance``
    (so a section keeps the defaults of the dataclass holding it). Every value is type-checked; the
    dataclass's own checks (``__post_init__``) run on the result.

    Args:
        instance: a dataclass instance (the defaults).
        values: a mapping of field names to values.
        where: the file, named in every error.
        path: the dotted key of ``instance`` in the file (e.g. ``sampling.mixing``).
    Raises:
        ValueError: an unknown key, a value of the wrong type or one the dataclass refuses, naming the
            dotted key and ``where``.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: {path} must be a mapping of {type(instance).__name__} fields, got "
                         f"{values!r} ({type(values).__name__})")
    fields = {f.name: f for f in dataclasses.fields(instance) if f.init}
    hints = typing.get_type_hints(type(instance))
    changes = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown(key, fields, where, path)
        current = getattr(instance, key)
        if dataclasses.is_dataclass(current):
            changes[key] = update_dataclass(current, value, where, f"{path}.{key}")
        else:
            changes[key] = check_value(value, hints[key], f"{where}: {path}.{key}")
    try:
        return dataclasses.replace(instance, **changes)
    except (TypeError, ValueError) as exc:  # the dataclass's own range checks
        raise ValueError(f"{where}: {path}: {exc}") from exc


def read_yaml_mapping(path, flag: str = "--config") -> dict:
    """The top-level mapping of a YAML file; errors name ``flag`` and the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{flag} {p}: no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{flag} {p}: not readable YAML ({type(exc).__name__}: {' '.join(str(exc).split())})") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{flag} {p}: expected a mapping of settings, got {type(data).__name__}")
    return dict(data)


def read_config(path, command: str, sections: Mapping, options: Mapping, elsewhere: Mapping | None = None) -> Config:
    """Read and check a config file for one command.

    Args:
        path: the YAML file.
        command: the command it is read for (named in errors), e.g. "boltzgen sample".
        sections: {section name: default dataclass instance} the command reads.
        options: {run option: type hint} the command reads (e.g. {"particles": int, "no_compile": bool}).
        elsewhere: {key: the commands that read it} for keys of other commands, so a shared file's
            wrong key gets a helpful error.
    Raises:
        FileNotFoundError, ValueError: naming the file and the key.
    """
    data = read_yaml_mapping(path)
    where = str(path)
    found_sections, found_options = dict(sections), {}
    for key, value in data.items():
        if key in sections:
            found_sections[key] = update_dataclass(sections[key], value, where, str(key))
        elif key in options:
            found_options[key] = check_value(value, options[key], f"{where}: {key}")
        elif elsewhere and key in elsewhere:
            raise ValueError(f"{where}: {key!r} is read by {elsewhere[key]}, not by {command}")
        else:
            raise _unknown(key, [*options, *sections], where, command)
    return Config(Path(path), found_sections, found_options)


def with_field(instance, path: tuple[str, ...], value):
    """A copy of the dataclass ``instance`` with the (nested) field ``path`` set to ``value``."""
    head, *rest = path
    inner = with_field(getattr(instance, head), tuple(rest), value) if rest else value
    return dataclasses.replace(instance, **{head: inner})


__all__ = ["Config", "check_value", "read_config", "read_yaml_mapping", "update_dataclass", "with_field"]
