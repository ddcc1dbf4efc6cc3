"""relayrl.train: the embedded loop (sync and async), stopping rules, run directory contents,
resume from a run directory, configs and bad input. Real gymnasium envs throughout; the
stand-in algorithm keeps these fast, one test trains real PPO briefly, full solves are slow."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from standin_algorithm import StandinAlgorithm

import relayrl
from relayrl._config import TrainConfig, load_config_file
from relayrl._train import METRICS_COLUMNS


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_sync_mode_trains_on_exact_rollouts_with_one_version_per_update(tmp_path: Path) -> None:
    res = relayrl.train("CartPole-v1", algo=StandinAlgorithm, num_envs=4, total_steps=400, seed=3,
                        config={"steps_per_update": 40}, run_dir=tmp_path)
    assert not res.solved and res.target_return == 475.0  # the env's threshold
    assert res.steps == 400 or 400 < res.steps < 440  # whole rollouts of 40
    updates = [r for r in res.history if not math.isnan(r["train_time"])]
    # Every update consumed exactly one rollout of 40 env steps (a few more agent steps when an
    # env's autoreset step counts no env step), and versions go 1, 2, 3, ...
    assert all(40 <= r["train/steps"] < 48 for r in updates), [r["train/steps"] for r in updates]
    assert [r["model_version"] for r in updates] == list(range(1, len(updates) + 1))
    assert len(updates) in (9, 10)  # the last rollout may not have been trained on when the budget ran out
    assert res.model.version == len(updates)
    # Run directory: resolved config, metrics, checkpoints, final model.
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["env"] == "CartPole-v1" and cfg["num_envs"] == 4 and cfg["total_steps"] == 400
    assert cfg["algo"] == "standin" and cfg["algo_config"] == {"steps_per_update": 40, "fail_on_update": -1}
    assert cfg["target_return"] == 475.0
    rows = read_metrics(tmp_path)
    assert tuple(rows[0]) == METRICS_COLUMNS
    assert rows[0]["step"] == "0" and int(rows[-1]["step"]) == res.steps
    assert int(rows[-1]["episodes"]) == res.episodes and int(rows[-1]["model_version"]) == res.model.version
    assert relayrl.ModelModule.load(tmp_path / "model") == res.model
    assert (tmp_path / "checkpoints" / "LATEST").is_file()


def test_async_mode_and_no_run_dir() -> None:
    res = relayrl.train("CartPole-v1", algo=StandinAlgorithm, num_envs=2, total_steps=300, mode="async",
                        config={"steps_per_update": 50})
    assert res.run_dir is None and 300 <= res.steps < 302
    assert res.model.version is not None and res.model.version >= 1
    versions = [r["model_version"] for r in res.history]
    assert versions == sorted(versions)


def test_target_reached_stops_and_reports_solved() -> None:
    res = relayrl.train("CartPole-v1", algo=StandinAlgorithm, num_envs=4, total_steps=50_000, target_return=5.0,
                        window=10, config={"steps_per_update": 64})
    assert res.solved and res.episodes >= 10 and res.mean_return >= 5.0
    assert res.steps < 50_000


def test_resume_from_run_dir_never_goes_back_in_version(tmp_path: Path) -> None:
    first = relayrl.train("CartPole-v1", algo=StandinAlgorithm, num_envs=2, total_steps=200,
                          config={"steps_per_update": 20}, run_dir=tmp_path)
    second = relayrl.train("CartPole-v1", algo=StandinAlgorithm, num_envs=2, total_steps=200,
                           config={"steps_per_update": 20}, run_dir=tmp_path)
    assert first.model.version is not None and second.model.version is not None
    assert second.model.version > first.model.version
    versions = [int(r["model_version"]) for r in read_metrics(tmp_path)]
    assert versions == sorted(versions)  # metrics.csv continues: the lineage never goes back


def test_multi_agent_env_through_module_callable(tmp_path: Path) -> None:
    res = relayrl.train("relayrl.envs:coop_nav", algo=StandinAlgorithm, num_envs=2, total_steps=200,
                        config={"steps_per_update": 20}, run_dir=tmp_path)
    threshold = relayrl.envs.make("relayrl.envs:coop_nav").reward_threshold
    assert threshold is not None and res.target_return == threshold and res.steps >= 200 and res.episodes > 0


def test_ppo_learns_on_cartpole_briefly(tmp_path: Path) -> None:
    pytest.importorskip("relayrl_torch")
    res = relayrl.train("CartPole-v1", total_steps=4096, seed=0, run_dir=tmp_path)
    assert res.model.version == 8  # 8 envs x 64 steps per update (PPO's CartPole defaults)
    trained = [r for r in res.history if "train/approx_kl" in r]
    assert len(trained) == 8 and all(math.isfinite(r["train/policy_loss"]) for r in trained)
    assert relayrl.evaluate(tmp_path / "model", "CartPole-v1", episodes=3).mean > 0


def test_same_seed_same_training_run() -> None:
    pytest.importorskip("relayrl_torch")
    a = relayrl.train("CartPole-v1", total_steps=2048, seed=5)
    b = relayrl.train("CartPole-v1", total_steps=2048, seed=5)
    assert a.model == b.model and a.episodes == b.episodes and a.mean_return == b.mean_return


def test_evaluate_is_deterministic_and_checks_shapes() -> None:
    model = relayrl.mlp_policy(4, relayrl.spaces.Discrete(2), hidden=(8,), seed=1)
    a = relayrl.evaluate(model, "CartPole-v1", episodes=5, seed=7)
    b = relayrl.evaluate(model, "CartPole-v1", episodes=5, seed=7)
    assert a.returns == b.returns and len(a.returns) == 5 and a.std >= 0
    wrong = relayrl.mlp_policy(3, relayrl.spaces.Discrete(2), hidden=(8,))
    with pytest.raises(relayrl.ConfigError, match="shape"):
        relayrl.evaluate(wrong, "CartPole-v1", episodes=1)
    with pytest.raises(relayrl.ConfigError, match="episodes"):
        relayrl.evaluate(model, "CartPole-v1", episodes=0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"env": "NoSuchEnv-v9"}, "NoSuchEnv"),
    ({"env": "CartPole-v1", "num_envs": 0}, "num_envs"),
    ({"env": "CartPole-v1", "mode": "sometimes"}, "mode"),
    ({"env": "CartPole-v1", "backend": "tpu"}, "backend"),
    ({"env": "CartPole-v1", "config": {"steps_per_updat": 3}}, "steps_per_updat"),
    ({"env": "CartPole-v1", "target_return": math.inf}, "target_return"),
    ({"env": "CartPole-v1", "backend": "onnx"}, "export_backend"),
])
def test_bad_arguments_raise_config_error_naming_them(kwargs: dict[str, object], match: str) -> None:
    env = kwargs.pop("env")
    with pytest.raises(relayrl.ConfigError, match=match):
        relayrl.train(env, algo=StandinAlgorithm, total_steps=10, **kwargs)  # type: ignore[arg-type]


def test_unknown_algorithm_is_the_plugin_error() -> None:
    with pytest.raises(relayrl.UnknownPluginError, match="no learning algorithm named 'nope'"):
        relayrl.train("CartPole-v1", algo="nope")


def test_tensorboard_event_files(tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    relayrl.train("CartPole-v1", algo=StandinAlgorithm, num_envs=2, total_steps=100, run_dir=tmp_path,
                  tensorboard=True, config={"steps_per_update": 20})
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_needs_a_run_dir() -> None:
    pytest.importorskip("torch.utils.tensorboard")
    with pytest.raises(relayrl.ConfigError, match="run directory"):
        relayrl.train("CartPole-v1", algo=StandinAlgorithm, total_steps=10, tensorboard=True)


# -- config files ------------------------------------------------------------------------------------------


def test_toml_and_json_config_files(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('env = "CartPole-v1"\nseed = 4\n\n[algo_config]\nlr = 0.001\n\n[env_kwargs]\nx = 1\n')
    cfg = TrainConfig.from_dict(load_config_file(toml))
    assert (cfg.env, cfg.seed, cfg.algo, cfg.algo_config, cfg.env_kwargs) == ("CartPole-v1", 4, "ppo",
                                                                               {"lr": 0.001}, {"x": 1})
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"train": {"env": "Pendulum-v1", "total_steps": 10}}))
    assert TrainConfig.from_dict(load_config_file(nested)).total_steps == 10


@pytest.mark.parametrize(("text", "suffix", "match"), [
    ('env = "CartPole-v1"\nsed = 1\n', ".toml", "unknown key 'sed'"),
    ('env = "CartPole-v1"\nseed = "one"\n', ".toml", "seed"),
    ('env = "CartPole-v1"\nnum_envs = -2\n', ".toml", "num_envs"),
    ('env = "CartPole-v1"\nalgo_config = 3\n', ".toml", "algo_config"),
    ("seed = 1\n", ".toml", "missing key 'env'"),
    ('env = [\n', ".toml", "not valid TOML"),
    ('{"env": ', ".json", "not valid JSON"),
    ('[1, 2]', ".json", "top level"),
    ('{"train": 5}', ".json", "'train' must be"),
])
def test_bad_config_files_name_the_problem(tmp_path: Path, text: str, suffix: str, match: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    with pytest.raises(relayrl.ConfigError, match=match):
        TrainConfig.from_dict(load_config_file(path))


def test_missing_config_file() -> None:
    with pytest.raises(relayrl.ConfigError, match="cannot read config file"):
        load_config_file("/nonexistent/run.toml")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_solves_cartpole(seed: int) -> None:
    pytest.importorskip("relayrl_torch")
    res = relayrl.train("CartPole-v1", seed=seed)
    assert res.solved and res.mean_return >= 475


@pytest.mark.slow
def test_reinforce_solves_cartpole() -> None:
    pytest.importorskip("relayrl_torch")
    res = relayrl.train("CartPole-v1", algo="reinforce", seed=0)
    assert res.solved, (res.steps, res.mean_return)


@pytest.mark.slow
def test_ppo_pendulum_reaches_minus_300() -> None:
    pytest.importorskip("relayrl_torch")
    res = relayrl.train("Pendulum-v1", seed=0, target_return=-300.0)
    assert res.solved, (res.steps, res.mean_return)
