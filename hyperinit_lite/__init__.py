"""hyperinit_lite: the companion package of the book *Initializing Hypernetworks*.

Each function's docstring names the chapter that derives it.
"""
from .classical import (MODES, NONLINEARITIES, harmonic_mean, init_variance, kaiming_variance, normal_,
                        relu_factor, sample_, uniform_, xavier_variance)
from .fans import fan_in_and_fan_out, receptive_field
from .hyperfan import (METHODS, hyperfan_in_bias_variance, hyperfan_in_weight_variance,
                       hyperfan_out_bias_variance, hyperfan_out_weight_variance, hyperfan_variances)
from .hypernet import Hypernet, classical_mainnet, layer_shapes, mainnet_forward, uniform_embeddings
from .initializers import (INITIALIZERS, classical_, fan_in_body_, hyperfan_, hyperfan_harmonic_, hyperfan_in_,
                           hyperfan_out_, init_hypernet_, kaiming_, xavier_)
from .stats import hypernet_statistics, mainnet_statistics

__version__ = "0.1.0"
