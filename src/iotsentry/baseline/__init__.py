"""baseline stage of iotsentry."""
