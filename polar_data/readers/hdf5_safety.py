"""What an HDF5 file can make the reader open outside itself, found from metadata alone.

HDF5 lets a file name other files: a dataset may keep its bytes in *external storage* (raw
files, resolved against the working directory), a link may be an *external link* (an object
of another HDF5 file, resolved from the file's folder first) and a *virtual dataset* maps
parts of datasets of other files (also from the file's folder first). A session file
written by someone else could thus copy any file of the builder's disk into a store, or a
path that resolves on the builder when the file itself came from a URL. :func:`outside_refs`
lists every such reference of a file by walking all its links (without following soft or
external ones) and the storage layout of every dataset: metadata only, no data read.

:func:`confined_files` is the only way such a file is read: every outside path must resolve
(symlinks included, no ``..`` escape) to an existing file inside the source's own folder,
never for a file given as a URL, and not while an ``HDF5_*_PREFIX`` environment variable
could redirect the lookup. The caller hashes the files it returns with the source, so a later
change of one is seen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from polar_data.sessions.session import SessionError

EXTERNAL_STORAGE = "external storage"
EXTERNAL_LINK = "an external link"
VIRTUAL_SOURCE = "a virtual dataset source"
ALLOW_OPTION = "nwb.allow_external_files"
# environment variables that redirect HDF5's lookup of outside files (cannot be confined)
_PREFIX_ENV = {EXTERNAL_STORAGE: "HDF5_EXTFILE_PREFIX", EXTERNAL_LINK: "HDF5_EXT_PREFIX",
               VIRTUAL_SOURCE: "HDF5_VDS_PREFIX"}


@dataclass(frozen=True)
class OutsideRef:
    """One reference out of an HDF5 file: ``kind`` (one of the constants above), ``obj`` the
    object's path inside the file, ``target`` the outside path as the file writes it."""

    kind: str
    obj: str
    target: str


def _links(group, prefix: str = "", seen: set | None = None):
    """(path, link, object or None) of every link below ``group``, depth first; groups are
    entered through hard links only, each once (hard links may form cycles). Works on
    every h5py 3 (``visititems_links`` is newer)."""
    import h5py

    seen = seen if seen is not None else {group.id}
    for name in group:
        path = f"{prefix}/{name}"
        link = group.get(name, getlink=True)
        obj = group.get(name) if isinstance(link, h5py.HardLink) else None
        yield path, link, obj
        if isinstance(obj, h5py.Group) and obj.id not in seen:
            seen.add(obj.id)
            yield from _links(obj, path, seen)


def outside_refs(h5file) -> list[OutsideRef]:
    """Every external link, external storage file and virtual dataset source file of an open
    ``h5py.File`` (its own file ``.`` excepted), in link order."""
    import h5py

    refs: list[OutsideRef] = []
    for where, link, obj in _links(h5file):
        if isinstance(link, h5py.ExternalLink):
            refs.append(OutsideRef(EXTERNAL_LINK, where, str(link.filename)))
        if not isinstance(obj, h5py.Dataset):
            continue  # a soft link names a path of this file (visited as itself)
        for entry in obj.external or ():
            refs.append(OutsideRef(EXTERNAL_STORAGE, where, _text(entry[0])))
        if obj.is_virtual:
            for src in obj.virtual_sources():
                if _text(src.file_name) != ".":
                    refs.append(OutsideRef(VIRTUAL_SOURCE, where, _text(src.file_name)))
    return refs


def _text(name) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _resolved(ref: OutsideRef, source: Path) -> Path:
    """Where HDF5 looks for ``ref.target``: as is when absolute; else external storage
    from the working directory, links and virtual sources from the source's folder."""
    target = Path(ref.target)
    if target.is_absolute():
        return target
    base = Path.cwd() if ref.kind == EXTERNAL_STORAGE else source.parent
    return base / target


def _refuse(where: str, ref: OutsideRef, why: str) -> SessionError:
    return SessionError(
        f"{where}: {ref.obj} reads {ref.kind} outside the file, {ref.target!r}: refused "
        f"({why}). A session file must not make the builder read other files: store the data "
        f"inside the NWB file")


def confined_files(where: str, refs: list[OutsideRef], allow: bool,
                   folder: Path | None = None) -> list[Path]:
    """The resolved outside files named by ``refs`` of the file at ``where`` (a local path or
    a URL), or :class:`SessionError` naming the object, the outside path and why, unless
    ``allow`` and every one is an existing file inside ``folder`` (default: the file's own
    folder). Sorted, each once."""
    if not refs:
        return []
    if "://" in where:
        raise _refuse(where, refs[0], "a file given as a URL may name no outside file: its "
                      "path would resolve on the builder's disk")
    if not allow:
        raise _refuse(where, refs[0], f"outside files are read only with {ALLOW_OPTION}: true, "
                      "and then only inside the source's own folder")
    source = Path(where)
    folder = folder or source.resolve().parent
    out = set()
    for ref in refs:
        env = _PREFIX_ENV[ref.kind]
        if os.environ.get(env):
            raise _refuse(where, ref, f"the environment variable {env} redirects HDF5's lookup")
        real = _resolved(ref, source).resolve()
        if not real.is_relative_to(folder):
            raise _refuse(where, ref, f"it resolves to {real}, outside the source's folder "
                          f"{folder} ({ALLOW_OPTION} allows only files inside it)")
        if not real.is_file():
            raise _refuse(where, ref, f"{real} is not a file")
        out.add(real)
    return sorted(out)


def _refs_of(path: str, storage_options: dict | None) -> list[OutsideRef] | None:
    """:func:`outside_refs` of the HDF5 file at ``path`` (None: not a readable HDF5 file)."""
    import h5py

    try:
        if "://" in path:
            import fsspec

            with fsspec.open(path, "rb", **(storage_options or {})) as raw, \
                    h5py.File(raw, "r") as f:
                return outside_refs(f)
        with h5py.File(path, "r") as f:
            return outside_refs(f)
    except OSError:
        return None


def scan_file(path: str | Path, allow: bool, storage_options: dict | None = None,
              folder: Path | None = None, seen: set | None = None) -> list[Path]:
    """Check the HDF5 file at ``path`` (local or fsspec URL; metadata only) and return the
    outside files it may read (:func:`confined_files`), following allowed external links and
    virtual sources into the HDF5 files they name, each checked against the first file's
    folder. An unreadable file gives [] (the reader reports it)."""
    path = str(path)
    refs = _refs_of(path, storage_options)
    if not refs:
        return []
    folder = folder or Path(path).resolve().parent
    seen = seen if seen is not None else {Path(path).resolve()}
    found = set(confined_files(path, refs, allow, folder))
    for ref in refs:
        real = _resolved(ref, Path(path)).resolve()
        if ref.kind != EXTERNAL_STORAGE and real not in seen:
            seen.add(real)
            found.update(scan_file(real, allow, folder=folder, seen=seen))
    return sorted(found)
