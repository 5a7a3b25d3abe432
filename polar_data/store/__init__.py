"""Writing stores: the build's stages (``build.py`` runs them: ``ingest.py``, ``shard_stage.py``,
``finalize.py``; ``sources.py``, ``settings.py``, ``records.py``, ``pools.py``), its lock, Zarr
groups, WebDataset shards, chunk files, the manifest (``manifest.py``) and its verification
(``verify.py``), safe folder names, checksums."""
