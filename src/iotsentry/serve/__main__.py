"""``python -m iotsentry.serve --config F``: the monitor without the ``iotsentry`` wrapper."""

from __future__ import annotations

import sys

from iotsentry.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
