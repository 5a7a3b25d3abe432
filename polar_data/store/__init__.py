"""Writing stores: the build's stages, its lock, Zarr groups, WebDataset shards,
chunk files, the manifest and its verification, safe folder names, checksums."""
