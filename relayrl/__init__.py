"""relayrl: a trio-based multi-actor reinforcement-learning runtime.

The public API lives here; implementation modules are private (``relayrl._*``). Importing
relayrl is light: it imports no torch, onnxruntime, cupy, zmq, nats, pyarrow or OpenTelemetry SDK.
"""

from . import abc as abc
from . import algorithms as algorithms
from . import backends as backends
from . import envs as envs
from . import sinks as sinks
from . import spaces as spaces
from . import transports as transports
from ._agent import Action as Action
from ._agent import ActionBatch as ActionBatch
from ._agent import Agent as Agent
from ._agent import AgentStatistics as AgentStatistics
from ._agent import open_agent as open_agent
from ._config import TrainConfig as TrainConfig
from ._errors import AgentClosedError as AgentClosedError
from ._errors import BackendUnavailableError as BackendUnavailableError
from ._errors import ConfigError as ConfigError
from ._errors import IntegrityError as IntegrityError
from ._errors import ModelError as ModelError
from ._errors import NoModelError as NoModelError
from ._errors import ObservationError as ObservationError
from ._errors import PluginUnavailableError as PluginUnavailableError
from ._errors import ProtocolError as ProtocolError
from ._errors import RelayRLError as RelayRLError
from ._errors import SinkError as SinkError
from ._errors import UnknownActorError as UnknownActorError
from ._errors import UnknownBackendError as UnknownBackendError
from ._errors import UnknownPluginError as UnknownPluginError
from ._heads import CategoricalHead as CategoricalHead
from ._heads import GaussianHead as GaussianHead
from ._heads import Head as Head
from ._heads import MultiCategoricalHead as MultiCategoricalHead
from ._heads import make_head as make_head
from ._model import ModelMetadata as ModelMetadata
from ._model import ModelModule as ModelModule
from ._model import TensorSpec as TensorSpec
from ._numpy_backend import mlp_policy as mlp_policy
from ._numpy_backend import numpy_mlp as numpy_mlp
from ._records import read_trajectories as read_trajectories
from ._server import TrainingServer as TrainingServer
from ._server import UpdateRecord as UpdateRecord
from ._server import open_training_server as open_training_server
from ._sinks import TrajectorySink as TrajectorySink
from ._train import EvalResult as EvalResult
from ._train import TrainResult as TrainResult
from ._train import evaluate as evaluate
from ._train import train as train
from ._trajectory import Trajectory as Trajectory
from ._transport_sink import TransportSink as TransportSink
from ._transport_sink import connect_agent as connect_agent
from ._version import __version__ as __version__


def _fixup_module_metadata() -> None:
    # Show public names as relayrl.X in reprs, tracebacks and docs.
    for name, obj in list(globals().items()):
        if not name.startswith("_") and getattr(obj, "__module__", "").startswith("relayrl._"):
            try:
                obj.__module__ = "relayrl"
            except (AttributeError, TypeError):
                pass


_fixup_module_metadata()
del _fixup_module_metadata
