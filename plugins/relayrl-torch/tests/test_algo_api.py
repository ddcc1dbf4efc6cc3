"""The Algorithm contract: registry, config validation, space checks."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from relayrl_torch.algorithms import IPPO, MAPPO, PPO, REINFORCE, PPOConfig

import relayrl
from relayrl import ConfigError, UnknownPluginError
from relayrl.abc import Algorithm
from relayrl.spaces import Box, Discrete, MultiDiscrete

OBS = Box(low=-1.0, high=1.0, shape=(3,))


@pytest.mark.parametrize(("name", "cls"), [("ppo", PPO), ("reinforce", REINFORCE), ("ippo", IPPO), ("mappo", MAPPO)])
def test_registry_returns_the_class(name: str, cls: type[Algorithm]) -> None:
    assert name in relayrl.algorithms.names()
    assert name in relayrl.algorithms.available()
    got = relayrl.algorithms.get(name)
    assert got is cls
    assert got.name == name
    assert issubclass(got, relayrl.abc.Algorithm)
    assert isinstance(got(OBS, Discrete(2)).config, got.config_class)


def test_unknown_algorithm_names_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnknownPluginError, match="no-such-algo") as info:
        relayrl.algorithms.get("no-such-algo")
    assert isinstance(info.value, LookupError)
    # A well-known name that is not installed (hidden here by the allow-list) names its distribution.
    monkeypatch.setenv("RELAYRL_PLUGINS", "")
    relayrl.algorithms.registry.clear_cache()
    try:
        with pytest.raises(UnknownPluginError, match="relayrl-torch"):
            relayrl.algorithms.get("ppo")
        assert relayrl.algorithms.names() == []
    finally:
        monkeypatch.delenv("RELAYRL_PLUGINS")
        relayrl.algorithms.registry.clear_cache()
    assert relayrl.algorithms.get("ppo") is PPO


def test_importing_the_registry_imports_no_torch() -> None:
    code = ("import sys, relayrl; names = relayrl.algorithms.names(); "
            "assert 'ppo' in names, names; assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_defaults_and_overrides() -> None:
    algo = PPO(OBS, Discrete(2), config={"lr": 1e-3, "hidden": [32, 32]})
    assert algo.config.lr == 1e-3
    assert algo.config.hidden == (32, 32)
    assert algo.config.n_epochs == PPOConfig().n_epochs
    assert algo.steps_per_update == algo.config.num_envs * algo.config.n_steps
    assert PPO(OBS, Discrete(2), config=PPOConfig(lr=5e-4)).config.lr == 5e-4


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"learning_rate": 1e-3}, "learning_rate"),
        ({"lr": -1.0}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"n_epochs": 2.5}, "n_epochs"),
        ({"n_epochs": 0}, "n_epochs"),
        ({"gamma": 1.5}, "gamma"),
        ({"hidden": []}, "hidden"),
        ({"hidden": [64, "x"]}, "hidden"),
        ({"activation": "swish"}, "activation"),
        ({"export_backend": "tflite"}, "export_backend"),
        ({"normalize_obs": "yes"}, "normalize_obs"),
        ({"target_kl": 0}, "target_kl"),
        ({"max_staleness": -1}, "max_staleness"),
        ({"device": "quantum:0"}, "device"),
    ],
)
def test_bad_config_raises_config_error_naming_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        PPO(OBS, Discrete(2), config=config)


@pytest.mark.parametrize("cls", [REINFORCE, IPPO, MAPPO])
def test_every_algorithm_validates_its_config(cls: type[Algorithm]) -> None:
    with pytest.raises(ConfigError, match="bogus"):
        cls(OBS, Discrete(2), config={"bogus": 1})
    with pytest.raises(ConfigError, match="lr"):
        cls(OBS, Discrete(2), config={"lr": 0})
    with pytest.raises(ConfigError, match="critic_input"):
        MAPPO(OBS, Discrete(2), config={"critic_input": "everything"})


def test_config_mapping_type_is_checked() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        PPO(OBS, Discrete(2), config=[("lr", 1.0)])


def test_spaces() -> None:
    with pytest.raises(ConfigError, match="Box"):
        PPO(Discrete(4), Discrete(2))
    with pytest.raises(ConfigError, match="1-D"):
        PPO(OBS, Box(low=-1.0, high=1.0, shape=(2, 2)))
    # gymnasium spaces are accepted
    algo = PPO(gym.spaces.Box(-1.0, 1.0, (3,), np.float32), gym.spaces.MultiDiscrete([2, 3]))
    assert algo.action_space == MultiDiscrete((2, 3))


def test_multi_agent_spaces_must_be_homogeneous() -> None:
    same = IPPO({"a": OBS, "b": OBS}, {"a": Discrete(3), "b": Discrete(3)})
    assert same.action_space == Discrete(3)
    with pytest.raises(ConfigError, match="'b'"):
        IPPO({"a": OBS, "b": Box(low=-1.0, high=1.0, shape=(4,))}, Discrete(3))
    with pytest.raises(ConfigError, match="identical"):
        MAPPO(OBS, {"a": Discrete(3), "b": Discrete(2)})
    with pytest.raises(ConfigError, match="empty"):
        MAPPO({}, Discrete(2))


def test_presets() -> None:
    assert PPO.preset_for("CartPole-v1") == {}
    pend = PPO.preset_for("Pendulum-v1")
    assert pend["gamma"] == 0.9
    assert PPO.preset_for("Pendulum-v2") == pend  # same name, other version
    assert PPO.preset_for("NoSuchEnv-v0") == {}
    PPO.make_config(pend)  # presets are valid configs
    for cls in (REINFORCE, IPPO, MAPPO):
        for env_id in cls.PRESETS:
            cls.make_config(cls.preset_for(env_id))
