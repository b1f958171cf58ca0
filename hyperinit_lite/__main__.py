"""Command line: ``python -m hyperinit_lite EXPERIMENT [options]`` (``--help`` on each for its options).

Each experiment module defines ``add_arguments(parser)`` and ``main(args)``.
"""
import argparse
import importlib
import importlib.util
import sys

COMMANDS = {
    "mnist": "hyperinit_lite.experiments.mnist",
    "continual": "hyperinit_lite.experiments.continual",
    "cifar": "hyperinit_lite.experiments.cifar",
    "dimaml": "hyperinit_lite.experiments.dimaml",
}


def available_commands():
    """Experiment names whose module is present in this installation."""
    return [name for name, module in COMMANDS.items() if importlib.util.find_spec(module) is not None]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hyperinit_lite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="EXPERIMENT")
    modules = {}
    for name in available_commands():
        modules[name] = importlib.import_module(COMMANDS[name])
        modules[name].add_arguments(sub.add_parser(name, help=modules[name].__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    return modules[args.command].main(args)


if __name__ == "__main__":
    sys.exit(main())
