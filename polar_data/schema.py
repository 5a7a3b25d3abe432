"""The store's schema: version, conventions and names written into every store and checked
on every read."""

from __future__ import annotations

SCHEMA_VERSION = 2

SPLITS = ("train", "val", "test")

CONVENTIONS = {
    "time_order": "oldest first: index 0 is the earliest bin; t strictly increasing",
    "window": "a window of length window_len ending at bin t covers bins t-window_len+1 .. t",
    "gaze_axes": "eyepos[:, 0] = x (positive right), eyepos[:, 1] = y (positive up)",
    "gaze_units": "degrees of visual angle, float32; NaN where eye_valid is false",
    "stim": "uint8 luminance, gaze-contingent crop, row 0 = top, column 0 = left",
    "robs": "spike counts per bin",
    "dfs": "dfs[t, n] = window ending at t valid (all bins eye-valid, one trial) and unit n "
    "valid at t",
    "t_units": "seconds (bin start)",
}


class StoreError(RuntimeError):
    """A store is missing, incomplete, of another schema, or fails verification."""


def check_schema(attrs: dict, where: str) -> None:
    """Raise StoreError unless ``attrs`` carry this schema version and conventions."""
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{where}: schema version {version!r}, this code reads version {SCHEMA_VERSION}; "
            "rebuild the store with pipelines/build_shards.py"
        )
    if attrs.get("conventions") != CONVENTIONS:
        raise StoreError(f"{where}: the store's conventions differ from this code's")
