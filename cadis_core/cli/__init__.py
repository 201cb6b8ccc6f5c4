"""`python -m cadis_core ...`: certify, analyze, fine-tune (FT-CADIS), run the embedded benchmark, and train the
embedded default's models. Every command's argparse lives in this package, one module per command."""

from __future__ import annotations

import argparse
import sys

from ..errors import CadisError
from . import analyze, certify, finetune, results, zoo

COMMANDS = {"certify": certify, "analyze": analyze, "results": results, "zoo": zoo, "finetune": finetune}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to read the flags, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (`{self.prog} --help` lists the flags)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m cadis_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--"]:  # `torchrun ... -m cadis_core -- certify ...` keeps torchrun's parser off our flags
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a flag refused (one line on stderr), or --help
        return e.code if isinstance(e.code, int) else 2
    try:
        COMMANDS[args.command].run(args)
    except CadisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
