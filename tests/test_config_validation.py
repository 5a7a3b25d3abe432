"""Every setting is validated at load: ranges, finite numbers, types and choices, named by
the dotted key (and the file or flag it came from); the CLIs exit 2. YAML anchors / aliases
are refused (an alias bomb returns at once); ``storage_options`` takes what fsspec takes."""

import dataclasses
import math
import signal
import time
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest
import yaml

from polar_data.config.data_config import DataConfig, StoreConfig
from polar_data.config.typed_yaml import ConfigError, from_dict, load_config, override, to_yaml
from polar_model.config import load_model_config
from polar_model.training import trainer
from polar_model.training.run_config import TrainConfig, load_run_config

ROOT = Path(__file__).resolve().parents[1]
def _tree(cls, seen=None) -> list:
    """Every dataclass reachable from ``cls`` through its fields (unions included)."""
    seen = [] if seen is None else seen
    if cls in seen:
        return seen
    seen.append(cls)
    for tp in typing.get_type_hints(cls).values():
        for arg in (tp, *get_args(tp)):
            if dataclasses.is_dataclass(arg):
                _tree(arg, seen)
    return seen


OWNED = tuple(dict.fromkeys(_tree(trainer.RunConfig) + _tree(DataConfig)))


@contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging the suite) when the block runs past ``seconds``."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _esc(key: str) -> str:
    return key.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")


# --------------------------------------------------------------- the absurd values of item 13

ABSURD = [
    ("train.head_lr_mult", "-30"),      # gradient ascent on the heads
    ("train.weight_decay", "-1"),
    ("train.grad_clip", "-1"),
    ("train.max_epochs", "0"),
    ("train.lr", ".nan"),
    ("train.lr", "inf"),
    ("train.betas", "[2, .5]"),
    ("train.val_every_steps", "0"),
    ("train.log_every_steps", "0"),
    ("train.precision", "bogus"),
    ("train.seed", "-1"),
    ("loader.batch_size", "100000"),
    ("store.chunk_bins", "1000000000"),
    ("store.zstd_level", "99"),
    ("model.n_pairs", "100000"),
    ("model.lambda_fix", "-1"),
    ("model.readout_sigma_px", "-1"),
    ("demo.n_sessions", "100000"),
]


@pytest.mark.parametrize("key, value", ABSURD, ids=[f"{k}={v}" for k, v in ABSURD])
def test_absurd_overrides_exit_2_naming_the_key(key, value, capsys):
    assert trainer.main(["--print-config", f"--{key}", value]) == 2
    err = capsys.readouterr().err
    assert f"--{key}" in err and key.split(".", 1)[1] in err, err
    assert "Traceback" not in err


FILE_ABSURD = [
    ("head_lr_mult: -30", "head_lr_mult", r"must be in \(0, "),
    ("weight_decay: -1", "weight_decay", r"must be in \[0, "),
    ("grad_clip: -1.0", "grad_clip", r"must be in \[0, "),
    ("max_epochs: 0", "max_epochs", r"must be in \[1, "),
    ("lr: .nan", "lr", "expected a finite number, got nan"),
    ("betas: [2, .5]", r"betas[0]", r"must be in \[0, 1\)"),
    ("betas: [0.9, 1.0]", r"betas[1]", r"must be in \[0, 1\)"),
    ("val_every_steps: 0", "val_every_steps", r"must be in \[1, "),
    ("precision: bogus", "precision", "must be one of .*'bf16-mixed'.*'32-true'.*got 'bogus'"),
    ("ema_decay: 1.0", "ema_decay", r"must be in \(0, 1\)"),
]


@pytest.mark.parametrize("text, key, message", FILE_ABSURD, ids=[t for t, _, _ in FILE_ABSURD])
def test_absurd_train_file_values_name_the_file_and_the_key(tmp_path, text, key, message):
    bad = tmp_path / "bad_train.yaml"
    bad.write_text(text + "\n")
    with pytest.raises(ConfigError, match=rf"bad_train\.yaml: {_esc(key)}: {message}"):
        load_run_config(train=bad)
    assert trainer.main(["--train", str(bad), "--print-config"]) == 2


def test_lightning_s_precisions_are_accepted():
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

    for p in get_args(_PRECISION_INPUT):  # a Literal of Lightning's accepted values
        for v in get_args(p):
            assert from_dict(TrainConfig, {"precision": v}).precision == v


def test_chunk_bins_1e9_is_refused_with_the_bound(capsys, tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text("store: {chunk_bins: 1000000000}\n")
    with pytest.raises(ConfigError, match=r"data\.yaml: store\.chunk_bins: must be in \[1, "
                                          r"\d+\], got 1000000000 \(.*MB"):
        load_run_config(data=data)
    from helpers import load_pipeline

    build = load_pipeline("build_shards")
    assert build.main(["--print-config", "--store.chunk_bins", "1000000000"]) == 2
    assert "store.chunk_bins: must be in [1, " in capsys.readouterr().err


def test_a_demo_session_too_large_to_hold_is_refused_in_gib():
    with pytest.raises(ConfigError, match=r"demo: .*GiB.*duration_s"):
        from_dict(DataConfig, {"demo": {"duration_s": 80000.0, "crop_px": 512}})


def test_a_model_name_cannot_leave_the_runs_folder(capsys):
    assert trainer.main(["--print-config", "--model.name", "../../etc/x"]) == 2
    assert "model.name" in capsys.readouterr().err


def test_cross_key_checks_name_their_dotted_key():
    with pytest.raises(ConfigError, match=r"^store\.splits: "):
        from_dict(DataConfig, {"store": {"splits": {"train": 0.5, "val": 0.1, "test": 0.1}}})
    with pytest.raises(ConfigError, match=r"^demo\.n_units: "):
        from_dict(DataConfig, {"demo": {"n_units": [40, 24]}})
    with pytest.raises(ConfigError, match=r"^demo\.trial_s: "):
        from_dict(DataConfig, {"demo": {"trial_s": [6.0, 3.0]}})
    with pytest.raises(ConfigError, match=r"^model\.filter_size: must be odd"):
        from_dict(trainer.RunConfig, {"model": {"filter_size": 8}})


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match=r"^lr: must be in"):
        TrainConfig(lr=math.nan)
    with pytest.raises(ValueError, match=r"^chunk_bins: "):  # a ConfigError is a ValueError
        StoreConfig(chunk_bins=10**9)


# --------------------------------------------------------------- every field of every config


def _numeric(tp) -> bool:
    """int / float fields, also inside ``X | None``, tuples, lists and mappings."""
    if tp in (int, float):
        return True
    if get_origin(tp) is Literal:
        return False
    return any(_numeric(a) for a in get_args(tp) if a is not type(None))


def _fields(cls):
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


NUMERIC = [(cls, f.name, tp) for cls in OWNED for f, tp in _fields(cls) if _numeric(tp)]


@pytest.mark.parametrize("cls, name, tp", NUMERIC,
                         ids=[f"{c.__name__}.{n}" for c, n, _ in NUMERIC])
def test_every_numeric_field_has_a_range_and_refuses_what_lies_outside(cls, name, tp):
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    bound = field.metadata.get("range")
    assert bound is not None, f"{cls.__name__}.{name} declares no range"
    assert bound.hi is not None and bound.lo is not None, "a finite range, both ends"
    is_float = float in get_args(tp) + (tp,) or any(
        float in get_args(a) for a in get_args(tp))
    outside = [bound.hi if bound.hi_open else bound.hi + 1,
               bound.lo if bound.lo_open else bound.lo - 1]
    if is_float:
        outside += [math.nan, math.inf, -math.inf]
    default = getattr(cls(), name)
    bound.check(name, default)  # the default lies inside
    for bad in outside:
        if isinstance(default, tuple):
            value, key = [bad] * len(default), rf"{name}\[0\]"
        elif isinstance(default, dict):
            value, key = dict.fromkeys(default, bad), rf"{name}\.\w+"
        else:
            value, key = bad, name
        with pytest.raises(ConfigError, match=rf"^{key}: "):
            from_dict(cls, {name: value})


CHOICE = [(cls, f.name) for cls in OWNED for f, tp in _fields(cls)
          if tp is str and f.name not in ("name", "store")]


def test_text_fields_that_are_choices_are_literals():
    assert CHOICE == [], "a text field of fixed choices should be a Literal"


# --------------------------------------------------------------- YAML anchors and aliases

BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def _bomb(tmp_path) -> Path:
    """The bomb under a key that takes any mapping (nwb.storage_options): 9^9 strings."""
    p = tmp_path / "bomb.yaml"
    body = "".join(f"    {line}\n" for line in BOMB.splitlines())
    p.write_text("nwb:\n  storage_options:\n" + body)
    return p


def test_an_alias_bomb_returns_at_once_naming_the_file(tmp_path, capsys):
    bomb = _bomb(tmp_path)
    for load in (lambda: load_run_config(data=bomb), lambda: load_config(bomb, DataConfig),
                 lambda: load_model_config(bomb), lambda: load_run_config(config=bomb)):
        with deadline(20):
            t0 = time.perf_counter()
            with pytest.raises(ConfigError, match=r"bomb\.yaml: line \d+: .*alias"):
                load()
            assert time.perf_counter() - t0 < 1.0
    with deadline(20):
        assert trainer.main(["--data", str(bomb), "--print-config"]) == 2
    assert "bomb.yaml" in capsys.readouterr().err


def test_any_anchor_or_alias_is_refused(tmp_path):
    p = tmp_path / "alias.yaml"
    p.write_text("lr: &x 0.01\nweight_decay: *x\n")
    with pytest.raises(ConfigError, match=r"alias\.yaml: line 1: .*anchors and aliases"):
        load_run_config(train=p)
    p.write_text("base: &b {lr: 0.01}\ntrain:\n  <<: *b\n")
    with pytest.raises(ConfigError, match=r"alias\.yaml: line 1: "):
        load_run_config(config=p)


def test_an_alias_on_the_command_line_is_refused(capsys):
    assert trainer.main(["--print-config", "--train.betas", "[&x 0.9, *x]"]) == 2
    assert "--train.betas" in capsys.readouterr().err


def test_malformed_yaml_names_the_file(tmp_path, capsys):
    p = tmp_path / "broken.yaml"
    p.write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: line \d+: not valid YAML"):
        load_run_config(train=p)
    assert trainer.main(["--train", str(p), "--print-config"]) == 2
    assert trainer.main(["--print-config", "--train.betas", "[0.9,"]) == 2
    assert "--train.betas" in capsys.readouterr().err


# --------------------------------------------------------------- storage_options


OPTIONS = {"anon": True, "client_kwargs": {"region_name": "eu-west-1",
                                           "endpoint_url": "http://127.0.0.1:9000"},
           "config_kwargs": {"retries": {"max_attempts": 5}}, "default_block_size": 5242880,
           "requester_pays": False, "token": None, "skip_instance_cache": True,
           "default_cache_type": "readahead", "timeout": 2.5, "versions": ["a", "b"]}


def test_storage_options_take_what_fsspec_takes_and_round_trip(tmp_path):
    p = tmp_path / "data.yaml"
    p.write_text(yaml.safe_dump({"loader": {"storage_options": OPTIONS},
                                 "nwb": {"storage_options": {"anon": True}}}))
    cfg = load_run_config(data=p)
    assert cfg.loader.storage_options == OPTIONS
    again = tmp_path / "again.yaml"
    again.write_text(to_yaml(cfg))
    assert load_run_config(config=again) == cfg
    data = load_config(p, DataConfig)  # the build's view of the same file
    assert data.nwb.storage_options == {"anon": True}
    again.write_text(to_yaml(data))
    assert load_config(again, DataConfig) == data


def test_storage_options_from_the_command_line(capsys):
    cfg = load_run_config(overrides=[("loader.storage_options.anon", "true"),
                                     ("loader.storage_options.client_kwargs",
                                      "{region_name: x}")])
    assert cfg.loader.storage_options == {"anon": True, "client_kwargs": {"region_name": "x"}}
    data = override(DataConfig(), [("nwb.storage_options", "{anon: true}")])  # the build's
    assert data.nwb.storage_options == {"anon": True}


NOT_PLAIN = [
    ("{expires: 2024-01-01}", "expires"),          # a date is not plain JSON-like data
    ("{timeout: .nan}", "timeout"),
    ("{client_kwargs: {1: x}}", "client_kwargs"),  # keys are text
    ("[anon]", "expected a mapping"),
]


@pytest.mark.parametrize("value, key", NOT_PLAIN, ids=[v for v, _ in NOT_PLAIN])
def test_storage_options_refuse_what_is_not_plain_data(tmp_path, value, key):
    p = tmp_path / "data.yaml"
    p.write_text("loader:\n  storage_options: {anon: true, client_kwargs: {region_name: x}}\n")
    assert load_run_config(data=p).loader.storage_options["anon"] is True  # plain: taken
    p.write_text(f"loader:\n  storage_options: {value}\n")
    with pytest.raises(ConfigError, match=rf"data\.yaml: loader\.storage_options.*{key}"):
        load_run_config(data=p)


# --------------------------------------------------------------- the shipped configs


def test_every_shipped_config_loads_together():
    for data in sorted((ROOT / "configs/data").glob("*.yaml")):
        for model in sorted((ROOT / "configs/model").glob("*.yaml")):
            for train in sorted((ROOT / "configs/train").glob("*.yaml")):
                cfg = load_run_config(data=data, model=model, train=train)
                assert from_dict(type(cfg), yaml.safe_load(to_yaml(cfg))) == cfg
