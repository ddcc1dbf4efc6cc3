"""Action and observation spaces.

.. versionadded:: 0.1
"""

from ._spaces import Box as Box
from ._spaces import Discrete as Discrete
from ._spaces import MultiDiscrete as MultiDiscrete
from ._spaces import Space as Space
from ._spaces import from_gymnasium as from_gymnasium
from ._spaces import space_from_dict as space_from_dict

__all__ = ["Box", "Discrete", "MultiDiscrete", "Space", "from_gymnasium", "space_from_dict"]
