from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from relayrl import ConfigError
from relayrl.spaces import Box, Discrete, MultiDiscrete, from_gymnasium, space_from_dict


@pytest.mark.parametrize(
    "space",
    [Discrete(3), Discrete(4, start=-1), MultiDiscrete((2, 3)), Box(-1.0, 1.0, (2,)), Box([-np.inf, 0], [np.inf, 5])],
)
def test_dict_round_trip(space: object) -> None:
    assert space_from_dict(space.to_dict()) == space  # type: ignore[attr-defined]


def test_from_gymnasium() -> None:
    assert from_gymnasium(gym.spaces.Discrete(5, start=2)) == Discrete(5, start=2)
    assert from_gymnasium(gym.spaces.MultiDiscrete([3, 4])) == MultiDiscrete((3, 4))
    assert from_gymnasium(gym.spaces.MultiBinary(3)) == MultiDiscrete((2, 2, 2))
    box = from_gymnasium(gym.spaces.Box(-2.0, 2.0, (3,), dtype=np.float32))
    assert isinstance(box, Box)
    assert box.shape == (3,)
    assert box.bounded
    np.testing.assert_array_equal(box.low, -2.0)
    with pytest.raises(ConfigError, match="Dict"):
        from_gymnasium(gym.spaces.Dict({"a": gym.spaces.Discrete(2)}))


def test_contains_and_sample() -> None:
    rng = np.random.default_rng(0)
    for space in (Discrete(3), MultiDiscrete((2, 5)), Box(-1.0, 1.0, (4,))):
        for _ in range(20):
            assert space.contains(space.sample(rng))
    assert not Discrete(3).contains(3)
    assert not Box(0.0, 1.0, (2,)).contains(np.array([0.5, 2.0]))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: Discrete(0), "n must be"),
        (lambda: MultiDiscrete(()), "nvec"),
        (lambda: Box(1.0, 0.0, (2,)), "low must be"),
        (lambda: Box([0, 0], [1, 1, 1]), "do not fit"),
        (lambda: space_from_dict({"type": "torus"}), "unknown space"),
        (lambda: space_from_dict({"type": "discrete"}), "malformed"),
    ],
)
def test_bad_spaces_raise_config_error(factory: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        factory()  # type: ignore[operator]
