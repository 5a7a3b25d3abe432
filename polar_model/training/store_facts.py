"""Store facts -> what the model layer needs (``DataSpec``), and the data facts of a store:
what :func:`polar_model.load` needs beyond the spec, and the store's identity, so that a resumed
run or an evaluation on another store is refused (:func:`store_differences`).

A checkpoint carries each fact once: the spec (hyperparameter ``spec``: sessions, bin rate,
window length, crop size, unit counts, mean rates) and ``data_facts`` with only what the spec
lacks (:func:`checkpoint_facts`: pixel statistics, unit ids, the store's identity);
:func:`.checkpoints.saved_facts` joins them again."""

from __future__ import annotations

import json

import fsspec

from polar_data.loaders.store_info import StoreInfo, join
from polar_data.store.checksum import sha256_bytes
from polar_data.store.manifest import SEAL, load_manifest
from polar_model.spec import DataSpec


def spec_of(info: StoreInfo) -> DataSpec:
    """The facts of a store that shape a model."""
    return DataSpec(window_len=info.window_len, rate_hz=info.rate_hz, frame_hw=info.frame_hw,
                    ppd=info.ppd, n_units=info.n_units, mean_rates=info.mean_rates,
                    session_names=info.sessions)


# data facts the spec holds, each with its DataSpec field: a checkpoint keeps them in its spec
SPEC_FACTS = {"sessions": "session_names", "rate_hz": "rate_hz", "window_len": "window_len",
              "frame_hw": "frame_hw"}


def data_facts(info: StoreInfo, identity: dict | None = None) -> dict:
    """The facts of a store, from its ``StoreInfo``, as a checkpoint's are compared with
    them (:func:`store_differences`): pixel statistics, bin rate, window length, crop size,
    session names and each session's recording unit ids; plus ``identity``
    (:func:`store_identity`) when given. A checkpoint stores :func:`checkpoint_facts` of
    them."""
    return {"sessions": list(info.sessions), "rate_hz": info.rate_hz,
            "window_len": info.window_len, "pixel_mean": info.pixel_mean,
            "pixel_std": info.pixel_std, "frame_hw": list(info.frame_hw),
            "unit_ids": {n: [int(u) for u in ids] for n, ids in zip(info.sessions,
                                                                   info.unit_ids)},
            **(identity or {})}


def checkpoint_facts(facts: dict) -> dict:
    """The part of ``facts`` (:func:`data_facts`) a checkpoint's ``data_facts`` carries:
    what its spec lacks (:data:`SPEC_FACTS` live in the spec)."""
    return {k: v for k, v in facts.items() if k not in SPEC_FACTS}


def spec_facts(spec: dict) -> dict:
    """The data facts a checkpoint's spec (hyperparameter ``spec``, a dict) holds."""
    return {fact: list(spec[name]) if isinstance(spec[name], list | tuple) else spec[name]
            for fact, name in SPEC_FACTS.items()}


def _split_settings(manifest: dict, info: StoreInfo, storage_options: dict | None) -> dict:
    """``splits`` and ``split_seed`` as the build recorded them: the manifest's, else the
    Zarr root's attributes (its ``zarr.json``); {} for a store with neither (shards only)."""
    if "split_seed" in manifest:
        return {k: manifest[k] for k in ("splits", "split_seed") if k in manifest}
    try:
        with fsspec.open(join(join(info.base, "zarr"), "zarr.json"), "rb",
                         **(storage_options or {})) as f:
            attrs = json.loads(f.read()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: attrs[k] for k in ("splits", "split_seed") if k in attrs}


def store_identity(info: StoreInfo, storage_options: dict | None = None) -> dict:
    """What identifies the store a run trains on, for its checkpoints' data facts:

    ``manifest_sha256`` (the manifest's seal: any change of the store changes it),
    ``splits`` / ``split_seed``, and per session ``source_sha256`` (the file it was built
    from) and ``split_sha256`` (a digest of the sha256 of its ``split`` array's Zarr files:
    which bins went to train, val and test). Sessions and unit ids are already in
    :func:`data_facts`."""
    manifest = load_manifest(info.base, storage_options)
    split_files = {}
    for rel, entry in sorted(info.zarr_files.items()):
        session, _, rest = rel.partition("/")
        if rest.startswith("split/"):
            split_files.setdefault(session, []).append([rest, entry["sha256"]])
    return {"manifest_sha256": manifest[SEAL],
            **_split_settings(manifest, info, storage_options),
            "source_sha256": {n: manifest["sessions"][n]["source"]["sha256"]
                              for n in info.sessions},
            "split_sha256": {n: sha256_bytes(json.dumps(split_files.get(n, [])).encode())
                             for n in info.sessions}}


# data facts that tell stores apart, each with what a difference means
_SAME = (("window_len", "window length (bins)"), ("rate_hz", "bin rate (Hz)"),
         ("frame_hw", "crop size (pixels)"), ("splits", "split fractions"),
         ("split_seed", "split_seed"))
_PER_SESSION = (("unit_ids", "unit ids"), ("source_sha256", "source file (sha256)"),
                ("split_sha256", "trials in each split"))
IDENTITY_KEYS = ("manifest_sha256", "splits", "split_seed", "source_sha256", "split_sha256")


def store_differences(saved: dict, now: dict) -> list[str]:
    """How the store of ``now`` (data facts of the store at hand) differs from the one of
    ``saved`` (a checkpoint's data facts), one phrase per difference; [] when it is the same
    store. Facts the checkpoint does not record are not compared."""
    out = []
    old, new = list(saved.get("sessions", [])), list(now.get("sessions", []))
    if added := [n for n in new if n not in old]:
        out.append(f"sessions added: {added}")
    if removed := [n for n in old if n not in new]:
        out.append(f"sessions removed: {removed}")
    if not added and not removed and old != new:
        out.append(f"session order: {old} in the checkpoint, {new} in the store")
    for key, what in _SAME:
        if key in saved and saved[key] != now.get(key):
            out.append(f"{what}: {saved[key]} in the checkpoint, {now.get(key)} in the store")
    for key, what in _PER_SESSION:
        a, b = saved.get(key), now.get(key)
        if a is None:
            continue
        for n in (n for n in old if n in new and a.get(n) != (b or {}).get(n)):
            if key == "unit_ids":
                out.append(f"session {n}: unit ids {a.get(n)} in the checkpoint, "
                           f"{(b or {}).get(n)} in the store")
            else:
                out.append(f"session {n}: other {what}")
    seal = saved.get("manifest_sha256")
    if not out and seal is not None and seal != now.get("manifest_sha256"):
        out.append(f"the store's contents (manifest seal {seal[:12]}... in the checkpoint, "
                   f"{str(now.get('manifest_sha256'))[:12]}... in the store)")
    return out


def identity_of(facts: dict) -> dict:
    """The store identity in a checkpoint's data facts (for ``previous_stores``)."""
    return {k: facts[k] for k in ("sessions", "unit_ids", *IDENTITY_KEYS) if k in facts}
