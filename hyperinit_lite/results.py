"""The results store: experiment results as JSON envelopes keyed by the config that produced them, atomic
writes, folder locks and resumable checkpoints.

A results file holds one envelope ``{"format", "label", "config", "config_hash", "data", "device", "seconds",
"results"}``: the full config, the data actually used (e.g. which MNIST source ``data="auto"`` resolved to),
the device, the wall-clock seconds of the run (summed over resumed sessions) and the run's results.
A chapter calls ``load_or_run(path, config, run, data=...)``: when ``path`` holds results of the same config
made with the same data they are loaded instead of retraining; otherwise ``run(config)`` is called and its
results saved. Every write goes to a unique temporary file in the target's folder and is then renamed over
the target, so a crash or two concurrent writers never leave half a file. Files that cannot be read raise
:class:`ResultsError`, which names the file and what to do.
"""
import contextlib
import dataclasses
import hashlib
import importlib.resources
import json
import math
import os
import pickle
import time
import uuid
from pathlib import Path

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; atomic renames still keep every file whole
    fcntl = None

FORMAT = 1
LOCK_NAME = ".hyperinit_lite.lock"
_UNCHECKED = object()


class ResultsError(ValueError):
    """A results or checkpoint file that cannot be used; the message names the file and what to do."""


def config_dict(config):
    """A dataclass or mapping as a plain dict (what is stored beside the results and compared)."""
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config)


def to_jsonable(value):
    """Convert tensors, arrays and tuples to lists; non-finite floats to the strings 'nan', 'inf', '-inf'."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def as_array(values):
    """Stored results (nested lists; non-finite floats as the strings of :func:`to_jsonable`, ``None`` for
    missing values) or a tensor, as a float numpy array (``None`` becomes ``nan``)."""
    if hasattr(values, "detach"):
        return values.detach().cpu().double().numpy()
    return np.array(values, dtype=float)


def stored_config(config):
    """``config`` as it is stored and compared: the JSON form of :func:`config_dict`."""
    return to_jsonable(config_dict(config))


def config_hash(config):
    """First 8 hex digits of the SHA-256 of the stored config (keys sorted): names its results files."""
    text = json.dumps(stored_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


# ------------------------------------------------------------------------------------------- atomic writes
def write_atomic(path, write):
    """Call ``write(tmp)`` to create a file at a unique temporary path beside ``path``, then rename it to
    ``path`` (atomic on one file system); the temporary file is removed if ``write`` fails or is
    interrupted. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path, obj):
    """Write ``to_jsonable(obj)`` as JSON to ``path`` atomically (see :func:`write_atomic`)."""
    text = json.dumps(to_jsonable(obj))
    return write_atomic(path, lambda tmp: tmp.write_text(text))


@contextlib.contextmanager
def locked(folder, name=LOCK_NAME, on_wait=None):
    """Hold an exclusive advisory lock on ``folder/name`` (created if needed) for the ``with`` block;
    other processes taking the same lock wait (calling ``on_wait()`` first, if given). Without ``fcntl``
    (Windows) this does not lock."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------ results
def envelope(config, results, data=None, device=None, seconds=None, label=None):
    """The stored form of one run: config (and its hash), data used, device, seconds and results."""
    return {"format": FORMAT, "label": label, "config": stored_config(config),
            "config_hash": config_hash(config),
            "data": to_jsonable(data), "device": None if device is None else str(device),
            "seconds": seconds, "results": to_jsonable(results)}


def save_results(path, config, results, *, data=None, device=None, seconds=None, label=None):
    """Write the :func:`envelope` of a run to ``path`` atomically, holding the folder's lock; ``path``."""
    path = Path(path)
    stored = envelope(config, results, data, device, seconds, label)
    with locked(path.parent):
        return write_json_atomic(path, stored)


def read_envelope(path):
    """The envelope stored at ``path`` (files of the older ``{"config", "results"}`` form too), or ``None`` if
    there is no file; :class:`ResultsError` naming the file if it is not a results file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsError(f"results file {path} is unreadable ({err}); delete it or recompute with --rerun "
                           "(rerun=True)") from err
    if not isinstance(stored, dict) or "config" not in stored or "results" not in stored:
        raise ResultsError(f"{path} is not a hyperinit_lite results file (no config/results); delete it or "
                           "recompute with --rerun (rerun=True)")
    return stored


def matches(stored, config=None, data=_UNCHECKED):
    """Whether an envelope was made with ``config`` (unless ``None``) and ``data`` (unless not given)."""
    if config is not None and stored["config"] != stored_config(config):
        return False
    return data is _UNCHECKED or stored.get("data") == to_jsonable(data)


def load_results(path, config=None, data=_UNCHECKED):
    """Results stored at ``path``; ``None`` if absent, made with another config (when ``config`` is given) or
    with other data (when ``data`` is given). :class:`ResultsError` if the file is corrupt."""
    stored = read_envelope(path)
    if stored is None or not matches(stored, config, data):
        return None
    return stored["results"]


def load_or_run(path, config, run, rerun=False, data=None):
    """Load results for ``config`` from ``path`` or compute them with ``run(config)`` and save them.

    With ``data`` (a description of the data the run would use now, e.g. ``{"source": "mnist"}``), stored
    results made with other data are recomputed, and ``data`` is recorded with new results.
    """
    results = None if rerun else load_results(path, config, _UNCHECKED if data is None else data)
    if results is None:
        start = time.perf_counter()
        results = to_jsonable(run(config))
        save_results(path, config, results, data=data, seconds=time.perf_counter() - start)
    return results


def stored_result(name, config=None):
    """Results shipped with the package as ``hyperinit_lite/stored_results/<name>.json`` (paper-scale runs);
    ``None`` if there is no such file or (with ``config``) it was made with another config."""
    resource = importlib.resources.files("hyperinit_lite") / "stored_results" / f"{name}.json"
    if not resource.is_file():
        return None
    with importlib.resources.as_file(resource) as path:
        return load_results(path, config)


# -------------------------------------------------------------------------------------------- checkpoints
class Checkpoint:
    """The resumable state of one run of ``config``, in one file (``torch.save`` format).

    A runner calls ``state = checkpoint.load()`` (``None``, or the last saved state) at the start and
    ``checkpoint.save(state, label="epoch 3")`` after each unit of work. ``label`` is the last saved label
    (what an interruption message reports); :meth:`seconds` the run's wall-clock time so far, summed over
    sessions. A checkpoint of another config or other data is refused with :class:`ResultsError`.
    """

    def __init__(self, path, config, data=None):
        self.path, self.config, self.data = Path(path), config, to_jsonable(data)
        self.label, self._before, self._start = None, 0.0, time.perf_counter()

    def exists(self):
        return self.path.exists()

    def load(self):
        """The last saved state, or ``None`` when there is no checkpoint file."""
        if not self.path.exists():
            return None
        try:
            stored = torch.load(self.path, map_location="cpu", weights_only=False)
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, AttributeError, ValueError) as err:
            raise ResultsError(f"checkpoint {self.path} is unreadable ({type(err).__name__}); delete it or "
                               "start over with --rerun") from err
        if not isinstance(stored, dict) or stored.get("format") != FORMAT or "state" not in stored:
            raise ResultsError(f"{self.path} is not a hyperinit_lite checkpoint; delete it or start over "
                               "with --rerun")
        if stored["config"] != stored_config(self.config) or stored["data"] != self.data:
            raise ResultsError(f"checkpoint {self.path} was made with another config or other data; start "
                               "over with --rerun")
        self.label, self._before, self._start = stored["label"], stored["seconds"], time.perf_counter()
        return stored["state"]

    def seconds(self):
        """Wall-clock seconds of the run so far (earlier sessions included)."""
        return self._before + time.perf_counter() - self._start

    def save(self, state, label):
        """Save ``state`` (anything ``torch.save`` takes) atomically; ``label`` says how far the run got."""
        stored = {"format": FORMAT, "config": stored_config(self.config), "data": self.data,
                  "label": str(label), "seconds": self.seconds(), "state": state}
        write_atomic(self.path, lambda tmp: torch.save(stored, tmp))
        self.label = str(label)

    def remove(self):
        """Delete the checkpoint file (after the results are saved, or to start over)."""
        self.path.unlink(missing_ok=True)
