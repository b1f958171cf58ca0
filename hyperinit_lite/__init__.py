"""hyperinit_lite: the companion package of the book *Initializing Hypernetworks*.

Each function's docstring names the chapter that derives it. The formulas, the package's two hypernets and
their initializers are imported here; chunked hypernets, learned (DIMAML) initializers, variance predictions
and the init registry load on first use. ``hl.init`` gathers the initializers in the ``torch.nn.init``
style: ``hl.init.hyperfan_in_(head, layer_shape, ...)`` for the output head of any hypernetwork
(:mod:`~hyperinit_lite.head_init`), ``hl.init.init_(hypernet, "hyperfan_in")`` for the package's hypernets
(:mod:`~hyperinit_lite.init_methods`).
"""
import importlib
import importlib.util
import sys
import types

from .classical import (MODES, NONLINEARITIES, harmonic_mean, init_variance, kaiming_variance, normal_,
                        relu_factor, sample_, uniform_, xavier_variance)
from .fans import fan_in_and_fan_out, receptive_field
from .hyperfan import (METHODS, hyperfan_in_bias_variance, hyperfan_in_weight_variance,
                       hyperfan_out_bias_variance, hyperfan_out_weight_variance, hyperfan_variances)
from .hypernet import Hypernet, classical_mainnet, layer_shapes, mainnet_forward, uniform_embeddings
from .initializers import (classical_, fan_in_body_, hyperfan_, hyperfan_harmonic_, hyperfan_in_,
                           hyperfan_out_, kaiming_, xavier_)
from .stats import hypernet_statistics, mainnet_statistics

__version__ = "0.1.0"

# name -> module, imported on first access (modules that pull in more, or that other work may be changing)
LAZY = {
    **dict.fromkeys(("ChunkedHypernet", "chunked_init_", "chunked_hyperfan_in_", "chunked_hyperfan_out_",
                     "chunked_hyperfan_harmonic_", "chunked_kaiming_", "chunked_xavier_",
                     "chunked_predicted_variances"), "chunked"),
    **dict.fromkeys(("LearnedInitializer", "load_initializer", "save_initializer"), "dimaml"),
    **dict.fromkeys(("predicted_profile", "hyperfan_generated_variances", "m1_generated_variances"),
                    "predict"),
    **dict.fromkeys(("InitMethod", "get_method", "init_", "predicted_variances"), "init_methods"),
    **dict.fromkeys(("head_variance", "hmlp_init_"), "head_init"),
}
# hl.init: the torch.nn.init-style namespace (name -> module)
INIT_NAMESPACE = {
    **dict.fromkeys(("hyperfan_", "hyperfan_in_", "hyperfan_out_", "hyperfan_harmonic_", "head_variance",
                     "hmlp_init_", "hmlp_targets"), "head_init"),
    **dict.fromkeys(("InitMethod", "METHODS", "ALIASES", "get_method", "init_", "predicted_variances",
                     "label"), "init_methods"),
}


def _present(module):
    return importlib.util.find_spec(f"{__name__}.{module}") is not None


def __getattr__(name):
    if name in LAZY:
        value = getattr(importlib.import_module(f".{LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _init_namespace():
    """The module ``hyperinit_lite.init`` (also ``import hyperinit_lite.init``), filled on first access."""
    doc = ("Initializers in the torch.nn.init style: hyperfan for the output head of any hypernetwork "
           "(head_init) and the init registry (init_methods).")
    module = types.ModuleType(f"{__name__}.init", doc)

    def lookup(name):
        if name not in INIT_NAMESPACE:
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{INIT_NAMESPACE[name]}", __name__), name)
        setattr(module, name, value)
        return value

    module.__getattr__ = lookup
    module.__all__ = list(INIT_NAMESPACE)
    sys.modules[module.__name__] = module
    return module


init = _init_namespace()

__all__ = [
    "MODES", "NONLINEARITIES", "harmonic_mean", "init_variance", "kaiming_variance", "normal_", "relu_factor",
    "sample_", "uniform_", "xavier_variance", "fan_in_and_fan_out", "receptive_field", "METHODS",
    "hyperfan_in_bias_variance", "hyperfan_in_weight_variance", "hyperfan_out_bias_variance",
    "hyperfan_out_weight_variance", "hyperfan_variances", "Hypernet", "classical_mainnet", "layer_shapes",
    "mainnet_forward", "uniform_embeddings", "classical_", "fan_in_body_", "hyperfan_",
    "hyperfan_harmonic_", "hyperfan_in_", "hyperfan_out_", "kaiming_", "xavier_",
    "hypernet_statistics", "mainnet_statistics", "init",
    *[name for name, module in LAZY.items() if _present(module)],
]
