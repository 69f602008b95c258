"""capture stage of iotsentry."""
