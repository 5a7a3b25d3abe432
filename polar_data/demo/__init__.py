"""Demo sessions: simulated free-viewing gaze, a ground-truth V1 population, and a generator
that writes them as .dset and NWB files (``dset_writer.py``, ``nwb_writer.py``)."""
