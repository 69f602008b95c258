"""features stage of iotsentry."""
