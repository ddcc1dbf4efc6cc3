"""Learning algorithms for relayrl, in PyTorch: PPO, REINFORCE, IPPO and MAPPO.

They implement :class:`relayrl.abc.Algorithm` and register under the ``relayrl.algorithms``
entry-point group as ``ppo``, ``reinforce``, ``ippo`` and ``mappo``; get them with
``relayrl.algorithms.get(name)``. Trained policies export as numpy-backend model modules by
default, so actors need no torch to serve them.

.. versionadded:: 0.1
"""

from ._base import ActorCriticAlgorithm as ActorCriticAlgorithm
from .multiagent import IPPO as IPPO
from .multiagent import MAPPO as MAPPO
from .multiagent import IPPOConfig as IPPOConfig
from .multiagent import MAPPOConfig as MAPPOConfig
from .ppo import PPO as PPO
from .ppo import PPOConfig as PPOConfig
from .reinforce import REINFORCE as REINFORCE
from .reinforce import REINFORCEConfig as REINFORCEConfig

__all__ = [
    "IPPO", "MAPPO", "PPO", "REINFORCE", "ActorCriticAlgorithm", "IPPOConfig", "MAPPOConfig", "PPOConfig",
    "REINFORCEConfig",
]
