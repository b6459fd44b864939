"""What a request cost in US dollars, from the prices in the config and the usage the gateway settles. Pure.

Money is counted in whole nano-dollars (10^-9 USD): sums of integers stay exact in every store (SQLite and Redis
hold 64-bit integers: up to $9.2 billion a counter), and a request's cost is rounded once, to half a
nano-dollar at most.
"""

from __future__ import annotations

from dataclasses import dataclass

NANO = 1_000_000_000  # nano-dollars in a dollar


@dataclass(frozen=True, slots=True)
class Pricing:
    """USD per million tokens: input, output, and input read from the provider's cache (the input price when the
    config names none)."""

    input_per_million: float
    output_per_million: float
    cached_input_per_million: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        """The cost in nano-dollars of a request that used `prompt_tokens` of input (`cached_tokens` of them read
        from the cache) and `completion_tokens` of output."""
        cached = min(max(cached_tokens, 0), max(prompt_tokens, 0))
        fresh = max(prompt_tokens, 0) - cached
        cached_price = self.cached_input_per_million
        if cached_price is None:
            cached_price = self.input_per_million
        # Prices per million tokens in dollars are nano-dollars per thousand tokens, times a thousand.
        nanos = (
            fresh * self.input_per_million + cached * cached_price + max(completion_tokens, 0) * self.output_per_million
        ) * 1000
        return round(nanos)


def usd(nanos: int) -> float:
    """Nano-dollars as dollars, for reports (rounded to the nano-dollar, as counted)."""
    return round(nanos / NANO, 9)
