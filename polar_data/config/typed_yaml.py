"""Plain YAML mapped onto typed dataclasses, validated at load.

Every error names the offending key by its dotted path, e.g.
``configs/data/demo.yaml: splits.val: expected float, got 'a lot'``.

Supported field types: bool, int, float (finite: NaN and infinities are refused), str, Path,
``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, ``Literal[...]``, ``object``
(any plain YAML data: text, booleans, numbers, null and lists / mappings of these, e.g. fsspec
``storage_options``), nested dataclasses, and unions of dataclasses told apart by a
``kind: Literal[...]`` field (a *tagged union*: the mapping's ``kind`` picks the class; without
one, the first class of the union).

Ranges are declared per field (:func:`bounded`: ``chunk_bins: int = bounded(64, "[1, 16384]")``)
and checked by :func:`check_fields`, which every config dataclass calls first in its
``__post_init__``; a bad value is a :class:`FieldError` naming the field, which
:func:`from_dict` turns into the dotted key (``store.chunk_bins: must be in [1, 16384], got
1000000000``). Config files may not use YAML anchors or aliases (``&x`` / ``*x``): a few lines
of aliases can expand to billions of values ("billion laughs"), so the reader refuses them.

Command-line overrides (:func:`split_overrides`, :func:`apply_overrides`) address any key by
its dotted path (``--model.n_pairs 12``, ``--store.splits.val 0.2``); the value is read as
YAML (``null``, ``true``, ``[16, 32]``, ``{a: 1}``) and checked against the field's type, so
a wrong key or value is an error naming it. Generic: used by ``pipelines/build_shards.py``
(data config) and by the trainer's run config.

This is the only module of this package that the model layer (the model package outside its
training layer) may import: it knows nothing of stores or sessions.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or mapping does not fit its dataclass."""


class FieldError(ConfigError):
    """Field ``key`` of a config dataclass has a value it does not accept (raised by
    ``__post_init__`` checks, which do not know where the dataclass sits in the tree;
    :func:`from_dict` adds the path)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


# ----------------------------------------------------------------- declared ranges

_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^\]\)\s]+)\s*([\])])\s*$")


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value  # "1e6" -> 1000000


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed or open interval ``[lo, hi]`` / ``(lo, hi)`` a number must lie in (NaN never
    does); ``why``: what the bound protects, said in the error (e.g. the memory it sizes)."""

    lo: int | float
    hi: int | float
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""

    @classmethod
    def parse(cls, interval: str, why: str = "") -> Range:
        """``"[1, 16384]"``, ``"(0, 1)"``, ``"[0, 1e6]"`` (both ends finite)."""
        m = _INTERVAL.match(interval)
        if m is None:
            raise ValueError(f"not an interval: {interval!r}")
        lo, hi = _number(m.group(2)), _number(m.group(3))
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"not a finite interval: {interval!r}")
        return cls(lo, hi, m.group(1) == "(", m.group(4) == ")", why)

    def __str__(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"

    def holds(self, value: int | float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return bool(above and below)  # False for NaN

    def check(self, key: str, value: Any) -> None:
        """FieldError naming ``key`` unless ``value`` (None passes; for a tuple / list each
        item, for a mapping each value) lies in the interval."""
        if isinstance(value, list | tuple):
            for i, v in enumerate(value):
                self.check(f"{key}[{i}]", v)
        elif isinstance(value, dict):
            for k, v in value.items():
                self.check(f"{key}.{k}", v)
        elif value is not None and not (isinstance(value, int | float)
                                        and not isinstance(value, bool) and self.holds(value)):
            note = f" ({self.why})" if self.why else ""
            raise FieldError(key, f"must be in {self}, got {value!r}{note}")


SEED_RANGE = "[0, 4294967295]"  # the seeds numpy and Lightning's seed_everything accept


def bounded(default: Any, interval: str, why: str = "") -> Any:
    """A dataclass field with ``default`` whose value must lie in ``interval`` (see
    :class:`Range`; a list / mapping default becomes a factory). Checked by
    :func:`check_fields`."""
    meta = {"range": Range.parse(interval, why)}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: _copy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_fields(obj: Any) -> None:
    """Every declared range of dataclass ``obj`` (:func:`bounded`); FieldError names the
    first field out of range. Call first in ``__post_init__``."""
    for f in dataclasses.fields(obj):
        bound = f.metadata.get("range")
        if bound is not None:
            bound.check(f.name, getattr(obj, f.name))


def check_name(key: str, value: str) -> None:
    """FieldError unless ``value`` can name a folder by itself: e.g. a run folder
    ``runs/<name>``, which a name like ``../x`` would leave. The safe names of
    :mod:`polar_data.store.safe_names` (letters, digits and ``._-``, starting with a letter or
    digit, no ``..``, at most 64 characters; not imported: the model layer may import this
    module only)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value) or ".." in value:
        raise FieldError(key, "must be a plain name (letters, digits and . _ -, starting with "
                              f"a letter or digit, no '..', at most 64 characters), got "
                              f"{value!r}")


def _plain(value: Any, where: str) -> Any:
    """``value`` if it is plain YAML data (text, bool, int, finite float, None, and lists /
    mappings with text keys of these), as fsspec options are; else ConfigError."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return _finite(value, where)
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"{where}: keys must be text, got {k!r}")
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(f"{where}: expected plain data (text, true/false, a number, null, or a "
                      f"list / mapping of these), got {type(value).__name__} {value!r}")


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return value


def _kinds(cls) -> tuple:
    """The ``kind`` values a dataclass accepts (its ``kind: Literal[...]`` field), or ()."""
    if not dataclasses.is_dataclass(cls):
        return ()
    tp = typing.get_type_hints(cls).get("kind")
    return get_args(tp) if get_origin(tp) is Literal else ()


def tagged_member(tp: Any, value: Any, where: str) -> type | None:
    """For a union of dataclasses with ``kind`` fields (e.g. ``PolarConfig |
    BaselineConfig``), the member class that mapping ``value`` selects by its ``kind`` (none
    given: the first member); None when ``tp`` is no such union."""
    if get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    members = [a for a in get_args(tp) if a is not type(None)]
    if len(members) < 2 or not all(_kinds(m) for m in members):
        return None
    if not isinstance(value, dict) or "kind" not in value:
        return members[0]
    for m in members:
        if value["kind"] in _kinds(m):
            return m
    known = [k for m in members for k in _kinds(m)]
    raise ConfigError(f"{where + '.' if where else ''}kind: must be one of {known}, "
                      f"got {value['kind']!r}")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp is object:
        return _plain(value, where)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        member = tagged_member(tp, value, where)
        if member is not None:
            return _convert(value, member, where)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin is Literal:
        choices = get_args(tp)
        if not any(value == c and type(value) is type(c) for c in choices):  # 1 is not True
            raise ConfigError(f"{where}: must be one of {list(choices)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if tp in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if tuple in (tp, origin) else items
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (str, Any)  # bare ``dict``: any values
        return {str(k): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return _finite(float(value), where)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    raise ConfigError(f"{where}: unsupported field type {tp!r}")


def convert(value: Any, tp: Any, where: str = "") -> Any:
    """``value`` (plain YAML data) checked and converted to type ``tp`` (any supported type,
    e.g. a tagged union of dataclasses); ConfigError names the offending key."""
    return _convert(value, tp, where)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown or ill-typed keys raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    prefix = f"{where}." if where else ""
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key (known keys: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    try:
        return cls(**kwargs)
    except FieldError as e:  # __post_init__ checks of one field: its dotted key
        raise ConfigError(f"{prefix}{e.key}: {e.message}") from e
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # other __post_init__ checks
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing anchors and aliases (``&x`` / ``*x`` and ``<<: *x``)
    before any node is built: a few lines of nested aliases ("billion laughs") expand to
    billions of values for whatever walks the tree."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not allowed in config "
                            "files: write the value out", event.start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text as plain data (no anchors / aliases); ConfigError starting with ``where``
    (the file or flag) and the line of the problem."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader: plain data only
    except yaml.composer.ComposerError as e:
        raise ConfigError(f"{where}: line {e.problem_mark.line + 1}: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: {line}not valid YAML ({problem})") from None


def read_mapping(path: str | Path, what: str = "config file") -> dict:
    """YAML file ``path`` as a mapping (empty file: {}); ConfigError naming the file when it
    is missing, not valid YAML, uses aliases or is not a mapping at the top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(path: str | Path, cls: type[T]) -> T:
    """Read YAML file ``path`` into dataclass ``cls``; errors start with the file name."""
    data = read_mapping(path)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain YAML/JSON-able structure (Paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ----------------------------------------------------------------- command-line overrides


def split_overrides(argv: list[str], sections) -> tuple[list[tuple[str, str]], list[str]]:
    """Take the dotted overrides out of ``argv``: ``--a.b VALUE`` or ``--a.b=VALUE`` whose
    first component is one of ``sections``. Returns ``([(dotted key, text), ...], rest)``,
    in command-line order; ``rest`` is left for argparse."""
    overrides, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if "." in key and key.split(".", 1)[0] in sections:
            if "=" in arg:
                overrides.append((key, arg.split("=", 1)[1]))
                i += 1
                continue
            if i + 1 >= len(argv):
                raise ConfigError(f"command line: --{key}: needs a value")
            overrides.append((key, argv[i + 1]))
            i += 2
            continue
        rest.append(arg)
        i += 1
    return overrides, rest


def _field_type(cls: type, tree: dict, parts: list[str], where: str) -> Any:
    """The declared type of the dotted key ``parts`` under dataclass ``cls`` (``tree``: the
    mapping being overridden, to resolve tagged unions by their current ``kind``)."""
    tp: Any = cls
    node: Any = tree
    for i, part in enumerate(parts):
        key = ".".join(parts[: i + 1])
        while True:  # unwrap X | None and tagged unions down to a class or a container
            member = tagged_member(tp, node, key)
            if member is not None:
                tp = member
                continue
            args = get_args(tp)
            if get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
                rest = [a for a in args if a is not type(None)]
                if len(rest) == 1:
                    tp = rest[0]
                    continue
            break
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            names = [f.name for f in dataclasses.fields(tp) if f.init]
            if part not in names:
                raise ConfigError(f"{where}: --{key}: unknown key (known keys: "
                                  f"{', '.join(sorted(names))})")
            tp = hints[part]
        elif get_origin(tp) is dict:
            tp = (get_args(tp) or (str, Any))[1]
        elif tp is object:  # plain data: a key inside it is plain data too
            pass
        else:
            raise ConfigError(f"{where}: --{key}: {'.'.join(parts[:i]) or 'it'} has no keys")
        node = node.get(part) if isinstance(node, dict) else None
    return tp


def _accepts(tp: Any, kind: type) -> bool:
    if tp is kind:
        return True
    if get_origin(tp) is Literal:
        return any(isinstance(a, kind) and not isinstance(a, bool) for a in get_args(tp))
    if get_origin(tp) in (typing.Union, types.UnionType):
        return any(_accepts(a, kind) for a in get_args(tp))
    return False


def parse_value(text: str, tp: Any, where: str = "command line") -> Any:
    """A command-line value for a field of type ``tp``: YAML, except that a text field keeps
    its text (``--model.name 1e3`` is the string) and a number field reads ``3e-3`` (which
    YAML 1.1 leaves a string) as a float. ``null`` / ``~`` is None. ``where`` (the flag)
    starts the error of a value that is not valid YAML."""
    if text in ("null", "Null", "NULL", "~", "None"):
        return None
    if _accepts(tp, str) or _accepts(tp, Path):
        return text
    value = parse_yaml(text, where) if text.strip() else text
    if isinstance(value, str) and _accepts(tp, float):
        try:
            return float(text)
        except ValueError:
            pass
    return value


def apply_overrides(cls: type, tree: dict, overrides, where: str = "command line") -> dict:
    """``tree`` (a mapping for dataclass ``cls``) with every ``(dotted key, text)`` set, each
    key and value checked against the declared type (ConfigError naming ``--key``)."""
    tree = _copy(tree)
    for key, text in overrides:
        parts = key.split(".")
        tp = _field_type(cls, tree, parts, where)
        value = parse_value(text, tp, f"{where}: --{key}")
        _convert(value, tp, f"{where}: --{key}")  # type check now, named by its flag
        node = tree
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return tree


def override(obj: T, overrides, where: str = "command line") -> T:
    """A copy of dataclass ``obj`` with the dotted ``overrides`` applied and checked."""
    if not overrides:
        return obj
    tree = apply_overrides(type(obj), to_dict(obj), overrides, where)
    try:
        return from_dict(type(obj), tree)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_copy(v) for v in x]
    return x


def to_yaml(obj: Any) -> str:
    """A dataclass (tree) as YAML, keys in declaration order; loads back with
    :func:`from_dict` to an equal object."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
