"""Saving and reloading experiment results as JSON, keyed by the config that produced them.

A chapter calls ``load_or_run(path, config, run)``: when ``path`` holds results of the same config they are
loaded instead of retraining; otherwise ``run(config)`` is called and its results saved.
"""
import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np


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


def save_results(path, config, results):
    """Write ``{"config": ..., "results": ...}`` to ``path`` atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"config": to_jsonable(config_dict(config)), "results": to_jsonable(results)}))
    os.replace(tmp, path)
    return path


def load_results(path, config=None):
    """Results stored at ``path``, or ``None`` if absent or (when ``config`` is given) made with another config."""
    path = Path(path)
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    if config is not None and stored.get("config") != to_jsonable(config_dict(config)):
        return None
    return stored["results"]


def load_or_run(path, config, run, rerun=False):
    """Load results for ``config`` from ``path`` or compute them with ``run(config)`` and save them."""
    results = None if rerun else load_results(path, config)
    if results is None:
        results = to_jsonable(run(config))
        save_results(path, config, results)
    return results
