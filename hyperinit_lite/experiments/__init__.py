"""Experiment runners of Part III (one module per experiment, each with ``PRESETS``, ``run`` and a CLI)."""
