"""One home per setting: the dataclass defaults are the default run's recipe and the shipped
YAMLs list only what differs; every shipped combination resolves as it did before (the
snapshot ``fixtures/resolved_configs.json``, taken with the code before the defaults moved);
a run's config holds only what training reads (build keys refused by name); the window rule
runs once per training; a checkpoint carries each setting once; the run log has one path."""

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import torch
import yaml
from conftest import data_config, train_config

from polar_data.config.data_config import BUILD_SECTIONS, DataConfig, LoaderConfig, load_data_config
from polar_data.config.typed_yaml import ConfigError, read_mapping, to_dict
from polar_model.config import BaselineConfig, PolarConfig, config_from_dict
from polar_model.training import trainer
from polar_model.training.run_config import SECTIONS, RunConfig, TrainConfig, load_run_config

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = json.loads((Path(__file__).parent / "fixtures/resolved_configs.json").read_text())
DEFAULT_RUN = {"data": ROOT / "configs/data/demo.yaml", "model": ROOT / "configs/model/full.yaml",
               "train": ROOT / "configs/train/cpu_demo.yaml"}
MODELS = sorted((ROOT / "configs/model").glob("*.yaml"))
DELETED = {"resnet_convgru": {"use_jepa", "lambda_jepa"}}  # the baseline's JEPA shims
# settings a Polar-V1 config without JEPA never reads (their old defaults were not kept)
JEPA_ONLY = {"jepa_delta", "min_context", "jepa_dim", "jepa_ema", "lambda_jepa",
             "jepa_max_grad_ratio", "jepa_warmup_steps", "jepa_stop_grad", "jepa_balance_every"}


def _files(key: str) -> dict:
    data, model, train = key.split("+")
    return {"data": ROOT / "configs/data" / data, "model": ROOT / "configs/model" / model,
            "train": ROOT / "configs/train" / train}


def _compared_model(tree: dict) -> dict:
    skip = DELETED.get(tree.get("kind"), set())
    if tree.get("kind") == "polar" and not tree["use_jepa"]:
        skip = skip | JEPA_ONLY
    return {k: v for k, v in tree.items() if k not in skip}


@pytest.mark.parametrize("key", sorted(SNAPSHOT["run"]))
def test_every_shipped_combination_resolves_as_before(key):
    old = SNAPSHOT["run"][key]
    new = to_dict(load_run_config(**_files(key)))
    assert set(new) == {"loader", "model", "train"}
    assert _compared_model(new["model"]) == _compared_model(old["model"])
    assert new["train"] == old["train"]
    store = old["loader"]["store"] or old["store"]["out_dir"]  # where training read it
    assert new["loader"] == {**old["loader"], "store": store}


@pytest.mark.parametrize("name", sorted(SNAPSHOT["data"]))
def test_every_data_file_builds_as_before(name):
    path = None if name == "(no file)" else ROOT / "configs/data" / name
    new, old = to_dict(load_data_config(path)), SNAPSHOT["data"][name]
    if path is None:  # the bare defaults: the loader's moved to the demo's on purpose
        new, old = ({k: t[k] for k in BUILD_SECTIONS} for t in (new, old))
    assert new == old


def test_the_snapshot_covers_every_shipped_file():
    data = {p.name for p in (ROOT / "configs/data").glob("*.yaml")}
    combos = {tuple(k.split("+")) for k in SNAPSHOT["run"]}
    assert {d for d, _, _ in combos} == data and {m for _, m, _ in combos} == {
        p.name for p in MODELS}
    assert data < set(SNAPSHOT["data"])


def test_the_defaults_are_the_default_run():
    cfg = load_run_config(**DEFAULT_RUN)
    assert dataclasses.replace(cfg.model, name=PolarConfig().name) == PolarConfig()
    assert cfg.train == TrainConfig()
    # the loader's sample_len (None: the store's own) and eval_batch_size (None: batch_size)
    # stay relative to the store, so that they serve any store; the demo file sets them
    assert dataclasses.replace(cfg.loader, sample_len=None, eval_batch_size=None) == \
        LoaderConfig(store=cfg.loader.store)
    assert cfg.loader.eval_batch_size == cfg.loader.batch_size
    demo = load_data_config(DEFAULT_RUN["data"])
    for section in BUILD_SECTIONS:
        assert getattr(demo, section) == getattr(DataConfig(), section), section


def _defaults_of(path: Path) -> dict:
    parent = path.parent.name
    if parent == "model":
        given = read_mapping(path)
        return to_dict(type(config_from_dict(given))())
    return to_dict(TrainConfig() if parent == "train" else DataConfig())


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_yamls_list_only_what_differs_from_the_defaults(path):
    given, defaults = read_mapping(path), _defaults_of(path)

    def walk(g, d, where):
        for k, v in g.items():
            if isinstance(v, dict) and isinstance(d.get(k), dict) and k != "splits":
                walk(v, d[k], f"{where}{k}.")
            elif not (where == "" and k == "kind" and path.parent.name == "model"):
                assert to_dict(v) != d[k], f"{path.name}: {where}{k} is the default"

    walk(given, defaults, "")


# ----------------------------------------------------------------- what a run config holds


@pytest.mark.parametrize("flag, value", [("--store.window_len", "20"),
                                         ("--store.clip_len", "64"),
                                         ("--demo.n_sessions", "2"),
                                         ("--nwb.spikes", "raster"),
                                         ("--store.out_dir", "x")])
def test_a_build_key_on_the_train_command_line_is_refused_naming_where_it_belongs(
        flag, value, capsys):
    assert trainer.main(["--print-config", flag, value]) == 2
    err = capsys.readouterr().err
    key = flag[2:]
    assert f"--{key}: {key} is a build setting (pipelines/build_shards.py" in err, err
    if key == "store.out_dir":
        assert "loader.store" in err
    else:
        assert "from the store" in err


def test_a_build_section_in_a_whole_run_config_is_refused(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("store: {window_len: 20}\nmodel: {n_pairs: 4}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: store is a build setting"):
        load_run_config(config=p)


def test_a_data_file_gives_training_its_loader_and_store_location(tmp_path):
    """The rule: of a data file training reads ``loader`` and the store's location
    (``loader.store``, else ``store.out_dir``); its build sections are the build's."""
    p = tmp_path / "data.yaml"
    p.write_text("store: {out_dir: somewhere/store, window_len: 20}\ndemo: {n_sessions: 2}\n"
                 "loader: {batch_size: 3}\n")
    cfg = load_run_config(data=p)
    assert cfg.loader.store == "somewhere/store" and cfg.loader.batch_size == 3
    p.write_text("store: {out_dir: somewhere/store}\nloader: {store: s3://lab/store}\n")
    assert load_run_config(data=p).loader.store == "s3://lab/store"
    p.write_text("store: {window_len: 0}\n")  # still checked whole: a typo is an error
    with pytest.raises(ConfigError, match=r"data\.yaml: store\.window_len: must be in"):
        load_run_config(data=p)


def _keys(tree: dict, prefix="") -> list[str]:
    out = []
    for k, v in tree.items():
        if isinstance(v, dict) and v and k != "storage_options":
            out += _keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


@pytest.fixture
def reads(monkeypatch):
    """Every config field read (``section.key``) while the block runs."""
    seen: set[str] = set()
    sections = {LoaderConfig: "loader", PolarConfig: "model", BaselineConfig: "model",
                TrainConfig: "train"}
    for cls, section in sections.items():
        names = {f.name for f in dataclasses.fields(cls)}

        def get(self, name, _names=names, _section=section):
            if name in _names:
                seen.add(f"{_section}.{name}")
            return object.__getattribute__(self, name)

        monkeypatch.setattr(cls, "__getattribute__", get)
    return seen


@pytest.mark.slow  # a few short trainings (one per loader kind and mode) and every model
def test_every_key_print_config_prints_is_read_by_training(tmp_path, tiny_store, capsys,
                                                          reads):
    """Each key of ``train.py --print-config`` changes the run: training reads it (with the
    loader kind, mode or model it belongs to); ``model.kind`` picks the model class."""
    from test_quality import _batch, _spec

    from polar_model.training.lit_module import EncodingModule

    assert trainer.main(["--print-config"]) == 0
    printed = set(_keys(yaml.safe_load(capsys.readouterr().out)))
    assert {k.split(".")[0] for k in printed} == set(SECTIONS)
    reads.clear()
    tc = train_config(tmp_path, max_steps=2, ema_decay=0.9)
    for i, (kind, mode) in enumerate([("wds", "clip"), ("wds", "window"), ("zarr", "clip"),
                                      ("zarr", "window")]):
        d = tmp_path / f"d{i}"
        d.mkdir()
        data = data_config(d, tiny_store, kind=kind, mode=mode, batches_per_epoch=2,
                           sample_len=None)
        assert trainer.main(["--data", str(data), "--model",
                             str(ROOT / "configs/model/minimal.yaml"), "--train", str(tc),
                             "--out", str(d / "run"), "--no-progress"]) == 0
    capsys.readouterr()
    variants = [*MODELS, {"saccade_detector": "fixed", "jepa_warmup_steps": 5}]
    for v in variants:
        given = read_mapping(v) if isinstance(v, Path) else v
        cfg = config_from_dict(given)
        mod = EncodingModule.create(cfg, _spec(), TrainConfig()).train()
        stim, gaze, y = _batch()
        out = mod.model(stim, gaze, 0)
        if out.jepa_loss is not None:
            nll = out.log_rate.exp().mean()
            mod.jepa_weight(nll, out.jepa_loss)
    unread = sorted(printed - reads - {"model.kind"})
    assert unread == [], f"printed by --print-config but never read by training: {unread}"


# ----------------------------------------------------------------- the window rule, once


def test_the_window_check_runs_once_per_training(tmp_path, tiny_store, monkeypatch):
    import sys

    import polar_model.window_rule as window_rule

    real, calls = window_rule.check_window_len, []

    def counted(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    for mod in list(sys.modules.values()):  # every module that holds the function
        if getattr(mod, "check_window_len", None) is real:
            monkeypatch.setattr(mod, "check_window_len", counted)
    data = data_config(tmp_path, tiny_store)
    assert trainer.main(["--data", str(data), "--model", str(ROOT / "configs/model/minimal.yaml"),
                         "--train", str(train_config(tmp_path, max_steps=2)), "--out",
                         str(tmp_path / "run"), "--no-progress"]) == 0
    assert len(calls) == 1, calls



def test_the_build_refuses_a_short_window_with_the_trainings_message(tmp_path, capsys):
    """build_shards.py --model-config with a store.window_len too short: the model side's one
    check and message (WindowTooShort), exit 2, nothing built."""
    import importlib.util

    from polar_model.config import load_model_config
    from polar_model.window_rule import WindowTooShort

    spec = importlib.util.spec_from_file_location("build_shards",
                                                  ROOT / "pipelines/build_shards.py")
    build_shards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_shards)
    model = ROOT / "configs/model/full.yaml"
    out = tmp_path / "store"
    assert build_shards.main(["--model-config", str(model), "--store.window_len", "6",
                              "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    want = WindowTooShort(load_model_config(model), 6, "the data config (store.window_len)",
                          str(model))
    assert err.strip() == f"error: {want}"
    assert not (out / "build.json").exists()

# ----------------------------------------------------------------- a checkpoint, each once


def test_a_checkpoint_carries_each_setting_once(tmp_path, tiny_store):
    from polar_model.training.store_facts import SPEC_FACTS

    data = data_config(tmp_path, tiny_store)
    run = tmp_path / "run"
    assert trainer.main(["--data", str(data), "--model", str(ROOT / "configs/model/minimal.yaml"),
                         "--train", str(train_config(tmp_path, max_steps=2)), "--out", str(run),
                         "--no-progress"]) == 0
    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert set(hp) == {"run_config", "spec"}
    assert set(hp["run_config"]) == set(SECTIONS)
    facts = ckpt["data_facts"]
    assert not set(facts) & set(SPEC_FACTS), "data_facts repeats the spec"
    assert not set(facts) & set(hp["spec"])
    assert {"pixel_mean", "pixel_std", "unit_ids", "manifest_sha256"} <= set(facts)
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written == hp["run_config"]


# ----------------------------------------------------------------- the run log, one path


def test_the_run_log_has_one_path(tmp_path):
    import subprocess

    from polar_model.training.runs import csv_logger, metrics_path

    assert metrics_path(tmp_path) == tmp_path / "logs" / "metrics.csv"
    logger = csv_logger(tmp_path)
    logger.log_metrics({"val/bps": 0.1}, step=0)
    logger.save()
    assert metrics_path(tmp_path).is_file()
    spelled = subprocess.run(["git", "grep", "-l", "metrics.csv", "--", "polar_model",
                              "polar_data", "pipelines"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert spelled == ["polar_model/training/runs.py"], spelled


def test_run_config_has_no_build_sections():
    hints = typing.get_type_hints(RunConfig)
    assert tuple(hints) == SECTIONS
    assert RunConfig().loader.store == str(DataConfig().store.out_dir)
