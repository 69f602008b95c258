"""evaluation stage of iotsentry."""
