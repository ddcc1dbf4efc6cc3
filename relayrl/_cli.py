"""The ``relayrl`` command line (also ``python -m relayrl``).

Subcommands: ``train``, ``eval``, ``plot``, ``inspect``, ``backends``. See ``docs/cli.md``.

Exit status: 0 on success (``train``: the task was solved or the budget ran out), 1 when a
run failed, 2 for bad input (unknown environment or algorithm, bad JSON, bad config key).

.. versionadded:: 0.1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _limit_threads() -> None:
    # Two cores: one BLAS/OpenMP thread per process unless the user says otherwise (set before torch loads).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def _json_object(text: str, option: str) -> dict[str, Any]:
    from ._errors import ConfigError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option} is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a JSON object such as '{{\"key\": 1}}', got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="relayrl", description="relayrl: a trio-based multi-actor reinforcement-learning runtime.")
    parser.add_argument("--version", action="version", version=f"relayrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train an algorithm on an environment (agent, envs and server in one process)",
                       description="Train until the mean return of the last 100 episodes reaches the target "
                                   "(default: the env's reward threshold) or the step budget runs out.")
    p.add_argument("env", nargs="?", metavar="ENV",
                   help="gymnasium id (CartPole-v1) or module:callable returning a gymnasium or PettingZoo env")
    p.add_argument("--algo", help="algorithm: ppo, reinforce, ippo, mappo (default: ppo)")
    p.add_argument("--num-envs", type=int, help="parallel environments (default: the algorithm's setting)")
    p.add_argument("--total-steps", type=int, help="environment-step budget (default: the algorithm's setting)")
    p.add_argument("--target-return", type=float, help="stop at this mean return (default: env reward threshold)")
    p.add_argument("--seed", type=int, help="seed (default: 0)")
    p.add_argument("--backend", choices=("numpy", "onnx", "torch"), help="model export format (default: numpy)")
    p.add_argument("--run-dir", help="output directory (default: runs/<env>-<algo>-s<seed>-<time>)")
    p.add_argument("--config", help="TOML or JSON file with these settings and [algo_config] hyperparameters")
    p.add_argument("--env-kwargs", help="JSON object of environment constructor arguments")
    p.add_argument("--algo-config", help="JSON object of algorithm hyperparameters (over --config's)")
    p.add_argument("--mode", choices=("sync", "async"), help="collection waits for each new model (sync, default) "
                                                             "or never waits (async)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N updates (default: 10)")
    p.add_argument("--tensorboard", action="store_true", default=None, help="also write TensorBoard event files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("eval", help="run a saved model on an environment and print its mean return")
    p.add_argument("model", metavar="MODEL", help="model directory (e.g. RUN_DIR/model) or bundle file")
    p.add_argument("--env", required=True, help="gymnasium id or module:callable")
    p.add_argument("--episodes", type=int, default=10, help="episodes to run (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of taking the most likely")
    p.add_argument("--env-kwargs", help="JSON object of environment constructor arguments")

    p = sub.add_parser("plot", help="plot the return curve of a run into a PNG (needs matplotlib)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding metrics.csv")
    p.add_argument("--output", help="PNG path (default: RUN_DIR/returns.png)")

    p = sub.add_parser("inspect", help="describe a model module or a trajectory file/directory")
    p.add_argument("path", metavar="PATH", help="model directory or bundle, or .arrow/.parquet/.csv trajectories")

    sub.add_parser("backends", help="list installed backends, transports and algorithms and whether each works")
    return parser


# -- train ------------------------------------------------------------------------------------------------


def _train_config(args: argparse.Namespace) -> Any:
    from ._config import TrainConfig, load_config_file
    from ._errors import ConfigError

    data: dict[str, Any] = load_config_file(args.config) if args.config else {}
    flags = {"env": args.env, "algo": args.algo, "num_envs": args.num_envs, "total_steps": args.total_steps,
             "target_return": args.target_return, "seed": args.seed, "backend": args.backend, "mode": args.mode,
             "checkpoint_every": args.checkpoint_every, "tensorboard": args.tensorboard}
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.env_kwargs is not None:
        data["env_kwargs"] = {**data.get("env_kwargs", {}), **_json_object(args.env_kwargs, "--env-kwargs")}
    if args.algo_config is not None:
        data["algo_config"] = {**data.get("algo_config", {}), **_json_object(args.algo_config, "--algo-config")}
    if "env" not in data:
        raise ConfigError("no environment: give ENV (e.g. `relayrl train CartPole-v1`) or `env` in --config")
    return TrainConfig.from_dict(data)


def _cmd_train(args: argparse.Namespace) -> int:
    import trio

    from ._train import default_run_dir, prepare_training, run_training

    config = _train_config(args)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(config)
    prepared = prepare_training(config, run_dir=run_dir)
    cfg = prepared.config
    print(f"training {cfg.algo} on {cfg.env} ({cfg.num_envs} envs, seed {cfg.seed}, budget {cfg.total_steps:,} steps, "
          f"target {'none' if cfg.target_return is None else cfg.target_return}); run dir {run_dir}", flush=True)
    result = trio.run(lambda: run_training(prepared, progress=not args.no_progress and sys.stderr.isatty()))
    ret = "n/a" if math.isnan(result.mean_return) else f"{result.mean_return:.1f}"
    verdict = "solved" if result.solved else "finished"
    print(f"{verdict} {cfg.env} in {result.wall_time:.1f} s: mean return {ret} over the last "
          f"{min(result.episodes, cfg.window)} episodes after {result.steps:,} steps ({result.episodes} episodes, "
          f"model version {result.model.version})")
    print(f"model: {run_dir / 'model'}  metrics: {run_dir / 'metrics.csv'}")
    return EXIT_OK


# -- eval -------------------------------------------------------------------------------------------------


def _cmd_eval(args: argparse.Namespace) -> int:
    from ._model import ModelModule
    from ._train import evaluate

    env_kwargs = _json_object(args.env_kwargs, "--env-kwargs") if args.env_kwargs is not None else None
    model = ModelModule.load(args.model)
    result = evaluate(model, args.env, episodes=args.episodes, deterministic=not args.stochastic, seed=args.seed,
                      env_kwargs=env_kwargs)
    mode = "stochastic" if args.stochastic else "deterministic"
    print(f"mean return {result.mean:.2f} +/- {result.std:.2f} over {len(result.returns)} episodes "
          f"({mode}, model version {model.version}, env {args.env})")
    return EXIT_OK


# -- plot -------------------------------------------------------------------------------------------------


def _cmd_plot(args: argparse.Namespace) -> int:
    import csv

    from ._errors import ConfigError, PluginUnavailableError

    run_dir = Path(args.run_dir)
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: {metrics} does not exist")
    steps: list[float] = []
    returns: list[float] = []
    with metrics.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                step, ret = float(row["step"]), float(row["mean_return"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{metrics} has a malformed row: {row}") from exc
            if not math.isnan(ret):
                steps.append(step)
                returns.append(ret)
    if not steps:
        raise ConfigError(f"{metrics} has no finished episodes to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PluginUnavailableError("`relayrl plot` needs matplotlib: `pip install matplotlib`") from exc
    out = Path(args.output) if args.output else run_dir / "returns.png"
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, returns, label="mean return (last 100 episodes)")
    config = run_dir / "config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cfg = {}
        if isinstance(cfg, dict):
            if isinstance(cfg.get("target_return"), int | float):
                ax.axhline(cfg["target_return"], color="grey", linestyle="--", label="target")
            ax.set_title(f"{cfg.get('algo', '')} on {cfg.get('env', '')}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    print(f"wrote {out}")
    return EXIT_OK


# -- inspect ----------------------------------------------------------------------------------------------


def _is_model(path: Path) -> bool:
    from ._model import METADATA_FILE, RELAYRL_METADATA_FILE

    if path.is_dir():
        return (path / METADATA_FILE).is_file() or (path / RELAYRL_METADATA_FILE).is_file()
    with path.open("rb") as fh:
        return fh.read(8) == b"RLRLMOD1"


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ._errors import ConfigError
    from ._model import ModelModule

    path = Path(args.path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    if _is_model(path):
        model = ModelModule.load(path, validate=False)
        m = model.metadata
        print(f"model module {path}")
        for key, value in (("backend", m.backend), ("model file", f"{m.model_file} ({len(model.data):,} bytes)"),
                           ("observation", f"{m.input.shape} {m.input.dtype}"), ("action space", m.action_space),
                           ("policy head", m.policy_head), ("value output", m.value_output),
                           ("version", m.version), ("sha256", m.checksum), ("extra", sorted(m.extra) or "-")):
            print(f"  {key:<13} {value}")
        model.validate()
        print("  validation    ok (a real forward on dummy batches)")
        return EXIT_OK
    from ._records import read_trajectories

    trajs = read_trajectories(path)
    steps = sum(len(t) for t in trajs)
    returns = [t.total_reward for t in trajs if t.terminated or t.truncated]
    versions = sorted({int(v) for t in trajs for v in np.unique(t.model_version)}) if trajs else []
    print(f"trajectories {path}")
    print(f"  trajectories  {len(trajs):,} ({sum(t.terminated for t in trajs):,} terminal, "
          f"{sum(t.truncated for t in trajs):,} truncated)")
    print(f"  steps         {steps:,}")
    print(f"  actors        {len({t.actor_id for t in trajs}):,}")
    if trajs:
        print(f"  observation   {trajs[0].obs.shape[1:]} {trajs[0].obs.dtype}; action {trajs[0].act.shape[1:]} "
              f"{trajs[0].act.dtype}")
        print(f"  model versions {versions[0]}..{versions[-1]} ({len(versions)} distinct)")
        print(f"  return/trajectory mean {np.mean(returns):.3f}" if returns else "  return/trajectory -")
    return EXIT_OK


# -- backends ---------------------------------------------------------------------------------------------


def _cmd_backends(args: argparse.Namespace) -> int:
    from . import algorithms, transports
    from ._backends import registry as backend_registry
    from ._plugins import PluginRegistry

    sections: tuple[tuple[str, PluginRegistry[Any]], ...] = (
        ("backends", backend_registry), ("transports", transports.registry), ("algorithms", algorithms.registry))
    for title, registry in sections:
        print(f"{title}:")
        status = registry.status()
        if not status:
            print("  (none installed)")
        for name, state in status.items():
            dist = registry.distribution(name)
            line = f"  {name:<10} {dist:<16} "
            print(line + ("usable" if state == "ok" else f"NOT usable: {state}"))
    return EXIT_OK


_COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "plot": _cmd_plot, "inspect": _cmd_inspect,
             "backends": _cmd_backends}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    .. versionadded:: 0.1
    """
    _limit_threads()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    from ._errors import ConfigError, ModelError, PluginUnavailableError, RelayRLError, SinkError

    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, PluginUnavailableError, ModelError, SinkError) as exc:
        print(f"relayrl {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RelayRLError as exc:
        print(f"relayrl {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"relayrl {args.command}: interrupted", file=sys.stderr)
        return 130
