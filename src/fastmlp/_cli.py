"""What the command-line tools share: the data/model flags, integer flags with ranges,
and turning errors into one-line messages (a user's mistake is not a traceback;
FASTMLP_DEBUG=1 shows it)."""
from __future__ import annotations

import argparse
import os

from .checkpoint import CheckpointError
from .data import DataError


class CLIError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default in --help when it has one worth showing: not None (a flag
    whose default comes from a preset or a config says so in its own help), not a
    store_true's False, and not when the help already names its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if not unset and "default" not in text and action.option_strings:  # (0 == False: compare by identity)
            text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse with fastmlp's conventions: defaults shown in --help, and a bad flag is
    one line on stderr (not the usage block) and exit status 2."""

    def __init__(self, **kw):
        kw.setdefault("formatter_class", _DefaultsHelpFormatter)
        super().__init__(**kw)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def int_arg(flag: str, lo: int, hi: int):
    """An argparse type: an integer in [lo, hi], or a message that says so."""

    def parse(text: str) -> int:
        try:
            v = int(text, 0) if text.strip().lower().startswith(("0x", "0b", "0o")) else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo:,}, {hi:,}], got {v:,}")
        return v

    parse.__name__ = "integer"  # what argparse calls the type in its messages
    return parse


def add_common_args(p: argparse.ArgumentParser, model: bool = True) -> None:
    from . import _core
    from .model import INIT_HELP, INITS, MAX_LAYERS, MAX_SIZE

    g = p.add_argument_group("data and model")
    g.add_argument("-i", "--input-file", help="text file, one word per line (default: $FASTMLP_DATA, else the "
                                              "bundled names.txt)")
    g.add_argument("-o", "--work-dir", help="output folder: checkpoint, metrics, plots (default: out)")
    if model:
        g.add_argument("--block-size", type=int_arg("--block-size", 1, MAX_SIZE),
                       help="characters of context (lecture: 3)")
        g.add_argument("--n-embd", type=int_arg("--n-embd", 1, MAX_SIZE), help="embedding size per character "
                                                                               "(lecture: 10)")
        g.add_argument("--n-hidden", type=int_arg("--n-hidden", 1, MAX_SIZE), help="width of every tanh hidden layer "
                                                                                   "(lecture: 200)")
        g.add_argument("--n-layers", type=int_arg("--n-layers", 1, MAX_LAYERS),
                       help=f"hidden tanh layers, 1..{MAX_LAYERS} (lecture: 1; makemore part 3: 5)")
        g.add_argument("--batchnorm", action="store_true", default=None,
                       help="BatchNorm1d in every hidden layer (part 3: Linear without bias -> BatchNorm1d -> "
                            "tanh; batch statistics in training, running ones for evaluation and sampling)")
        g.add_argument("--bn-momentum", type=float,
                       help="BatchNorm's running statistics: (1 - m) running + m batch (torch's default: 0.1)")
        g.add_argument("--init", choices=INITS, help=INIT_HELP + " (default: lecture)")
    g.add_argument("--seed", type=int_arg("--seed", 0, (1 << 64) - 1), help="random seed (lecture: 2147483647)")
    g.add_argument("--num-threads", type=int_arg("--num-threads", 1, _core.max_threads()),
                   help="threads for the kernels (default: 1 or all cores, whichever is measured faster)")


def fail(message: str, code: int = 2):
    raise CLIError(message, code)


def run_cli(parser: argparse.ArgumentParser, body) -> int:
    """Runs body(); known errors become 'prog: error: message' and a non-zero exit status."""
    try:
        return body()
    except CLIError as e:
        parser.exit(e.code, f"{parser.prog}: error: {e}\n")
    except MemoryError as e:
        if os.environ.get("FASTMLP_DEBUG"):
            raise
        parser.exit(2, f"{parser.prog}: error: out of memory{f' ({e})' if str(e) else ''}: the model, the batch "
                       "or the data is too large for this machine (try smaller --n-hidden, --n-embd, "
                       "--block-size or --batch-size)\n")
    except (DataError, CheckpointError, ValueError, TypeError, OSError, ImportError, IndexError) as e:
        if os.environ.get("FASTMLP_DEBUG"):
            raise
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: interrupted\n")
