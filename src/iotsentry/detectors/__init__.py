"""detectors stage of iotsentry."""
