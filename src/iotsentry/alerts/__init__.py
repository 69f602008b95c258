"""alerts stage of iotsentry."""
