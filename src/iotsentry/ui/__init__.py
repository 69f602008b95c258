"""ui stage of iotsentry."""
