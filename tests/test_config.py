import math
from dataclasses import dataclass, field

import pytest

from polar_data.config.typed_yaml import (
    ConfigError,
    FieldError,
    Range,
    bounded,
    check_fields,
    from_dict,
    load_config,
    to_yaml,
)


@dataclass
class Inner:
    rate: float = 1.0
    mode: str = "a"


@dataclass
class Outer:
    name: str
    n: int = 3
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    opt: float | None = None


def test_round_trip_and_defaults():
    cfg = from_dict(Outer, {"name": "x", "inner": {"rate": 2}, "tags": ["a"]})
    assert cfg.inner.rate == 2.0 and isinstance(cfg.inner.rate, float)
    assert cfg.n == 3 and cfg.tags == ["a"] and cfg.opt is None


@pytest.mark.parametrize(
    "data, key",
    [
        ({"name": "x", "inner": {"rat": 2}}, "inner.rat"),
        ({"name": "x", "n": "three"}, "n"),
        ({"name": "x", "n": True}, "n"),
        ({}, "name"),
        ({"name": "x", "tags": [1]}, "tags[0]"),
    ],
)
def test_errors_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        from_dict(Outer, data)


def test_load_config_names_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: bogus: unknown key"):
        load_config(p, Outer)


@dataclass
class Sized:
    n: int = bounded(4, "[1, 64]", "blocks held in memory")
    p: float = bounded(0.5, "[0, 1)")
    pair: tuple[float, float] = bounded((0.1, 0.2), "(0, 1]")
    free: float = 1.0                   # no range: still finite
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        check_fields(self)


@dataclass
class Holder:
    sized: Sized = field(default_factory=Sized)


@pytest.mark.parametrize("data, message", [
    ({"n": 0}, r"^sized\.n: must be in \[1, 64\], got 0 \(blocks held in memory\)$"),
    ({"n": 10**9}, r"^sized\.n: must be in \[1, 64\], got 1000000000"),
    ({"p": 1.0}, r"^sized\.p: must be in \[0, 1\), got 1\.0"),
    ({"p": math.nan}, r"^sized\.p: expected a finite number, got nan"),
    ({"pair": [0.5, 0.0]}, r"^sized\.pair\[1\]: must be in \(0, 1\]"),
    ({"free": math.inf}, r"^sized\.free: expected a finite number, got inf"),
    ({"extra": {"a": {"b": {1, 2}}}}, r"^sized\.extra\.a\.b: expected plain data"),
])
def test_declared_ranges_name_the_dotted_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Holder, {"sized": data})


def test_ranges_hold_for_direct_construction_and_parse_intervals():
    with pytest.raises(FieldError, match=r"^n: must be in \[1, 64\]"):
        Sized(n=100)
    r = Range.parse("(0, 1e6]")
    assert (r.lo, r.hi, r.lo_open, r.hi_open) == (0, 1000000, True, False)
    assert str(r) == "(0, 1000000]" and not r.holds(0) and r.holds(1e6) and not r.holds(math.nan)
    for bad in ("0, 1", "[1, 0]", "[0, inf]", "[a, 1]"):
        with pytest.raises(ValueError):
            Range.parse(bad)


def test_plain_data_round_trips():
    extra = {"anon": True, "client_kwargs": {"region_name": "x"}, "n": 3, "t": 1.5,
             "token": None, "list": [1, "a", {"b": False}]}
    cfg = from_dict(Holder, {"sized": {"extra": extra}})
    assert cfg.sized.extra == extra
    import yaml

    assert from_dict(Holder, yaml.safe_load(to_yaml(cfg))) == cfg


def test_a_literal_choice_is_type_exact():
    from typing import Literal

    @dataclass
    class Choice:
        c: Literal[1, "a"] = 1

    assert from_dict(Choice, {"c": "a"}).c == "a"
    for bad in (True, 1.0, "1"):
        with pytest.raises(ConfigError, match=r"^c: must be one of \[1, 'a'\]"):
            from_dict(Choice, {"c": bad})
