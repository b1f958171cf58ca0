"""The protocol every experiment follows and the command line they share.

A runner module defines ``EXPERIMENT = Experiment(name, config_class, presets, run, summary, data_used)``;
``python -m hyperinit_lite NAME`` (``hyperinit_lite/__main__.py``) passes it to :func:`add_arguments` and
:func:`main`, and offers

* ``--preset NAME`` and repeatable, typed ``--set FIELD=VALUE`` (types read from the config dataclass);
* ``--device auto|cpu|cuda|cuda:N`` (:func:`~hyperinit_lite.experiments.resolve_device`), ``--no-progress``;
* ``--out DIR``: results ``DIR/{name}_{preset}_{hash8}.json`` named by a hash of the full config (the
  readable label, e.g. ``mnist quick width=4``, is stored inside), the checkpoint beside it as ``.ckpt``;
* ``--resume`` continues from the checkpoint, ``--rerun`` recomputes; an existing checkpoint is never
  silently overwritten, and cached results made with other data (``data_used``) are refused.

Every error is one line naming the parameter or file and what to do (exit 2 for usage errors, 1 for data
that cannot be loaded); Ctrl-C prints ``interrupted after <label>; continue with --resume`` (exit 130).
``run(config, device="auto", progress=True, checkpoint=None)`` returns JSON-able results; with a
:class:`~hyperinit_lite.results.Checkpoint` it resumes from ``checkpoint.load()`` and calls
``checkpoint.save(state, label)`` after each unit of work.
"""
import argparse
import dataclasses
import inspect
import sys
import tempfile
import types
import typing
from pathlib import Path

from .. import results as store
from ..data import DataUnavailableError
from . import resolve_device

NONE_WORDS = ("none", "null")
UNIONS = (typing.Union, getattr(types, "UnionType", typing.Union))  # Optional[int] and int | None
BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment: ``name`` (the command), its frozen config dataclass, ``presets`` (name -> config;
    ``'quick'`` is the default when present, else the first), ``run(config, device, progress, checkpoint,
    **options)``, ``summary(results)`` (text for the terminal) and ``data_used(config, **options)`` (a
    JSON-able description of the data a run would use now, recorded with the results; ``None``: the config
    says it all). ``options``: extra command line options as ``(flag, argparse keyword arguments)`` pairs,
    passed to ``run`` by their ``dest`` (and to ``data_used``, those it takes). ``export(results,
    results_path)`` writes files derived from the results beside them (e.g. learned initializers) and
    returns their paths."""

    name: str
    config_class: type
    presets: typing.Mapping
    run: typing.Callable
    summary: typing.Callable
    data_used: typing.Optional[typing.Callable] = None
    options: tuple = ()
    export: typing.Optional[typing.Callable] = None

    @property
    def default_preset(self):
        return "quick" if "quick" in self.presets else next(iter(self.presets))


class Stopped(Exception):
    """Raised by a runner that stops on purpose before the end (e.g. after a requested epoch): the command
    line keeps the checkpoint and says how to continue."""


class UsageError(ValueError):
    """A command line that cannot run as given (exit 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one line (``prog: error: message``), exit 2."""

    def error(self, message):
        """Print ``prog: error: message`` on one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


# ------------------------------------------------------------------------------------------- --set parsing
def _field_types(config_class):
    try:
        return typing.get_type_hints(config_class)
    except (NameError, TypeError):
        return {f.name: f.type for f in dataclasses.fields(config_class)}


def _parse_scalar(name, kind, text):
    """``text`` as a ``kind`` (``bool``, ``int``, ``float`` or ``str``); ``UsageError`` naming ``name``."""
    if kind is bool:
        if text.lower() not in BOOL_WORDS:
            raise UsageError(f"{name} must be true or false, got {text!r}")
        return BOOL_WORDS[text.lower()]
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"{name} must be an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"{name} must be a number, got {text!r}") from None
    return text


def _element_kind(hint, *examples):
    """The element type of a tuple field: from ``Tuple[T, ...]``, else from the example tuples' elements."""
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    if args and args[0] in (bool, int, float, str):
        return args[0]
    for example in examples:
        for item in example or ():
            return type(item) if type(item) in (bool, int, float) else str
    return str


def parse_value(name, hint, text, current=None, default=None):
    """``text`` as a value of the config field ``name`` annotated ``hint`` (``Optional``, tuples as
    comma-separated lists; ``current`` / ``default`` values tell the element type of a bare ``tuple``)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in UNIONS:
        if text.lower() in NONE_WORDS and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is tuple or typing.get_origin(hint) is tuple:
        kind = _element_kind(hint, current, default)
        return tuple(_parse_scalar(f"{name} (comma-separated)", kind, item.strip())
                     for item in text.split(",") if item.strip())
    if hint in (bool, int, float):
        return _parse_scalar(name, hint, text)
    if hint is str or current is None or isinstance(current, str):
        return text
    return _parse_scalar(name, type(current), text)


def parse_overrides(config, overrides):
    """``{field: value}`` from ``FIELD=VALUE`` strings (later ones win), typed by ``config``'s dataclass."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = _field_types(type(config))
    changes = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects FIELD=VALUE, got {item!r}")
        if name not in fields:
            raise UsageError(f"--set {item}: unknown field {name!r}; fields: {', '.join(fields)}")
        default = fields[name].default
        default = None if default is dataclasses.MISSING else default
        try:
            changes[name] = parse_value(name, hints.get(name, str), text, getattr(config, name), default)
        except UsageError as err:
            raise UsageError(f"--set {item}: {err}") from None
    return changes


def make_config(experiment, preset, overrides=()):
    """The config of ``preset`` with the ``FIELD=VALUE`` overrides applied and validated."""
    if preset not in experiment.presets:
        raise UsageError(f"preset must be one of {', '.join(map(repr, experiment.presets))}; got {preset!r}")
    base = experiment.presets[preset]
    changes = parse_overrides(base, overrides)
    try:
        return dataclasses.replace(base, **changes) if changes else base
    except (ValueError, TypeError) as err:
        raise UsageError(f"invalid config: {err}") from None


def label(experiment, preset, config):
    """A readable name of a config: the experiment, the preset and the fields that differ from it."""
    base = store.stored_config(experiment.presets[preset])
    changed = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
               for k, v in store.stored_config(config).items() if base.get(k) != v]
    return " ".join([experiment.name, preset, *changed])


def paths(experiment, preset, config, out):
    """``(results, checkpoint)`` paths: ``out/{name}_{preset}_{hash8}.json`` and ``.ckpt``."""
    stem = Path(out) / f"{experiment.name}_{preset}_{store.config_hash(config)}"
    return stem.with_suffix(".json"), stem.with_suffix(".ckpt")


def saved_results(experiment, preset="paper", out="results", overrides=()):
    """The results a command line run of ``preset`` (with ``FIELD=VALUE`` ``overrides``) saved in ``out``,
    or ``None`` if there are none (what a chapter shows beside its own quick run)."""
    config = make_config(experiment, preset, overrides)
    return store.load_results(paths(experiment, preset, config, out)[0], config)


def check_out(out):
    """Create ``out`` if needed and check that files can be written there, before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"--out {out} is not writable ({err.strerror or err}); give a writable "
                         "folder") from None
    return out


# ------------------------------------------------------------------------------------------- command line
def add_arguments(parser, experiment):
    """The shared options of ``python -m hyperinit_lite NAME`` (and the experiment's own ``options``)."""
    default = experiment.default_preset
    parser.add_argument("--preset", choices=tuple(experiment.presets), default=default,
                        help=f"default: {default}")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                        metavar="FIELD=VALUE",
                        help="override config fields (repeatable), e.g. --set seeds=0,1 epochs=5")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--out", default="results", help="folder of the results and checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from this config's checkpoint")
    parser.add_argument("--rerun", action="store_true",
                        help="recompute even if results or a checkpoint exist")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    for flag, kwargs in experiment.options:
        parser.add_argument(flag, **kwargs)
    return parser


def _option_values(experiment, args):
    """The values of the experiment's own options, by ``dest``."""
    dests = [kw.get("dest", flag.lstrip("-").replace("-", "_")) for flag, kw in experiment.options]
    return {dest: getattr(args, dest) for dest in dests}


def _accepted(function, options):
    """The ``options`` that ``function`` takes as keyword arguments (all of them if it takes ``**kwargs``)."""
    params = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    return {k: v for k, v in options.items() if k in params}


def _fail(experiment, message, code):
    print(f"hyperinit_lite {experiment.name}: error: {message}", file=sys.stderr)
    return code


def main(experiment, args):
    """Run (or reload) one config of ``experiment`` as the command line ``args`` asks; the exit status."""
    session = {}
    try:
        return _main(experiment, args, session)
    except KeyboardInterrupt:
        checkpoint = session.get("checkpoint")
        if checkpoint is not None and checkpoint.label is not None:
            print(f"interrupted after {checkpoint.label}; continue with --resume", file=sys.stderr)
        else:
            print("interrupted before the first checkpoint; run the same command again to start over",
                  file=sys.stderr)
        return 130
    except ValueError as err:  # usage errors, unusable files (ResultsError), invalid configs
        return _fail(experiment, err, 2)
    except DataUnavailableError as err:
        return _fail(experiment, err, 1)


def _main(experiment, args, session):
    if args.resume and args.rerun:
        raise UsageError("--resume and --rerun exclude each other; give one")
    config = make_config(experiment, args.preset, args.overrides)
    device = resolve_device(args.device)
    out = check_out(args.out)
    options = _option_values(experiment, args)
    results_path, checkpoint_path = paths(experiment, args.preset, config, out)
    name = label(experiment, args.preset, config)
    with _run_lock(out, results_path):
        data = None if experiment.data_used is None else experiment.data_used(config, **_accepted(
            experiment.data_used, options))
        stored = None if args.rerun else _load_cached(experiment, results_path, config, data)
        if stored is None:
            checkpoint = session["checkpoint"] = store.Checkpoint(checkpoint_path, config, data)
            stored = _compute(experiment, args, config, device, options, checkpoint, data, name, results_path)
            if stored is None:
                return 0
        else:
            print(f"{name}: loaded {results_path} (recompute with --rerun)")
    print(experiment.summary(stored["results"]))
    print(f"results: {results_path}")
    for path in experiment.export(stored["results"], results_path) if experiment.export else ():
        print(f"wrote {path}")
    return 0


def _compute(experiment, args, config, device, options, checkpoint, data, name, results_path):
    """Run the experiment (resuming or refusing an existing checkpoint), save and return its envelope."""
    if checkpoint.exists() and args.rerun:
        checkpoint.remove()
    elif checkpoint.exists() and not args.resume:
        raise UsageError(f"a checkpoint of this config exists ({checkpoint.path}); continue it with --resume "
                         "or start over with --rerun")
    try:
        results = experiment.run(config, device=device, progress=args.progress, checkpoint=checkpoint,
                                 **options)
    except Stopped:
        print(f"stopped after {checkpoint.label}; continue with --resume")
        return None
    store.save_results(results_path, config, results, data=data, device=device, seconds=checkpoint.seconds(),
                       label=name)
    checkpoint.remove()
    return store.read_envelope(results_path)


def _run_lock(out, results_path):
    """The lock of one config in ``out``: a second run of the same config waits, then reuses the results."""
    def waiting():
        print(f"waiting for another run of this config in {out} to finish", file=sys.stderr)

    return store.locked(out, f".{results_path.stem}.lock", on_wait=waiting)


def _load_cached(experiment, path, config, data):
    """The stored envelope of ``config`` (``None`` if absent); ``UsageError`` if made with other data."""
    stored = store.read_envelope(path)
    if stored is None:
        return None
    if not store.matches(stored, config):
        raise UsageError(f"{path} holds results of another config; move it away or recompute with --rerun")
    if experiment.data_used is not None and not store.matches(stored, data=data):
        raise UsageError(f"{path} was computed with data {stored.get('data')} but {store.to_jsonable(data)} "
                         "would be used now; recompute with --rerun (or move the file away)")
    return stored


def cli(experiment, argv=None):
    """``python -m <module>`` for a runner module: parse ``argv`` and run :func:`main`."""
    parser = add_arguments(ArgumentParser(prog=f"python -m hyperinit_lite {experiment.name}"), experiment)
    return main(experiment, parser.parse_args(argv))
