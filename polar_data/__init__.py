"""polar_data: session recordings -> canonical sessions -> sharded stores -> loaders."""
