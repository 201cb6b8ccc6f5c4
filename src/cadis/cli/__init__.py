"""`cadis ...`: certify, analyze and fine-tune (FT-CADIS). Every command's argparse lives in this package, one
module per command; `main` also runs other command sets (the repository's `python -m experiments`)."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from cadis.cli import analyze, certify, finetune
from cadis.errors import CadisError, os_error_line

COMMANDS = {"certify": certify, "analyze": analyze, "finetune": finetune}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to read the flags, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (`{self.prog} --help` lists the flags)\n")


def build_parser(commands: dict[str, ModuleType] = COMMANDS, prog: str = "cadis",
                 description: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description=description or __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands.values():
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None, commands: dict[str, ModuleType] = COMMANDS, prog: str = "cadis",
         description: str | None = None) -> int:
    """Run one command: 0 on success, 2 with one line on stderr for anything refused, 130 when interrupted."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--"]:  # `torchrun ... -m cadis -- certify ...` keeps torchrun's parser off our flags
        argv = argv[1:]
    try:
        args = build_parser(commands, prog, description).parse_args(argv)
    except SystemExit as e:  # a flag refused (one line on stderr), or --help
        return e.code if isinstance(e.code, int) else 2
    except OSError as e:  # a path check of a flag's type: a name too long, an unreadable folder
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    try:
        commands[args.command].run(args)
    except CadisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused something no check foresaw: still one line, not a traceback
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
