"""relayrl-onnx: the ONNX Runtime inference backend for relayrl.

relayrl finds it through the ``relayrl.backends`` entry point (``relayrl.backends.get("onnx")``);
importing this package imports onnxruntime. See :mod:`relayrl_onnx._backend` (and the README)
for the input and output names a model must use.
"""

from ._backend import ENV_VAR as ENV_VAR
from ._backend import OnnxBackend as OnnxBackend
from ._backend import OnnxPolicy as OnnxPolicy
from ._backend import get_num_threads as get_num_threads
from ._backend import session_options as session_options
from ._backend import set_num_threads as set_num_threads

__all__ = ["ENV_VAR", "OnnxBackend", "OnnxPolicy", "get_num_threads", "session_options", "set_num_threads"]
