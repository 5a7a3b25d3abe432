"""The build manifest (``<out>/manifest.json``): written, sealed, withdrawn and loaded.

The manifest lists every file of the Zarr store (bytes, sha256), every WebDataset shard
(samples with their sha256, owned targets, sessions, bytes, sha256), per-session summaries
(source file and its sha256, shapes, counts, pixel statistics, mean rates) and the store-wide
figures the loaders rely on. It carries its own checksum (``manifest_sha256``): an edited
manifest is refused on load; with ``POLAR_SEAL_KEY`` set when building, it also carries an
HMAC-SHA256 of itself under that key (``seal_hmac``), checked on load whenever the key is set,
so that an edited and re-sealed manifest is refused too. Checking a whole store against its
manifest is :mod:`polar_data.store.verify`.

A rebuild withdraws the manifest (:func:`withdraw`, an atomic rename) before it changes any
file the manifest names, so a store whose build is under way or was interrupted has no
manifest and every loader refuses it with a message saying so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

import fsspec

from polar_data.schema import StoreError, check_schema
from polar_data.store.checksum import sha256_bytes, sha256_file

MANIFEST = "manifest.json"
WITHDRAWN = MANIFEST + ".withdrawn"  # the old manifest while a rebuild changes its files
SEAL = "manifest_sha256"
HMAC_FIELD = "seal_hmac"
SEAL_KEY_ENV = "POLAR_SEAL_KEY"  # the key of the keyed seal (build and load time)
NOT_FINISHED = ("this store is being (re)built or its build was interrupted: run the build "
                "again (pipelines/build_shards.py with the same arguments)")


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def _canonical(manifest: dict, *without: str) -> bytes:
    body = {k: v for k, v in manifest.items() if k not in without}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _digest(manifest: dict) -> str:
    return sha256_bytes(_canonical(manifest, SEAL))


def _hmac(manifest: dict, key: str) -> str:
    """HMAC-SHA256 under ``key`` of the manifest's canonical JSON without either seal."""
    return hmac.new(key.encode(), _canonical(manifest, SEAL, HMAC_FIELD),
                    hashlib.sha256).hexdigest()


def seal_key() -> str | None:
    """The keyed seal's key, from the environment variable ``POLAR_SEAL_KEY`` (None: unset)."""
    return os.environ.get(SEAL_KEY_ENV) or None


def seal(manifest: dict, key: str | None = None) -> dict:
    """``manifest`` plus its own checksum (sha256 of its canonical JSON without the seal);
    with ``key``, first its HMAC-SHA256 under that key (``seal_hmac``)."""
    body = {k: v for k, v in manifest.items() if k != SEAL}
    if key:
        body[HMAC_FIELD] = _hmac(body, key)
    return {**body, SEAL: _digest(body)}


def withdraw(out_dir: Path) -> None:
    """Rename ``manifest.json`` to ``manifest.json.withdrawn`` (atomic), so that no loader
    takes the store for finished while a rebuild changes the files the manifest names."""
    try:
        (Path(out_dir) / MANIFEST).replace(Path(out_dir) / WITHDRAWN)
    except FileNotFoundError:
        pass


def last_manifest(out_dir: Path) -> dict:
    """The last manifest written in ``out_dir`` (current or withdrawn), unchecked, for the
    build's record of what it wrote; {} when there is none or it cannot be read."""
    for name in (MANIFEST, WITHDRAWN):
        try:
            m = json.loads((Path(out_dir) / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict):
            return m
    return {}


def load_manifest(base: str | Path, storage_options: dict | None = None) -> dict:
    """The manifest of the store at ``base`` (folder or fsspec URL), checked: present, valid
    JSON, this schema version, and its own checksum. Raises StoreError naming the file."""
    url = str(base).rstrip("/") + "/" + MANIFEST
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            manifest = json.loads(f.read())
    except FileNotFoundError as e:
        raise StoreError(f"{url}: manifest missing: {NOT_FINISHED}") from e
    except ValueError as e:
        raise StoreError(f"{url}: manifest is not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise StoreError(f"{url}: the manifest is not a JSON object")
    check_schema(manifest, url)  # version and conventions
    if manifest.get(SEAL) != _digest(manifest):
        raise StoreError(f"{url}: the manifest's checksum does not match its contents (edited "
                         "or corrupted); rebuild, or re-run the build to rewrite it")
    _check_keyed_seal(manifest, url, seal_key())
    return manifest


def _check_keyed_seal(manifest: dict, url: str, key: str | None) -> None:
    """With a key (``POLAR_SEAL_KEY`` set), the manifest must carry its HMAC under that key."""
    if not key:
        return
    have = manifest.get(HMAC_FIELD)
    if not isinstance(have, str):
        raise StoreError(f"{url}: no {HMAC_FIELD} although {SEAL_KEY_ENV} is set (the store "
                         f"was built without the key); rebuild it with {SEAL_KEY_ENV} set, or "
                         "unset it to accept unkeyed stores")
    if not hmac.compare_digest(have, _hmac(manifest, key)):
        raise StoreError(f"{url}: {HMAC_FIELD} does not match under {SEAL_KEY_ENV} (the "
                         "manifest was edited by someone without the key, or built with "
                         "another key); rebuild the store")


def check_chunk_files(zarr_dir: Path, table: dict[str, dict], full_hash: bool = False) -> None:
    """Cheap check before reading a Zarr store: every file the manifest lists exists with its
    recorded size (``full_hash``: and its sha256). Raises StoreError naming array and chunk
    (Zarr itself would return the fill value for a missing chunk)."""
    zarr_dir = Path(zarr_dir)
    for rel, info in table.items():
        p = zarr_dir / rel
        where = f"{zarr_dir}: array {rel.rsplit('/', 1)[0]!r}, file {rel!r}"
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise StoreError(f"{where} is missing (the store is incomplete or damaged; "
                             "rebuild it or run build_shards.py --verify)") from None
        if size != info["bytes"]:
            raise StoreError(f"{where} has {size} bytes, the manifest says {info['bytes']} "
                             "(truncated or rewritten)")
        if full_hash and sha256_file(p) != info["sha256"]:
            raise StoreError(f"{where} does not match its sha256 (corrupted)")
