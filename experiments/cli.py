"""`python -m experiments results|zoo`, from the repository root: the paper-reproduction pipeline's commands, run
by the library's command-line machinery (one-line errors, resumable runs)."""

from __future__ import annotations

from cadis.cli import main as cadis_main
from experiments import cli_results, cli_zoo

COMMANDS = {"results": cli_results, "zoo": cli_zoo}


def main(argv: list[str] | None = None) -> int:
    return cadis_main(argv, commands=COMMANDS, prog="python -m experiments", description=__doc__)
