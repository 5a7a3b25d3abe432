"""What a build is asked for and whether the output folder may take it: the window length,
the settings that change the output (recorded in ``build.json``, a different setting refused)
and the check that an existing folder is one of this code's stores."""

from __future__ import annotations

import json
from pathlib import Path

from polar_data.config.data_config import DEFAULT_WINDOW_LEN, DataConfig
from polar_data.config.storage_options import without_storage_options
from polar_data.config.typed_yaml import to_dict
from polar_data.schema import SCHEMA_VERSION
from polar_data.store.build_lock import LOCK_NAME
from polar_data.store.manifest import write_json_atomic
from polar_data.store.zarr_groups import open_root


class BuildError(RuntimeError):
    """The build cannot go on; the message says what and how to fix it."""


def resolve_window_len(cfg: DataConfig, model_need: int | None = None) -> int:
    """The store's window length: the config's, else what the model needs (``model_need``,
    the shortest window the model can use, computed on the model side) but at least 16, else
    16. A configured window too short for the model is refused by the model layer's window
    rule (the one check and its one message), which the build script asks."""
    asked = cfg.store.window_len
    if asked is not None:
        return asked
    return DEFAULT_WINDOW_LEN if model_need is None else max(model_need, DEFAULT_WINDOW_LEN)


def settings(cfg: DataConfig, window_len: int) -> dict:
    """What changes the output: schema, window length, store and demo settings. Not recorded:
    the output folder, the trust flag and the source paths (sources are tracked by content,
    per session, in ``parts/``)."""
    store = to_dict(cfg.store)
    for key in ("out_dir", "trust_pickle", "ingest_chunk_bins"):  # do not change the output
        store.pop(key)
    nwb = without_storage_options(to_dict(cfg.nwb))  # how to reach the files, not what
    nwb.pop("max_memory_gb")  # a budget of the machine building, not of the output
    return {"schema_version": SCHEMA_VERSION, "window_len": window_len, "store": store,
            "nwb": nwb, "demo": to_dict(cfg.demo) if not cfg.sessions else None}


def check_output_folder(out_dir: Path) -> None:
    """Refuse to build into an existing folder that is not one of this code's stores: a
    non-empty folder without ``build.json`` (lock files and a ``build.json`` being written by
    another job of the same array do not count). Reads only, so a refused folder is left
    exactly as it was."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"{out_dir} is a file, not a folder: give another --out / "
                         "store.out_dir")
    if not out_dir.is_dir() or (out_dir / "build.json").is_file():
        return
    other = sorted(p.name for p in out_dir.iterdir()
                   if not p.name.startswith(LOCK_NAME) and p.name != "build.json.partial")
    if other:
        shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
        raise BuildError(f"{out_dir} exists and is not a store built by this code (no "
                         f"build.json; it holds {shown}): refusing to build into it. Give a "
                         "new or empty folder as --out / store.out_dir.")


def check_settings(out_dir: Path, wanted: dict) -> None:
    """Write ``build.json`` or refuse if the folder was built with other settings (or is
    not one of our stores, :func:`check_output_folder`)."""
    check_output_folder(out_dir)
    path = out_dir / "build.json"
    if path.is_file():
        have = json.loads(path.read_text())
        if have.get("schema_version") != wanted["schema_version"]:
            raise BuildError(
                f"{out_dir} was built by another version of this code (store schema "
                f"{have.get('schema_version')!r}, this code writes {wanted['schema_version']}). "
                "Delete the folder or use another store.out_dir."
            )
        nothing_built = not any((out_dir / "parts").glob("session-*.json"))
        if have != wanted and nothing_built:  # e.g. a first try that failed on every session
            write_json_atomic(path, wanted)
            return
        if have != wanted:
            diff = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
            raise BuildError(
                f"{out_dir} was built with different settings ({', '.join(diff)} differ). "
                "Use another store.out_dir or delete the folder."
            )
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, wanted)
    # the root group exists from the start (sessions are its children); its attributes,
    # which open_store checks, are written only by finalize
    open_root(out_dir / "zarr", mode="a")
