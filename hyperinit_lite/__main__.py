"""Command line: ``python -m hyperinit_lite EXPERIMENT [options]`` (``--help`` on each for its options).

Every experiment shares the options of :mod:`hyperinit_lite.experiments.skeleton` (``--preset``, repeatable
``--set FIELD=VALUE``, ``--device``, ``--out``, ``--resume`` / ``--rerun``, ``--no-progress``).
"""
import importlib
import importlib.util
import sys

from .experiments import skeleton
from .experiments.skeleton import ArgumentParser

COMMANDS = {
    "mnist": ("hyperinit_lite.experiments.mnist", "MNIST feed-forward nets (Chapter 8)"),
    "continual": ("hyperinit_lite.experiments.continual",
                  "continual learning of three regressions (Chapter 9)"),
    "cifar": ("hyperinit_lite.experiments.cifar", "chunked hypernet for All-CNN-C on CIFAR-10 (Chapter 10)"),
    "autoencoder": ("hyperinit_lite.experiments.autoencoder", "DIMAML's MNIST autoencoder (Chapter 12)"),
    "char-lstm": ("hyperinit_lite.experiments.char_lstm", "DIMAML's character-level LSTM (Chapter 12)"),
    "dimaml-hyperfan": ("hyperinit_lite.experiments.dimaml_hyperfan",
                        "DIMAML meets hyperfan: learned vs hyperfan init of a hypernet (Chapter 13)"),
}
DESCRIPTION = ("Run an experiment of the book. Every experiment takes --preset, repeatable --set "
               "FIELD=VALUE, --device, --out, --resume or --rerun, and --no-progress (EXPERIMENT "
               "--help lists them).")


def available_commands():
    """Experiment names whose module is present in this installation."""
    return [name for name, (module, _) in COMMANDS.items() if importlib.util.find_spec(module) is not None]


def main(argv=None):
    """Parse ``argv`` and run the chosen experiment (only its module is imported); the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = ArgumentParser(prog="python -m hyperinit_lite", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="EXPERIMENT")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    modules = {}
    for name in available_commands():
        module, help_text = COMMANDS[name]
        command = sub.add_parser(name, help=help_text)
        if name == chosen:
            modules[name] = importlib.import_module(module)
            skeleton.add_arguments(command, modules[name].EXPERIMENT)
    args = parser.parse_args(argv)
    return skeleton.main(modules[args.command].EXPERIMENT, args)


if __name__ == "__main__":
    sys.exit(main())
