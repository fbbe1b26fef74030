"""What the command-line tools share: the data/model flags and turning errors into
one-line messages (a user's mistake is not a traceback; FASTMLP_DEBUG=1 shows it)."""
from __future__ import annotations

import argparse
import os

from .checkpoint import CheckpointError
from .data import DataError


class CLIError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def add_common_args(p: argparse.ArgumentParser, model: bool = True) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument("-i", "--input-file", help="text file, one word per line (default: names.txt via "
                                              "$FASTMLP_DATA, data/names.txt, or a download)")
    g.add_argument("-o", "--work-dir", help="output folder: checkpoint, metrics, plots (default: out)")
    if model:
        g.add_argument("--block-size", type=int, help="characters of context (lecture: 3)")
        g.add_argument("--n-embd", type=int, help="embedding size per character (lecture: 10)")
        g.add_argument("--n-hidden", type=int, help="tanh hidden layer width (lecture: 200)")
        g.add_argument("--init", choices=("lecture", "scaled"),
                       help="lecture: all standard normal; scaled: tanh-gain/sqrt(fan_in) W1, small W2")
    g.add_argument("--seed", type=int, help="random seed (lecture: 2147483647)")
    g.add_argument("--num-threads", type=int, help="OpenMP threads for the kernels (default: all cores)")


def fail(message: str, code: int = 2):
    raise CLIError(message, code)


def run_cli(parser: argparse.ArgumentParser, body) -> int:
    """Runs body(); known errors become 'prog: error: message' and a non-zero exit status."""
    try:
        return body()
    except CLIError as e:
        parser.exit(e.code, f"{parser.prog}: error: {e}\n")
    except (DataError, CheckpointError, ValueError, TypeError, OSError, ImportError) as e:
        if os.environ.get("FASTMLP_DEBUG"):
            raise
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: interrupted\n")
