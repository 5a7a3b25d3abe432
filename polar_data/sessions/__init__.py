"""Sessions: the canonical Session, a session read chunk by chunk, resampling,
gaze-contingent rendering, validity filters, trial splits and clips."""
