from dataclasses import dataclass, field

import pytest

from polar_data.typed_yaml import ConfigError, from_dict, load_config


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
