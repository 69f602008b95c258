"""The package's public names resolve, and importing it (as the CLI does) stays light."""

from __future__ import annotations

import subprocess
import sys

import iotsentry


def test_every_public_name_resolves() -> None:
    for name in iotsentry.__all__:
        assert getattr(iotsentry, name) is not None, name


def test_import_and_cli_help_do_not_load_heavy_libraries() -> None:
    code = (
        "import sys, iotsentry, iotsentry.cli\n"
        "iotsentry.cli.build_parser()\n"
        "heavy = [m for m in ('numba', 'torch', 'sklearn', 'plotly', 'fastapi', 'uvicorn', 'flwr')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
