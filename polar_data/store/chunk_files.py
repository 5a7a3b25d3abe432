"""Reading a local Zarr array's chunk files directly (:class:`ChunkFiles`), for the hot
paths: building shards and random access. Zarr's per-call machinery (its event loop thread,
codec pipeline and metadata checks) costs ~3-4 ms per read of a 166 kB frame chunk, several
times its decoding; numcodecs' zstd decodes straight into the output and releases the GIL.
"""

from __future__ import annotations

from pathlib import Path

import numcodecs
import numpy as np

from polar_data.schema import StoreError


class ChunkFiles:
    """Rows ``a .. b-1`` of an array of a session group read from its chunk files directly
    (``numcodecs`` zstd, which releases the GIL): the values of ``array[a:b]`` without
    Zarr's per-call machinery (see the module docstring). Only for the layout
    :func:`polar_data.store.zarr_groups.write_session_group` writes on a local disk: chunked along
    the first axis only, ``bytes`` (little-endian) +
    ``zstd`` codecs, default chunk keys; :meth:`of` returns None for anything else (read
    through Zarr then). A missing chunk file reads as the fill value, as in Zarr (Zarr stores
    no chunk that is all fill value), unless ``listed`` (the manifest's ``zarr_files``:
    paths below the store's root) names it: then it was deleted after the store was built,
    and reading it raises StoreError naming the file."""

    def __init__(self, folder: Path, metadata, listed=None, prefix: str = ""):
        self.folder, self.meta = folder, metadata
        self.listed, self.prefix = listed, prefix
        self.rows = int(metadata.chunk_grid.chunk_shape[0])
        self.row_shape = tuple(int(x) for x in metadata.shape[1:])
        self.n_rows = int(metadata.shape[0])
        self.dtype = np.dtype(metadata.data_type.to_native_dtype()).newbyteorder("<")
        self.fill = metadata.fill_value
        self.codec = numcodecs.Zstd()

    @classmethod
    def of(cls, array, listed=None) -> ChunkFiles | None:
        from zarr.codecs import BytesCodec, ZstdCodec
        from zarr.core.chunk_grids import RegularChunkGrid
        from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
        from zarr.storage import LocalStore

        meta = array.metadata
        ok = (isinstance(array.store, LocalStore) and meta.zarr_format == 3
              and len(meta.shape) >= 1 and isinstance(meta.chunk_grid, RegularChunkGrid)
              and isinstance(meta.chunk_key_encoding, DefaultChunkKeyEncoding)
              and tuple(meta.chunk_grid.chunk_shape[1:]) == tuple(meta.shape[1:])
              and len(meta.codecs) == 2 and isinstance(meta.codecs[0], BytesCodec)
              and str(getattr(meta.codecs[0].endian, "value", "little")) == "little"
              and isinstance(meta.codecs[1], ZstdCodec))
        return (cls(Path(array.store.root) / array.path, meta, listed, array.path) if ok
                else None)

    def chunk_bytes(self, k: int) -> bytes | None:
        """The stored (zstd-compressed) bytes of chunk ``k`` (rows ``k * rows ..``), a
        standalone zstd frame; None when no file is stored (all fill value)."""
        key = self.meta.encode_chunk_key((k, *(0,) * len(self.row_shape)))
        try:
            return (self.folder / key).read_bytes()
        except FileNotFoundError:
            if self.listed is not None and f"{self.prefix}/{key}" in self.listed:
                raise StoreError(f"{self.folder / key}: chunk file missing, but the manifest "
                                 "lists it (deleted after the store was built?); rebuild the "
                                 "store or run build_shards.py --verify") from None
            return None

    def __call__(self, a: int, b: int) -> np.ndarray:
        if not 0 <= a <= b <= self.n_rows:
            raise IndexError(f"{self.folder}: rows {a}..{b} of {self.n_rows}")
        c = self.rows
        out = np.empty((b - a, *self.row_shape), self.dtype)
        for k in range(a // c, -(-b // c)):
            lo, hi = max(a, k * c), min(b, (k + 1) * c)
            raw = self.chunk_bytes(k)
            if raw is None:
                out[lo - a : hi - a] = self.fill
                continue
            if lo == k * c and hi == (k + 1) * c:  # a whole chunk: decoded in place
                self.codec.decode(raw, out=out[lo - a : hi - a])
            else:
                chunk = np.frombuffer(self.codec.decode(raw), self.dtype)
                chunk = chunk.reshape(c, *self.row_shape)
                out[lo - a : hi - a] = chunk[lo - k * c : hi - k * c]
        return out.astype(self.dtype.newbyteorder("="), copy=False)
