"""Loaders: contents, order, splits, ranks/workers, epochs, memory, object stores, bad stores."""

import shutil
import tarfile
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from polar_data.loaders.store_info import StoreInfo
from polar_data.loaders.streaming import ShardStream
from polar_data.loaders.zarr_windows import LocalityBatchSampler, ZarrWindows, identity
from polar_data.schema import SCHEMA_VERSION, SPLITS, StoreError
from polar_data.store.zarr_groups import open_store

W, L = 6, 10


@pytest.fixture(scope="module")
def info(tiny_store):
    return StoreInfo.load(str(tiny_store))


@pytest.fixture(scope="module")
def arrays(tiny_store):
    root = open_store(tiny_store / "zarr")
    return [{k: root[n][k][...] for k in ("stim", "eyepos", "robs", "dfs", "trial", "split",
                                          "true_rate")}
            for n in root.attrs["sessions"]]


def _frames(batch, info):
    """The frames of a batch: the stored uint8 pixel values, as loaders hand them over."""
    assert batch["stim"].dtype == torch.uint8
    return batch["stim"][:, 0].numpy().astype(np.int64)


def check_batch(batch, info, arrays, split, mode):
    s = int(batch["session"][0])
    assert (batch["session"] == s).all()
    a = arrays[s]
    frames = _frames(batch, info)
    for b in range(len(batch["end"])):
        e = int(batch["end"][b])
        if mode == "window":
            lo, hi = e - W + 1, e + 1
            np.testing.assert_array_equal(batch["robs"][b].numpy(), a["robs"][e])
            np.testing.assert_array_equal(batch["dfs"][b].numpy() > 0, a["dfs"][e])
            assert a["dfs"][e].any()
        else:
            # real targets end at `end`; a short clip is padded after it (dfs False there)
            n = int((batch["dfs"][b].numpy() > 0).any(1).nonzero()[0].max()) + 1
            lo, hi = e - n - W + 2, e + 1
            np.testing.assert_array_equal(batch["robs"][b, :n].numpy(),
                                          a["robs"][e - n + 1 : e + 1])
            np.testing.assert_array_equal(batch["dfs"][b, :n].numpy() > 0,
                                          a["dfs"][e - n + 1 : e + 1])
            assert not (batch["dfs"][b, n:].numpy() > 0).any()
            assert (frames[b, hi - lo :] == frames[b, hi - lo - 1]).all()  # edge padding
        # frame for frame, oldest first: index -1 is the current (last) bin
        np.testing.assert_array_equal(frames[b, : hi - lo], a["stim"][lo:hi])
        np.testing.assert_array_equal(batch["eyepos"][b, : hi - lo].numpy(), a["eyepos"][lo:hi])
        assert (a["trial"][lo:hi] == a["trial"][e]).all(), "window crosses a trial"
        assert (a["split"][lo:hi] == SPLITS.index(split)).all(), "window crosses a split"
    return [(s, int(e)) for e in batch["end"]]


@pytest.mark.parametrize("mode", ["window", "clip"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_streaming_contents_equal_source(info, arrays, mode, split):
    ds = ShardStream(info, split, mode, batch_size=4, shuffle=(split == "train"))
    n = 0
    for batch in ds:
        check_batch(batch, info, arrays, split, mode)
        n += 1
    assert n == len(ds) or split == "val"


@pytest.mark.parametrize("mode", ["window", "clip"])
def test_zarr_contents_equal_source_and_cover_split_once(info, arrays, mode):
    ds = ZarrWindows(info, "train", mode)
    sampler = LocalityBatchSampler(ds, 8, seed=0, drop_last=False)
    seen = []
    for batch in DataLoader(ds, batch_sampler=sampler, collate_fn=identity):
        seen += check_batch(batch, info, arrays, "train", mode)
    assert len(seen) == len(set(seen)) == len(ds)


def test_val_stream_single_pass_sees_every_owned_target_once(info, arrays):
    ds = ShardStream(info, "val", "window", batch_size=4, shuffle=False, single_pass=True)
    seen = [k for batch in ds for k in check_batch(batch, info, arrays, "val", "window")]
    assert len(seen) == len(set(seen)) == info.n_targets["val"] - 0  # no dfs-empty targets
    ends = {(s, int(e)) for s, a in enumerate(arrays)
            for e in np.flatnonzero(a["dfs"].any(1) & (a["split"] == 1))}
    assert set(seen) <= ends


def test_two_ranks_two_workers_disjoint_equal_counts(info):
    per_rank = []
    for rank in (0, 1):
        ds = ShardStream(info, "train", "window", batch_size=4, rank=rank, world_size=2,
                         num_workers=2, batches_per_epoch=6)
        dl = DataLoader(ds, batch_size=None, num_workers=2)
        batches = list(dl)
        assert len(batches) == len(ds) == 6
        per_rank.append({(int(b["session"][0]), int(e)) for b in batches for e in b["end"]})
    assert not (per_rank[0] & per_rank[1])


def _order(ds, epochs):
    return [[(int(b["session"][0]), *b["end"].tolist()) for b in ds] for _ in range(epochs)]


def test_epochs_differ_and_are_reproducible(info):
    first = _order(ShardStream(info, "train", "window", batch_size=4, seed=3), 2)
    assert first[0] != first[1]
    assert _order(ShardStream(info, "train", "window", batch_size=4, seed=3), 2) == first
    resumed = _order(ShardStream(info, "train", "window", batch_size=4, seed=3, start_epoch=1), 1)
    assert resumed[0] == first[1]
    zs = ZarrWindows(info, "train", "window")
    s = LocalityBatchSampler(zs, 8, seed=3)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0


def _keys(batches):
    return [(int(b["session"][0]), *b["end"].tolist()) for b in batches]


@pytest.mark.parametrize("skip", [1, 4])
def test_mid_epoch_resume_skips_exactly_the_trained_batches(info, skip):
    """Two workers interleave batches; skipping k of them then continuing into the next epoch
    gives the uninterrupted order from batch k on."""
    def stream(start_epoch=0, skip_batches=0):
        ds = ShardStream(info, "train", "window", batch_size=4, seed=5, num_workers=2,
                         batches_per_epoch=7, start_epoch=start_epoch,
                         skip_batches=skip_batches)
        return DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)

    whole = stream()
    want = [_keys(whole), _keys(whole)]
    resumed = stream(skip_batches=skip)
    got = [_keys(resumed), _keys(resumed)]
    assert len(want[0]) == 7 and got[0] == want[0][skip:] and got[1] == want[1]
    zs = ZarrWindows(info, "train", "window")
    full = list(LocalityBatchSampler(zs, 8, seed=3))
    s = LocalityBatchSampler(zs, 8, seed=3, skip_batches=skip)
    assert len(s) == len(full) and list(s) == full[skip:] and list(s) == full


def test_memory_does_not_grow_over_an_epoch(info):
    ds = ShardStream(info, "train", "window", batch_size=4, batches_per_epoch=400)
    it = iter(ds)
    for _ in range(50):
        next(it)
    tracemalloc.start()
    for _ in range(50):
        next(it)
    early, _ = tracemalloc.get_traced_memory()
    for _ in range(250):
        next(it)
    late, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert late - early < 2_000_000, (early, late)


def test_zarr_sampler_is_chunk_local_and_rank_balanced(info):
    ds = ZarrWindows(info, "train", "window")
    counts = []
    for rank in (0, 1):
        s = LocalityBatchSampler(ds, 4, seed=0, blocks_per_batch=2, rank=rank, world_size=2)
        batches = list(s)
        counts.append(len(batches))
        for b in batches:
            assert len(set(ds.index[b, 0])) == 1
            # a group's leftover joins the next group: at most 2 x blocks_per_batch blocks
            assert len(set(ds.index[b, 1] // ds.chunk_bins)) <= 4
    assert counts[0] == counts[1] > 0


def test_streaming_from_s3_object_store(tiny_store, info, object_store):
    s3, opts = object_store
    for p in [tiny_store / "manifest.json", *sorted((tiny_store / "wds").glob("*.tar"))]:
        s3.upload_file(str(p), "lab", f"store/{p.relative_to(tiny_store).as_posix()}")
    remote = StoreInfo.load("s3://lab/store", opts)
    assert remote.sessions == info.sessions
    got = _order(ShardStream(remote, "train", "clip", batch_size=2, seed=1,
                             storage_options=opts), 1)
    want = _order(ShardStream(info, "train", "clip", batch_size=2, seed=1), 1)
    assert got == want


def _copy(tiny_store, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(tiny_store, dst)
    return dst


def test_bad_stores_fail_naming_the_file(tiny_store, tmp_path):
    with pytest.raises(StoreError, match=r"nowhere/manifest.json: manifest missing"):
        StoreInfo.load(str(tmp_path / "nowhere"))
    bad = _copy(tiny_store, tmp_path)
    text = (bad / "manifest.json").read_text()
    (bad / "manifest.json").write_text(text.replace(f'"schema_version": {SCHEMA_VERSION}',
                                                    '"schema_version": 0'))
    with pytest.raises(StoreError, match="schema version 0"):
        StoreInfo.load(str(bad))


def test_corrupt_shard_mid_stream_is_named_unless_skipped(tiny_store, tmp_path):
    bad = _copy(tiny_store, tmp_path)
    info = StoreInfo.load(str(bad))
    victim = bad / "wds" / "train-00001.tar"
    data = bytearray(victim.read_bytes())
    with tarfile.open(victim) as tf:
        member = [m for m in tf.getmembers() if m.name.endswith("stim.npy.zst")][1]
    data[member.offset_data + 10] ^= 0xFF  # inside a member: tar still parses
    victim.write_bytes(bytes(data))
    ds = ShardStream(info, "train", "clip", batch_size=2, shuffle=False, single_pass=True)
    with pytest.raises(StoreError, match=r"train-00001\.tar: sample .* does not match its "
                       "sha256"):
        list(ds)
    victim.write_bytes(bytes(data[:3000]))  # truncated mid-member
    with pytest.raises(StoreError, match=r"train-00001\.tar"):
        list(ds)
    ds = ShardStream(info, "train", "clip", batch_size=2, shuffle=False, single_pass=True,
                     skip_corrupt=True)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        batches = list(ds)
    assert batches and any("train-00001.tar" in str(x.message) for x in w)


def test_datamodule_from_yaml_exposes_store_facts(tiny_store, tmp_path):
    from polar_data.config.data_config import load_data_config
    from polar_model.training.datamodule import PolarDataModule

    cfg_path = tmp_path / "d.yaml"
    cfg_path.write_text(f"loader:\n  store: {tiny_store}\n  kind: zarr\n  mode: window\n"
                        "  batch_size: 4\n  num_workers: 0\n")
    dm = PolarDataModule(load_data_config(cfg_path))
    assert dm.info.window_len == W and dm.info.n_units == (3, 4, 5)
    assert 0 < dm.info.pixel_std and 0 < dm.info.pixel_mean < 255
    batch = next(iter(dm.train_dataloader()))
    assert batch["stim"].shape[1:] == (1, W, 9, 9) and batch["stim"].dtype == torch.uint8
    # Lightning calls this after moving the batch to the model's device: frames normalised
    ready = dm.on_after_batch_transfer(batch, 0)
    assert ready["stim"].dtype == torch.float32 and ready["eyepos"] is batch["eyepos"]
    np.testing.assert_array_equal(
        ready["stim"].numpy(), _old_normalised(batch["stim"].numpy(), dm.info))
    assert batch["eyepos"].shape[1:] == (W, 2)
    cfg_path.write_text("loader:\n  kind: tar\n")
    from polar_data.config.typed_yaml import ConfigError

    with pytest.raises(ConfigError, match="kind"):
        load_data_config(cfg_path)


def test_shorter_training_clips_are_cut_from_stored_clips(info, arrays):
    ds = ShardStream(info, "train", "clip", batch_size=3, sample_len=4, shuffle=False,
                     single_pass=True)
    seen = []
    for batch in ds:
        assert batch["robs"].shape[1] == 4 and batch["stim"].shape[2] == 4 + W - 1
        check_batch(batch, info, arrays, "train", "clip")
        for b in range(len(batch["end"])):
            n = int((batch["dfs"][b] > 0).any(1).nonzero().max()) + 1
            seen += [(int(batch["session"][0]), int(batch["end"][b]) - k) for k in range(n)]
    assert len(seen) == len(set(seen))



def _targets(batches) -> set:
    """(session, target bin, counts) of every real target of clip-mode batches."""
    out = set()
    for batch in batches:
        for b in range(len(batch["end"])):
            real = (batch["dfs"][b] > 0).any(1).nonzero()
            n = int(real.max()) + 1 if len(real) else 0
            L = batch["robs"].shape[1]
            for k in range(n):
                out.add((int(batch["session"][0]), int(batch["end"][b]) - (n - 1 - k),
                         tuple(batch["robs"][b, k].tolist())))
            assert L == 4
    return out


def test_zarr_and_shards_cut_the_same_samples_of_sample_len(info, arrays):
    """loader.sample_len acts on both loaders: every stored clip cut into samples of 4
    targets, the same targets from the Zarr arrays and the shards."""
    from polar_data.loaders.zarr_windows import LocalityBatchSampler

    ds = ZarrWindows(info, "train", "clip", sample_len=4)
    batches = LocalityBatchSampler(ds, 3, shuffle=False, drop_last=False, rank=0, world_size=1)
    zarr = [ds.__getitems__(b) for b in batches]
    for batch in zarr:
        assert batch["robs"].shape[1] == 4 and batch["stim"].shape[2] == 4 + W - 1
        check_batch(batch, info, arrays, "train", "clip")
    shards = ShardStream(info, "train", "clip", batch_size=3, sample_len=4, shuffle=False,
                         single_pass=True)
    assert _targets(zarr) == _targets(shards)
    assert len(ds) > len(ZarrWindows(info, "train", "clip"))

def _old_normalised(frames: np.ndarray, info) -> np.ndarray:
    """The float32 frames loaders handed over before they kept uint8 (the old numpy code)."""
    out = frames.astype(np.float32)
    out -= info.pixel_mean
    out *= 1.0 / info.pixel_std
    return out


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("kind", ["wds", "zarr"])
@pytest.mark.parametrize("mode", ["window", "clip"])
def test_normalised_frames_are_bit_identical_to_the_old_float32(info, arrays, kind, mode,
                                                                 device):
    """uint8 across the process boundary, normalise_stim after it (on CPU or the GPU): the
    model gets exactly the float32 values the loaders used to hand over, computed here from
    the Zarr arrays directly; every other entry of the batch is untouched."""
    from polar_data.loaders.batches import normalise_stim

    if kind == "wds":
        batch = next(iter(ShardStream(info, "train", mode, batch_size=4, shuffle=False,
                                      single_pass=True)))
    else:
        ds = ZarrWindows(info, "train", mode)
        batch = ds.__getitems__(next(iter(LocalityBatchSampler(ds, 4, shuffle=False))))
    on_device = {k: v.to(device) for k, v in batch.items()}
    got = normalise_stim(on_device, info.pixel_mean, info.pixel_std)
    assert got["stim"].dtype == torch.float32 and got["stim"].device.type == device
    assert on_device["stim"].dtype == torch.uint8  # a new batch: the loader's is unchanged
    assert all(got[k] is on_device[k] for k in batch if k != "stim")
    s = int(batch["session"][0])
    stim = got["stim"][:, 0].cpu().numpy()
    assert stim.dtype == np.float32
    for b, e in enumerate(batch["end"].tolist()):
        # window: W frames; clip: every real target's frames (padding after them)
        n = 1 if mode == "window" else int((batch["dfs"][b] > 0).any(1).nonzero().max()) + 1
        want = _old_normalised(arrays[s]["stim"][e - n - W + 2 : e + 1], info)
        mine = np.ascontiguousarray(stim[b, : len(want)])
        np.testing.assert_array_equal(mine.view(np.uint32), want.view(np.uint32))  # bitwise
    with pytest.raises(TypeError, match="uint8"):
        normalise_stim(got, info.pixel_mean, info.pixel_std)  # never twice
