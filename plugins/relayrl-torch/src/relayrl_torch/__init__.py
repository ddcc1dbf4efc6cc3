"""relayrl-torch: the PyTorch inference backend (and training algorithms) for relayrl.

The ``torch`` backend serves TorchScript modules, ``torch.export`` programs (``.pt2``) and
RelayRL 0.4-style TorchScript policies; :func:`export_policy` packages a torch policy network
as a model module for the torch, onnx or numpy backend. relayrl finds the backend through the
``relayrl.backends`` entry point (``relayrl.backends.get("torch")``); importing this package
imports torch.
"""

from ._backend import TorchBackend as TorchBackend
from ._backend import TorchPolicy as TorchPolicy
from ._backend import detect_format as detect_format
from ._export import EXPORT_FORMATS as EXPORT_FORMATS
from ._export import ONNX_INPUT as ONNX_INPUT
from ._export import export_policy as export_policy
from ._threads import get_num_threads as get_num_threads
from ._threads import set_num_threads as set_num_threads

__all__ = [
    "EXPORT_FORMATS",
    "ONNX_INPUT",
    "TorchBackend",
    "TorchPolicy",
    "detect_format",
    "export_policy",
    "get_num_threads",
    "set_num_threads",
]
