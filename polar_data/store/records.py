"""The build's records in ``<out>/parts/``: one per ingested session (keyed by its source's
location: the source's sha256, the session's folder name, its summary and the sha256 of its
frame chunk files) and one per written shard. They say what is done (a re-run skips it) and
what the build wrote (the only files it ever removes or replaces)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from polar_data.store.manifest import last_manifest
from polar_data.store.safe_names import session_folder_name


def source_key(source: str) -> str:
    """A source's location: a URL as given, a local path resolved."""
    return source if "://" in str(source) else str(Path(source).resolve())


def part_path(out_dir: Path, source: str) -> Path:
    """The ingest record of ``source`` in the store ``out_dir``, named by its location."""
    key = hashlib.sha1(source_key(source).encode()).hexdigest()[:16]
    return out_dir / "parts" / f"session-{key}.json"


def records(out_dir: Path, kind: str) -> list[dict]:
    """The build's records in ``parts/`` of ``kind`` (``session`` or ``shard``)."""
    out = []
    for p in sorted((out_dir / "parts").glob(f"{kind}-*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def written_groups(out_dir: Path) -> set[str]:
    """Session groups this build wrote: named by the last manifest (current or withdrawn) or
    by an ingest record."""
    names = set(last_manifest(out_dir).get("sessions", {}))
    for rec in records(out_dir, "session"):
        if isinstance(rec.get("name"), str):
            names.add(session_folder_name(rec["name"], out_dir / "parts"))
    return names


def written_shards(out_dir: Path) -> set[str]:
    """Shards this build wrote: named by the last manifest or by a shard record."""
    names = {e.get("name") for e in last_manifest(out_dir).get("shards", [])}
    names |= {rec.get("name") for rec in records(out_dir, "shard")}
    return {n for n in names if isinstance(n, str) and "/" not in n and n not in ("", "..")}
