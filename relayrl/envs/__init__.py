"""Environments: gymnasium and PettingZoo behind one vector interface, and the runner that drives them.

``relayrl.envs.make(...)`` builds a :class:`VecEnv`; :class:`EnvRunner` steps it through an agent.
Importing this package imports neither gymnasium nor PettingZoo (they load when first needed).
"""

from ._coop_nav import CoopNavEnv as CoopNavEnv
from ._coop_nav import coop_nav as coop_nav
from ._runner import EnvRunner as EnvRunner
from ._runner import RunnerStatistics as RunnerStatistics
from ._vector import EnvStep as EnvStep
from ._vector import GymVecEnv as GymVecEnv
from ._vector import ParallelVecEnv as ParallelVecEnv
from ._vector import VecEnv as VecEnv
from ._vector import make as make

__all__ = [
    "CoopNavEnv", "EnvRunner", "EnvStep", "GymVecEnv", "ParallelVecEnv", "RunnerStatistics", "VecEnv",
    "coop_nav", "make",
]


def _fixup_module_metadata() -> None:
    # Show public names as relayrl.envs.X in reprs, tracebacks and docs.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("relayrl.envs._"):
            try:
                obj.__module__ = "relayrl.envs"
            except (AttributeError, TypeError):
                pass


_fixup_module_metadata()
del _fixup_module_metadata
