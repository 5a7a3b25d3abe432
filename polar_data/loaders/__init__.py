"""Reading stores: what a store says about itself, the batch layout, streaming
from shards and random access to Zarr windows."""
