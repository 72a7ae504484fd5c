"""Command line: train, eval, predict, download, export, info, parity (one module each); errors are one line on
stderr and exit code 2 (`errors`)."""
import argparse
import difflib
import warnings

from .. import __version__
from . import download, errors, evaluate, export, info, parity, predict, sweep, train
from .errors import CLIError
from .model import fill_defaults

__all__ = ["main", "build_parser", "CLIError", "COMMANDS"]

# command name -> its module: add_parser(commands) registers it, run(args) runs it (in this order in --help)
COMMANDS = {"train": train, "eval": evaluate, "predict": predict, "download": download, "export": export,
            "info": info, "parity": parity, "sweep": sweep}


def build_parser():
    parser = argparse.ArgumentParser(prog="portablenn", description="A small, fast MLP trainer on NumPy or CuPy.")
    parser.add_argument("--version", action="version", version=f"portablenn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {name: module.add_parser(commands) for name, module in COMMANDS.items()}
    # the subparsers whose usage an unknown argument gets (info's gets the top-level one)
    parser.commands = {name: sub for name, sub in subparsers.items() if name != "info"}
    return parser


def main(argv=None):
    """Entry point; returns the process exit code."""
    with warnings.catch_warnings():
        warnings.showwarning = errors.show_warning  # a warning is one line, as an error is
        return _main(argv)


def _main(argv):
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's usage, not the top-level one, and the closest option
        command = parser.commands.get(args.command, parser)
        command.error(_unrecognized(command, unknown))
    if args.command is None:
        parser.print_help()
        return 2
    if args.command in ("train", "parity"):
        fill_defaults(args)
    code = errors.run(COMMANDS[args.command].run, args)
    if code and getattr(args, "distributed", False):
        from .. import distributed

        distributed.failed(code)  # exits without MPI_Finalize, which hangs when a peer has died
    return code


def _unrecognized(parser, unknown):
    """argparse's message for arguments it does not know, with "did you mean --epochs?" for a typo."""
    known = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
    hints = []
    for word in unknown:
        if word.startswith("-"):
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                hints.append(f"did you mean {close[0]}?" if len(unknown) <= 2 else f"{word}: did you mean {close[0]}?")
    return f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else "")

