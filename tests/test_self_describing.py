"""Stores that explain themselves: xarray opens a session group with named dimensions and
units; a shard reads with plain webdataset and numpy, no code of ours."""

import io

import numcodecs
import numpy as np
import pytest

from polar_data.store.shards import decode_clip
from polar_data.store.zarr_groups import ARRAY_DIMS, open_store


def test_xarray_opens_a_session_group_with_named_dimensions(tiny_store):
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(tiny_store / "zarr" / "s1", zarr_format=3, consolidated=False,
                      chunks=None)
    assert ds["stim"].dims == ("time", "y", "x") and ds["robs"].dims == ("time", "unit")
    assert ds["eyepos"].dims == ("time", "xy") and ds.sizes["unit"] == 4
    assert ds["eyepos"].attrs["units"].startswith("degrees")
    g = open_store(tiny_store / "zarr")["s1"]
    np.testing.assert_array_equal(ds["robs"].values, g["robs"][...])
    for name, (dims, units) in ARRAY_DIMS.items():
        if name in ("windows", "clips"):
            arr = g[f"{name}/train"]
        elif name in g:
            arr = g[name]
        else:
            continue
        assert tuple(arr.metadata.dimension_names) == dims and arr.attrs["units"] == units


def test_a_shard_reads_with_plain_webdataset_and_numpy(tiny_store):
    import webdataset as wds

    def plain(sample):  # what a user would write: zstd, then numpy's own .npy reader
        return {k: np.load(io.BytesIO(numcodecs.Zstd().decode(v))) for k, v in sample.items()
                if k.endswith(".npy.zst")}

    shard = sorted((tiny_store / "wds").glob("train-*.tar"))[0]
    raw = list(wds.WebDataset(str(shard), shardshuffle=False, empty_check=False))
    for sample in raw:
        ours, theirs = decode_clip(sample), plain(sample)
        for k in ("stim", "eyepos", "t", "robs", "dfs"):
            np.testing.assert_array_equal(theirs[f"{k}.npy.zst"], ours[k])
        assert theirs["stim.npy.zst"].dtype == np.uint8 and theirs["stim.npy.zst"].ndim == 3
