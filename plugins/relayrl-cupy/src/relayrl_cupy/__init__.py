"""relayrl-cupy: an inference backend for relayrl that runs ``.npz`` MLPs on a CUDA GPU with CuPy.

Importing this package needs no CuPy (so ``relayrl.backends.available()`` lists ``cupy`` once
the plugin is installed); CuPy is imported when a model is loaded on a ``"cuda"`` device.

* :class:`CupyBackend`: registered as ``cupy`` in the ``relayrl.backends`` entry-point group.
* :func:`to_cupy`: re-label a numpy-backend ``.npz`` module for this backend.
* :func:`make_device_head`: heads that sample on the GPU and return host arrays.
* :func:`cuda_available`: whether CuPy sees a CUDA device.
* :class:`ArrayKernels`, :class:`ArrayMLPPolicy`, :func:`make_array_head`: the same policy and
  heads on any Array API namespace (numpy, array-api-strict), which is how the shared logic is
  tested without a GPU.

.. versionadded:: 0.1
"""

from ._backend import CupyBackend as CupyBackend
from ._backend import CupyMLPPolicy as CupyMLPPolicy
from ._backend import cuda_available as cuda_available
from ._backend import make_device_head as make_device_head
from ._backend import to_cupy as to_cupy
from ._heads import DeviceCategoricalHead as DeviceCategoricalHead
from ._heads import DeviceGaussianHead as DeviceGaussianHead
from ._heads import DeviceMultiCategoricalHead as DeviceMultiCategoricalHead
from ._heads import make_array_head as make_array_head
from ._kernels import CUDA_SOURCE as CUDA_SOURCE
from ._kernels import ArrayKernels as ArrayKernels
from ._kernels import CupyKernels as CupyKernels
from ._kernels import FusedKernels as FusedKernels
from ._kernels import Kernels as Kernels
from ._mlp import ArrayMLPPolicy as ArrayMLPPolicy
from ._mlp import MLPWeights as MLPWeights
from ._mlp import parse_npz as parse_npz

__version__ = "0.1.0"

__all__ = [
    "CUDA_SOURCE",
    "ArrayKernels",
    "ArrayMLPPolicy",
    "CupyBackend",
    "CupyKernels",
    "CupyMLPPolicy",
    "DeviceCategoricalHead",
    "DeviceGaussianHead",
    "DeviceMultiCategoricalHead",
    "FusedKernels",
    "Kernels",
    "MLPWeights",
    "cuda_available",
    "make_array_head",
    "make_device_head",
    "parse_npz",
    "to_cupy",
]
