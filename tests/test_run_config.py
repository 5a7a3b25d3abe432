"""The one config tree of a run: every YAML under configs/ loads through the one loader,
dotted command-line overrides, --print-config round trips, errors name key and file. (What a
run's tree holds and refuses: tests/test_setting_homes.py.)"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from polar_data.config.data_config import DATA_SECTIONS, DataConfig, load_data_config
from polar_data.config.typed_yaml import (
    ConfigError,
    apply_overrides,
    from_dict,
    split_overrides,
    to_dict,
)
from polar_model.config import BaselineConfig, PolarConfig
from polar_model.training import trainer
from polar_model.training.run_config import (
    CLI_SECTIONS,
    SECTIONS,
    RunConfig,
    TrainConfig,
    load_run_config,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = sorted((ROOT / "configs/data").glob("*.yaml"))
MODELS = sorted((ROOT / "configs/model").glob("*.yaml"))
TRAINS = sorted((ROOT / "configs/train").glob("*.yaml"))


def _subset(want, have) -> bool:
    """Every value the YAML file gives is the loaded value (lists vs tuples aside)."""
    if isinstance(want, dict):
        return all(_subset(v, have[k]) for k, v in want.items())
    return to_dict(have) == to_dict(want) or (want is None and have is None) or \
        (isinstance(want, int | float) and not isinstance(want, bool) and
         float(want) == float(have))


@pytest.mark.parametrize("path", DATA, ids=lambda p: p.name)
def test_every_data_yaml_loads_with_its_sections(path):
    cfg = load_data_config(path)  # what the build reads
    assert isinstance(cfg, DataConfig)
    given = yaml.safe_load(path.read_text())
    for section in ("store", "loader", "demo", "nwb", "sessions"):
        if section in given:
            assert _subset(given[section], to_dict(getattr(cfg, section))), section
    run = load_run_config(data=path)  # what training reads: the loader and the store
    assert _subset(given.get("loader", {}), to_dict(run.loader))
    assert run.loader.store == (cfg.loader.store or str(cfg.store.out_dir))


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_every_model_yaml_loads_by_its_kind(path):
    cfg = load_run_config(model=path)
    given = yaml.safe_load(path.read_text())
    want = BaselineConfig if given.get("kind") == "resnet_convgru" else PolarConfig
    assert type(cfg.model) is want and _subset(given, to_dict(cfg.model))


@pytest.mark.parametrize("path", TRAINS, ids=lambda p: p.name)
def test_every_train_yaml_loads(path):
    cfg = load_run_config(train=path)
    assert isinstance(cfg.train, TrainConfig)
    assert _subset(yaml.safe_load(path.read_text()) or {}, to_dict(cfg.train))  # {}: defaults


def test_yaml_count():  # the globs above found the files
    assert len(DATA) >= 2 and len(MODELS) >= 7 and len(TRAINS) >= 1


def _load(*argv, **files):
    overrides, rest = split_overrides(list(argv), CLI_SECTIONS)
    assert rest == []
    return load_run_config(overrides=overrides, **files)


def _load_data(*argv) -> DataConfig:
    """The data config with dotted overrides, as pipelines/build_shards.py applies them."""
    overrides, rest = split_overrides(list(argv), DATA_SECTIONS)
    assert rest == []
    return from_dict(DataConfig, apply_overrides(DataConfig, to_dict(DataConfig()), overrides))


def test_dotted_overrides_of_every_value_type():
    cfg = _load("--model.n_pairs", "12",                 # int
                "--train.lr", "3e-3",                    # float (YAML 1.1 reads a string)
                "--model.use_jepa=true",                 # bool, --key=value form
                "--train.ema_decay", "0.99",
                "--loader.sample_len", "null",           # None
                "--model.readout_weight_std", "~",
                "--train.betas", "[0.8, 0.9]",           # list -> tuple
                "--loader.storage_options", "{anon: true, client_kwargs: {region_name: x}}",
                "--loader.batch_size", "16", "--loader.kind", "zarr",
                "--model.name", "1e3",                   # a text field keeps its text
                model=ROOT / "configs/model/full.yaml")
    m = cfg.model
    assert m.n_pairs == 12 and m.use_jepa is True and m.readout_weight_std is None
    assert m.name == "1e3" and m.jepa_delta == 4  # the file's other values stay
    assert cfg.train.lr == 3e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.betas == (0.8, 0.9) and cfg.train.ema_decay == 0.99
    assert cfg.loader.sample_len is None  # mapping:
    assert cfg.loader.storage_options == {"anon": True, "client_kwargs": {"region_name": "x"}}
    assert cfg.loader.batch_size == 16 and cfg.loader.kind == "zarr"
    data = _load_data("--store.window_len", "null",            # None
                      "--demo.gaze.blink_rate_hz", "0.5",      # nested dataclass key
                      "--store.splits", "{train: 0.8, val: 0.1, test: 0.1}")  # mapping
    assert data.store.window_len is None and data.store.splits["train"] == 0.8
    assert data.demo.gaze.blink_rate_hz == 0.5


def test_override_a_key_inside_a_mapping_and_of_the_baseline():
    cfg = _load("--loader.storage_options.anon", "true", "--loader.storage_options.timeout",
                "2.5", "--model.res_channels", "[16, 32]",
                model=ROOT / "configs/model/baseline.yaml")
    assert cfg.loader.storage_options == {"anon": True, "timeout": 2.5}
    assert isinstance(cfg.model, BaselineConfig) and cfg.model.res_channels == (16, 32)
    data = _load_data("--store.splits.val", "0.2", "--store.splits.test", "0.1")
    assert data.store.splits == {"train": 0.7, "val": 0.2, "test": 0.1}


@pytest.mark.parametrize("argv, message", [
    (["--model.n_pair", "3"], r"command line: --model\.n_pair: unknown key"),
    (["--model.gaze.x", "3"], r"command line: --model\.gaze: unknown key"),
    (["--train.lr", "fast"], r"command line: --train\.lr: expected a number, got 'fast'"),
    (["--loader.batch_size", "1.5"], r"--loader\.batch_size: expected an integer"),
    (["--model.use_behavior", "maybe"], r"--model\.use_behavior: expected true/false"),
    (["--model.temporal", "sometimes"], r"--model\.temporal: must be one of"),
    (["--model.n_pairs", "0"],
     r"full\.yaml \+ --model\.n_pairs: model\.n_pairs: must be in \[1, \d+\], got 0"),
    (["--train.lr", "nan"], r"command line: --train\.lr: expected a finite number, got nan"),
    (["--train.betas", "[0.9, 1.5]"], r"--train\.betas: train\.betas\[1\]: must be in \[0, 1\)"),
    (["--train.precision", "bogus"], r"--train\.precision: must be one of"),
    (["--loader.kind", "tar"], r"--loader\.kind: must be one of \['wds', 'zarr'\]"),
])
def test_override_errors_name_the_key_and_where(argv, message):
    with pytest.raises(ConfigError, match=message):
        _load(*argv, model=ROOT / "configs/model/full.yaml")


def test_file_errors_name_the_file_and_the_key(tmp_path):
    bad = tmp_path / "bad_model.yaml"
    bad.write_text("kind: polar\nn_pairs: many\n")
    with pytest.raises(ConfigError, match=r"bad_model\.yaml: n_pairs: expected an integer"):
        load_run_config(model=bad)
    data = tmp_path / "bad_data.yaml"
    data.write_text("loader:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"bad_data\.yaml: loader\.batch_sise: unknown key"):
        load_run_config(data=data)
    data.write_text("model: {n_pairs: 3}\n")  # a data file holds data sections only
    with pytest.raises(ConfigError, match=r"bad_data\.yaml: model: unknown key"):
        load_run_config(data=data)


def test_unknown_command_line_option_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        trainer.main(["--modle", "x.yaml"])
    assert e.value.code == 2 and "--modle" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not a section of the tree: argparse refuses it
        trainer.main(["--print-config", "--bogus.key", "1"])
    assert "--bogus.key" in capsys.readouterr().err


def test_switching_the_model_kind_starts_from_that_kind_s_defaults():
    cfg = _load("--model.kind", "resnet_convgru", "--model.gru_hidden", "8",
                model=ROOT / "configs/model/full.yaml")
    assert isinstance(cfg.model, BaselineConfig) and cfg.model.gru_hidden == 8
    assert cfg.model.temporal_kernel == BaselineConfig().temporal_kernel


def test_print_config_round_trips(tmp_path, capsys):
    argv = ["--model", str(ROOT / "configs/model/baseline.yaml"), "--model.gru_hidden", "32",
            "--train.lr", "1e-2", "--loader.batch_size", "4", "--max-steps", "7",
            "--print-config"]
    assert trainer.main(argv) == 0
    printed = capsys.readouterr().out
    a, overrides = trainer.parse_args(argv)
    want = trainer.resolve_config(a, overrides)
    assert want.train.max_steps == 7 and want.model.gru_hidden == 32
    (tmp_path / "run.yaml").write_text(printed)
    assert load_run_config(config=tmp_path / "run.yaml") == want
    assert trainer.main(["--config", str(tmp_path / "run.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out == printed
    assert set(yaml.safe_load(printed)) == set(SECTIONS)


def test_defaults_are_the_readme_files():
    a, overrides = trainer.parse_args([])
    cfg = trainer.resolve_config(a, overrides)
    assert cfg.model.name == "full" and cfg.train.lr == 1e-3  # full.yaml, cpu_demo.yaml
    assert cfg == load_run_config(data=ROOT / "configs/data/demo.yaml",
                                  model=ROOT / "configs/model/full.yaml",
                                  train=ROOT / "configs/train/cpu_demo.yaml")
    assert not isinstance(RunConfig(), DataConfig)  # the build sections are the build's


def test_the_script_prints_its_config():
    done = subprocess.run([sys.executable, str(ROOT / "pipelines/train.py"), "--print-config",
                           "--model.n_pairs", "3"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert yaml.safe_load(done.stdout)["model"]["n_pairs"] == 3


def test_build_shards_and_evaluate_print_their_config(capsys):
    from helpers import load_pipeline

    from polar_model.training import report

    build = load_pipeline("build_shards")
    assert build.main(["--print-config", "--store.window_len", "20", "--out", "x/store"]) == 0
    tree = yaml.safe_load(capsys.readouterr().out)
    assert tree["store"]["window_len"] == 20 and tree["store"]["out_dir"] == "x/store"
    assert build.main(["--print-config", "--store.windowlen", "20"]) == 2
    assert "store.windowlen: unknown key" in capsys.readouterr().err
    assert report.main(["--print-config", "--loader.store", "s3://lab/store"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["loader"]["store"] == "s3://lab/store"
