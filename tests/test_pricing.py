"""What a request costs: prices per million tokens, cached input apart, counted in whole nano-dollars. Pure."""

from __future__ import annotations

import pytest

from gateway.config.agents import AgentSpec, compile_agent
from gateway.pricing import NANO, Pricing, usd

# Published list prices when this was written (docs/cost.md says where to check them): USD per million tokens.
GPT_4O_MINI = Pricing(input_per_million=0.15, output_per_million=0.60, cached_input_per_million=0.075)
CLAUDE_SONNET = Pricing(input_per_million=3.0, output_per_million=15.0, cached_input_per_million=0.30)


def test_a_request_costs_its_input_and_output_at_their_prices() -> None:
    # 1,200 input and 300 output tokens on gpt-4o-mini: 1,200 x $0.15/M + 300 x $0.60/M = $0.00036.
    assert GPT_4O_MINI.cost(1200, 300) == 360_000
    assert usd(GPT_4O_MINI.cost(1200, 300)) == 0.00036
    assert CLAUDE_SONNET.cost(1_000_000, 1_000_000) == 18 * NANO


def test_cached_input_is_priced_apart_and_never_more_than_the_input() -> None:
    # 1,000 input tokens of which 800 from the cache: 200 x $3 + 800 x $0.30 per million, plus 100 x $15.
    assert CLAUDE_SONNET.cost(1000, 100, cached_tokens=800) == (200 * 3_000 + 800 * 300 + 100 * 15_000)
    # A count that says more cached than input is held to the input.
    assert CLAUDE_SONNET.cost(100, 0, cached_tokens=500) == CLAUDE_SONNET.cost(100, 0, cached_tokens=100)
    # Without a cached price, cached input costs what input costs.
    plain = Pricing(input_per_million=2.0, output_per_million=8.0)
    assert plain.cost(1000, 0, cached_tokens=600) == plain.cost(1000, 0)


def test_fractions_of_a_nano_dollar_round_once_and_nothing_goes_negative() -> None:
    tiny = Pricing(input_per_million=0.0375, output_per_million=0.0)
    assert tiny.cost(1, 0) == 38  # 37.5 nano-dollars, rounded once
    assert tiny.cost(-5, -1, cached_tokens=-3) == 0
    assert tiny.cost(1_000_000_000_000, 0) == 37_500_000_000_000  # a trillion tokens fit the counters


def test_a_target_may_have_its_own_prices_and_the_others_take_the_agents() -> None:
    spec = AgentSpec.model_validate({
        "name": "mixed",
        "pricing": {"input_per_million": 0.15, "output_per_million": 0.6, "cached_input_per_million": 0.075},
        "llm": {"provider": "openai-compatible", "model": "m", "targets": [
            {"base_url": "http://a.example/v1"},
            {"base_url": "http://b.example/v1", "pricing": {"input_per_million": 0.1, "output_per_million": 0.4}},
        ]},
    })  # fmt: skip
    agent = compile_agent(spec, {})
    assert agent.targets[0].pricing == GPT_4O_MINI
    assert agent.targets[1].pricing == Pricing(0.1, 0.4, None)


@pytest.mark.parametrize("bad", [{"input_per_million": -1, "output_per_million": 1}, {"input_per_million": 1},
                                 {"input_per_million": 1, "output_per_million": 1, "cents": 2}])  # fmt: skip
def test_prices_are_checked_when_the_config_loads(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="pricing"):
        AgentSpec.model_validate({"name": "x", "llm": {"provider": "mock"}, "pricing": bad})


def test_the_worked_example_of_docs_cost_md() -> None:
    assert GPT_4O_MINI.cost(1200, 300) == 360_000
    assert GPT_4O_MINI.cost(5000, 200, cached_tokens=4096) == 562_800
    assert CLAUDE_SONNET.cost(9000, 700, cached_tokens=8000) == 15_900_000
