"""python -m fastmlp: what the package can do from the command line."""
import sys

from . import build_info

COMMANDS = [
    ("python -m fastmlp.train", "train a model (the lecture's recipe by default; --preset fast|best)"),
    ("python -m fastmlp.sample", "sample new words from a trained model"),
    ("python -m fastmlp.lr_find", "the lecture's learning-rate sweep, with a plot and a suggestion"),
    ("python -m fastmlp.plot", "loss.png and embedding.png (+ diagnostics.png, saturation.png) from a work dir"),
    ("python -m fastmlp.sweep", "a hyperparameter search on Optuna, on every core or many machines"),
    ("python -m fastmlp.serve", "a local page: watch it train, look inside, sample"),
]


def main() -> int:
    info = build_info()
    print(f"fastmlp {info['version']} ({info['isa']} kernels, OpenMP {'on' if info['openmp'] else 'off'}, "
          f"{info['num_threads']} threads)\n")
    for cmd, what in COMMANDS:
        print(f"  {cmd:28s} {what}")
    print("\nEach takes --help.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
