"""Folder names from untrusted text, and the check that a path stays inside its root.

A session's name is read from its file (``.dset`` metadata, NWB ``session_id`` /
``identifier``) and becomes a folder under the output folder, so it is untrusted input.
:func:`session_folder_name` is the one rule that turns it into a folder name.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

MAX_NAME_LEN = 64
_ALLOWED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_BAD_RUN = re.compile(r"[^A-Za-z0-9._-]+")
# names a Zarr store gives its own metadata files (v3 and v2, any case: some file systems
# ignore case): a session folder of that name would replace or shadow the store's metadata
RESERVED = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})


class UnsafeNameError(ValueError):
    """Text read from a file cannot become a folder name."""


def session_folder_name(text: str, source: str | Path) -> str:
    """A safe folder name for the session named ``text`` in file ``source``.

    Safe names (letters, digits and ``._-``, not starting with ``.``, ``_`` or ``-``, at most
    64 characters, not one of Zarr's own metadata file names :data:`RESERVED`) are kept as
    they are. Anything else is mapped: accents are dropped, every
    run of other characters becomes ``_``, leading ``._-`` are stripped, and the result gets
    ``-`` plus 8 hex digits of the original's sha1 so that two different originals never map
    to the same name. Text with no letter or digit at all (``""``, ``".."``, ``"/"``) raises
    :class:`UnsafeNameError` naming ``source``.
    """
    text = str(text)
    if (len(text) <= MAX_NAME_LEN and _ALLOWED.fullmatch(text) and ".." not in text
            and text.lower() not in RESERVED):
        return text
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    core = _BAD_RUN.sub("_", ascii_text.replace("..", "_")).lstrip("._-")
    if not re.search(r"[A-Za-z0-9]", core):
        raise UnsafeNameError(
            f"{source}: session name {text[:80]!r} has no letter or digit, so it cannot name "
            "a folder; set the session's name in the file (NWB session_id, .dset "
            "metadata['name'])")
    tag = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{core[: MAX_NAME_LEN - 9].rstrip('._-')}-{tag}"


def inside(root: Path, path: Path) -> Path:
    """``path`` resolved, after checking that it lies strictly inside ``root`` (resolved).

    Call before every delete or write whose path holds text read from a file.
    """
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r == root_r or not path_r.is_relative_to(root_r):
        raise UnsafeNameError(f"{path}: refusing to write or delete outside {root}")
    return path_r
