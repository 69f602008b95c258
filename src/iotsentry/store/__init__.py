"""store stage of iotsentry."""
