import pytest
import yaml
from helpers import load_pipeline, spike_times_from_counts, tiny_session

TINY_STORE = {"window_len": 6, "clip_len": 10, "target_rate_hz": 120.0, "chunk_bins": 32,
              "shard_target_mb": 0.01, "splits": {"train": 0.5, "val": 0.25, "test": 0.25}}


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory):
    """Three small NWB sessions (8 trials x 80 bins at 240 Hz, 9 x 9 crops)."""
    from polar_data.demo.nwb_writer import write_nwb

    d = tmp_path_factory.mktemp("sessions")
    paths = []
    for k in range(3):
        s = tiny_session(n_trials=8, bins_per_trial=80, n_units=3 + k, seed=k, name=f"s{k}")
        paths.append(write_nwb(s, d / f"s{k}.nwb", spike_times_from_counts(s), layout="crops"))
    return paths


def build_tiny(tmp_path, sources, out, *extra, **store):
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump({"store": {**TINY_STORE, "out_dir": str(out), **store}}))
    main = load_pipeline("build_shards").main
    return main(["--config", str(cfg), "--no-progress", *map(str, sources), *extra])


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_sources):
    """A finished store built from ``tiny_sources`` (treat as read-only)."""
    tmp = tmp_path_factory.mktemp("build")
    out = tmp / "store"
    assert build_tiny(tmp, tiny_sources, out) == 0
    return out


@pytest.fixture(scope="session")
def small_demo_store(tmp_path_factory):
    """A store built from two generated demo sessions (90 s, 21 x 21 crops of 3 deg, known
    rates): window 12 (enough for the JEPA configs), clips of 32, many shards per split."""
    from polar_data.demo.generate import DemoConfig, generate_session, natural_images
    from polar_data.demo.nwb_writer import write_nwb

    d = tmp_path_factory.mktemp("demo_small")
    cfg = DemoConfig(n_sessions=2, duration_s=90.0, crop_px=21, crop_deg=3.0, n_units=(6, 8))
    images = natural_images()
    paths = []
    for i in range(2):
        demo = generate_session(cfg, i, images)
        paths.append(write_nwb(demo.session, d / f"demo{i}.nwb", demo.spike_times,
                               layout="crops"))
    out = d / "store"
    assert build_tiny(d, paths, out, window_len=12, clip_len=32, shard_target_mb=0.05,
                      splits={"train": 0.7, "val": 0.15, "test": 0.15}) == 0
    return out


def data_config(tmp_path, store, **loader):
    """A data-config YAML pointing at ``store`` (zarr clip loader, no workers by default)."""
    p = tmp_path / "data.yaml"
    p.write_text(yaml.safe_dump({"loader": {"store": str(store), "kind": "zarr", "mode": "clip",
                                            "batch_size": 4, "num_workers": 0, **loader}}))
    return p


def train_config(tmp_path, **kw):
    p = tmp_path / "train.yaml"
    base = {"lr": 1e-2, "warmup_steps": 2, "max_steps": 1000, "max_epochs": 2,
            "val_every_steps": 1000, "log_every_steps": 1,
            "head_lr_mult": 1.0}  # the tests' runs: one lr for every parameter
    p.write_text(yaml.safe_dump({**base, **kw}))
    return p


@pytest.fixture
def object_store():
    """A local S3 server (moto) with a bucket ``lab``: yields (boto3 client, fsspec options)."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
        s3.create_bucket(Bucket="lab")
        yield s3, {"endpoint_url": endpoint, "key": "test", "secret": "test"}
    finally:
        server.stop()
        import s3fs  # a cached filesystem of this server must not serve a later test

        s3fs.S3FileSystem.clear_instance_cache()
