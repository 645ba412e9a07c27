"""The auto planner: predicted costs from pass times and Jacobi work, exploration, observation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flows.image import TransformerFlow
from flows.jacobi import JacobiStats
from flows.planner import AutoPlanner, Setting, Stage
from flows.sampling import ImageFlowSampler

SEQUENTIAL, JACOBI = Setting("sequential"), Setting("jacobi")
KEY = ("cpu", torch.float32)


def _flow() -> TransformerFlow:
    flow = TransformerFlow(image_size=8, patch_size=2, width=16, num_heads=2,
                           layers_per_block=[1, 2]).eval()  # fmt: skip
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return flow


def _stage(flow: TransformerFlow) -> Stage:
    t = flow.num_tokens
    return Stage("blocks", tuple(flow.blocks), rows=2, tokens=t, context=t // 2, chunk=t,
                 candidates=(SEQUENTIAL, JACOBI))  # fmt: skip


def test_prediction_follows_the_recorded_jacobi_work() -> None:
    flow = _flow()
    stage, planner, t = _stage(flow), AutoPlanner(), flow.num_tokens
    guess = planner.predict(stage, KEY, "cpu", torch.float32)
    assert guess["sequential"] > 0 and guess["jacobi"] > 0
    # Jacobi no better than T passes over all tokens: never cheaper than sequential
    planner.record(stage, KEY, JACOBI, 1.0, [JacobiStats([t], t * t)] * 2)
    costs = planner.predict(stage, KEY, "cpu", torch.float32)
    assert costs["jacobi"] >= costs["sequential"]
    assert costs["sequential"] == guess["sequential"]  # pass times are measured once
    # one pass over the tokens: always cheaper than T one-token passes
    planner.record(stage, KEY, JACOBI, 1.0, [JacobiStats([1], t)] * 2)
    costs = planner.predict(stage, KEY, "cpu", torch.float32)
    assert costs["jacobi"] < costs["sequential"]


def test_choose_explores_each_candidate_once_then_takes_the_fastest_observed() -> None:
    flow = _flow()
    stage, planner, t = _stage(flow), AutoPlanner(), flow.num_tokens
    planner.record(stage, KEY, JACOBI, 5.0, [JacobiStats([t], t * t)] * 2)
    # jacobi has run; sequential is untried, so it runs next whatever the prediction
    assert planner.choose(stage, KEY, "cpu", torch.float32) == SEQUENTIAL
    planner.record(stage, KEY, SEQUENTIAL, 2.0, [JacobiStats([1] * t, t)] * 2)
    assert planner.choose(stage, KEY, "cpu", torch.float32) == SEQUENTIAL
    planner.record(stage, KEY, JACOBI, 1.0, [JacobiStats([t], t * t)] * 2)  # best time kept
    assert planner.choose(stage, KEY, "cpu", torch.float32) == JACOBI
    assert planner.observed(stage, KEY) == {"sequential": 2.0, "jacobi": 1.0}
    # another situation (batch) starts afresh
    other = dataclasses.replace(stage, rows=3)
    assert planner.observed(other, KEY) == {}


def test_samplers_share_a_planner_and_keep_the_model_clean() -> None:
    flow = _flow()
    attributes = dict(vars(flow))
    planner = AutoPlanner()
    z = torch.randn(2, 1, 8, 8)
    for method in ("sequential", "jacobi"):  # explicit runs are observations too
        ImageFlowSampler(flow, method, planner=planner).reverse(z)
    auto = ImageFlowSampler(flow, "auto", planner=planner)
    _, info = auto.reverse(z)
    stage = auto._stage(2, guided=False)
    observed = planner.observed(stage, auto._key(False, tuple(auto.budgets)))
    assert set(observed) == {"sequential", "jacobi"}
    assert info["method"] == min(observed, key=observed.get)
    assert vars(flow) == attributes


@pytest.mark.parametrize("bad", ["fast", "Jacobi"])
def test_unknown_method_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=f"method '{bad}' is unknown; choose one of"):
        ImageFlowSampler(_flow(), bad)
