"""inventory stage of iotsentry."""
