"""Policy heads: vectorised, seeded sampling with masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from relayrl import CategoricalHead, GaussianHead, MultiCategoricalHead, ObservationError
from relayrl.abc import HeadOutputs
from relayrl.spaces import Box, Discrete, MultiDiscrete


def test_categorical_frequencies_match_softmax() -> None:
    head = CategoricalHead(Discrete(3))
    logits = np.tile(np.log(np.array([0.2, 0.5, 0.3], np.float32)), (200_000, 1))
    act, logp = head.sample(HeadOutputs(logits=logits), np.random.default_rng(0))
    freq = np.bincount(act, minlength=3) / len(act)
    np.testing.assert_allclose(freq, [0.2, 0.5, 0.3], atol=0.005)
    np.testing.assert_allclose(logp, np.log([0.2, 0.5, 0.3])[act], atol=1e-5)
    np.testing.assert_allclose(head.log_prob(HeadOutputs(logits=logits[:10]), act[:10]), logp[:10], atol=1e-5)


def test_categorical_mask_is_respected_and_renormalised() -> None:
    head = CategoricalHead(Discrete(4))
    logits = np.zeros((50_000, 4), np.float32)
    mask = np.zeros((50_000, 4), bool)
    mask[:, [1, 3]] = True
    act, logp = head.sample(HeadOutputs(logits=logits), np.random.default_rng(1), mask=mask)
    assert set(np.unique(act)) == {1, 3}
    np.testing.assert_allclose(logp, math.log(0.5), atol=1e-6)
    det, _ = head.sample(HeadOutputs(logits=np.array([[5.0, 1, 0, 0]], np.float32)), np.random.default_rng(0),
                         mask=np.array([[False, True, True, True]]), deterministic=True)
    assert det.tolist() == [1]


def test_last_action_masked_is_never_picked() -> None:
    head = CategoricalHead(Discrete(3))
    logits = np.array([[0.0, 0.0, 50.0]], np.float32).repeat(10_000, 0)
    mask = np.array([[True, True, False]]).repeat(10_000, 0)
    act, _ = head.sample(HeadOutputs(logits=logits), np.random.default_rng(2), mask=mask)
    assert act.max() <= 1


def test_fully_masked_row_and_bad_mask_shapes_raise() -> None:
    head = CategoricalHead(Discrete(3))
    out = HeadOutputs(logits=np.zeros((2, 3), np.float32))
    with pytest.raises(ObservationError, match="row 1"):
        head.sample(out, np.random.default_rng(0), mask=np.array([[True, False, False], [False, False, False]]))
    with pytest.raises(ObservationError, match=r"\(2, 3\)"):
        head.sample(out, np.random.default_rng(0), mask=np.ones((2, 4), bool))
    with pytest.raises(ObservationError, match="dtype"):
        head.sample(out, np.random.default_rng(0), mask=np.array([["a", "b", "c"]] * 2))


def test_seeded_determinism_and_start_offset() -> None:
    head = CategoricalHead(Discrete(5, start=10))
    logits = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
    a1, _ = head.sample(HeadOutputs(logits=logits), np.random.default_rng(7))
    a2, _ = head.sample(HeadOutputs(logits=logits), np.random.default_rng(7))
    np.testing.assert_array_equal(a1, a2)
    assert a1.min() >= 10 and a1.max() <= 14


def test_multi_categorical() -> None:
    head = MultiCategoricalHead(MultiDiscrete((2, 3)))
    logits = np.log(np.array([[0.5, 0.5, 0.1, 0.1, 0.8]], np.float32)).repeat(100_000, 0)
    act, logp = head.sample(HeadOutputs(logits=logits), np.random.default_rng(0))
    assert act.shape == (100_000, 2)
    np.testing.assert_allclose(np.bincount(act[:, 1]) / 100_000, [0.1, 0.1, 0.8], atol=0.005)
    expected = np.log(0.5) + np.log(np.array([0.1, 0.1, 0.8]))[act[:, 1]]
    np.testing.assert_allclose(logp, expected, atol=1e-5)
    mask = np.array([[True, False, False, True, True]])
    with pytest.raises(ObservationError):
        head.sample(HeadOutputs(logits=logits[:1]), np.random.default_rng(0),
                    mask=np.array([[True, True, False, False, False]]))
    a, _ = head.sample(HeadOutputs(logits=logits[:1]), np.random.default_rng(0), mask=mask, deterministic=True)
    assert a.tolist() == [[0, 2]]


def test_gaussian_log_prob_and_clipping() -> None:
    head = GaussianHead(Box(-1.0, 1.0, (2,)))
    mean = np.array([[0.0, 0.5]], np.float32).repeat(100_000, 0)
    log_std = np.log(np.array([1.0, 0.1], np.float32))
    act, logp = head.sample(HeadOutputs(mean=mean, log_std=log_std), np.random.default_rng(0))
    np.testing.assert_allclose(act.std(0), [1.0, 0.1], rtol=0.02)
    z = (act - mean) / np.exp(log_std)
    expected = (-0.5 * z**2 - log_std - 0.5 * np.log(2 * np.pi)).sum(1)
    np.testing.assert_allclose(logp, expected, rtol=1e-5, atol=1e-5)
    det, _ = head.sample(HeadOutputs(mean=mean[:3], log_std=log_std), np.random.default_rng(0), deterministic=True)
    np.testing.assert_array_equal(det, mean[:3])
    clipped = GaussianHead(Box(-1.0, 1.0, (2,)), clip=True)
    act, logp = clipped.sample(HeadOutputs(mean=mean * 0 + 5, log_std=log_std), np.random.default_rng(0))
    assert act.max() <= 1.0
    np.testing.assert_allclose(logp, clipped.log_prob(HeadOutputs(mean=mean * 0 + 5, log_std=log_std), act), rtol=1e-5)
    with pytest.raises(ObservationError, match="discrete"):
        head.sample(HeadOutputs(mean=mean[:1], log_std=log_std), np.random.default_rng(0), mask=np.ones((1, 2), bool))
