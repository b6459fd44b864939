"""Bounding a session's stored history: oldest whole turns go first, system messages and tool pairs stay intact."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.sessions.history import MESSAGE_OVERHEAD_TOKENS, bound, estimate_message_tokens

Message = dict[str, Any]


def system(text: str = "You are terse.") -> Message:
    return {"role": "system", "content": text}


def user(text: str = "Hi") -> Message:
    return {"role": "user", "content": text}


def assistant(text: str = "Hello") -> Message:
    return {"role": "assistant", "content": text}


def calls(*ids: str, name: str = "get_weather", arguments: str = '{"city":"Paris"}') -> Message:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": i, "type": "function", "function": {"name": name, "arguments": arguments}} for i in ids],
    }


def result(call_id: str, content: str = '{"celsius":21}') -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def tokens(messages: list[Message]) -> int:
    return sum(estimate_message_tokens(m) for m in messages)


TURN_1 = [user("What is the weather in Paris?"), calls("call_1"), result("call_1"), assistant("21°C in Paris.")]
TURN_2 = [user("And in Rome and Oslo?"), calls("call_2", "call_3"), result("call_3"), result("call_2"), assistant("")]
TURN_3 = [user("Thanks"), assistant("You're welcome.")]
HISTORY = [system(), *TURN_1, *TURN_2, *TURN_3]


def test_estimate_counts_text_tool_calls_and_a_per_message_overhead() -> None:
    assert MESSAGE_OVERHEAD_TOKENS == 4
    assert estimate_message_tokens({"role": "user", "content": ""}) == 4
    assert estimate_message_tokens(user("abcdefgh")) == 2 + 4
    assert estimate_message_tokens(user("abcdefghi")) == 3 + 4  # rounded up
    parts = [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    assert estimate_message_tokens({"role": "user", "content": parts}) == 1 + 4
    # name "get_weather" (11) + arguments '{"city":"Paris"}' (16) = 27 characters, twice
    assert estimate_message_tokens(calls("call_1", "call_2")) == 14 + 4
    assert estimate_message_tokens({"role": "assistant", "content": None, "refusal": "No can do"}) == 3 + 4
    assert estimate_message_tokens({"role": "assistant"}) == 4


def test_without_bounds_the_history_is_kept_whole() -> None:
    assert bound(HISTORY, max_messages=None, max_tokens=None) == HISTORY
    assert bound([], max_messages=None, max_tokens=None) == []
    assert bound([], max_messages=0, max_tokens=0) == []


def test_a_message_bound_drops_the_oldest_whole_turns() -> None:
    assert bound(HISTORY, max_messages=len(HISTORY), max_tokens=None) == HISTORY
    assert bound(HISTORY, max_messages=len(HISTORY) - 1, max_tokens=None) == [system(), *TURN_2, *TURN_3]
    # Turn 2 would fit in 7 messages only if split between its tool calls and results: it goes whole.
    assert bound(HISTORY, max_messages=7, max_tokens=None) == [system(), *TURN_3]
    assert bound(HISTORY, max_messages=3, max_tokens=None) == [system(), *TURN_3]


def test_a_token_bound_drops_the_oldest_whole_turns() -> None:
    newest_two = [system(), *TURN_2, *TURN_3]
    assert bound(HISTORY, max_messages=None, max_tokens=tokens(newest_two)) == newest_two
    assert bound(HISTORY, max_messages=None, max_tokens=tokens(newest_two) - 1) == [system(), *TURN_3]
    assert bound(HISTORY, max_messages=None, max_tokens=tokens(HISTORY)) == HISTORY


def test_both_bounds_hold_at_once() -> None:
    newest_two = [system(), *TURN_2, *TURN_3]
    assert bound(HISTORY, max_messages=100, max_tokens=tokens(newest_two)) == newest_two
    assert bound(HISTORY, max_messages=5, max_tokens=tokens(newest_two)) == [system(), *TURN_3]


def test_the_newest_turn_is_dropped_too_when_it_alone_exceeds_a_bound() -> None:
    long_turn = [user("x" * 400), assistant("y" * 400)]
    history = [system(), *TURN_3, *long_turn]
    assert bound(history, max_messages=None, max_tokens=100) == [system()]
    assert bound([*TURN_1], max_messages=3, max_tokens=None) == []


def test_zero_messages_keeps_only_the_system_messages() -> None:
    developer = {"role": "developer", "content": "Answer in French."}
    assert bound([system(), *TURN_1, developer, *TURN_3], max_messages=0, max_tokens=None) == [system(), developer]


def test_system_messages_are_never_dropped_and_keep_their_place() -> None:
    late = system("From now on, answer in French.")
    developer = {"role": "developer", "content": "Be brief."}
    history = [system(), *TURN_1, late, *TURN_2[:2], developer, *TURN_2[2:], *TURN_3]

    kept = bound(history, max_messages=9, max_tokens=None)

    # Five turn messages fit next to the three system messages: turn 3 only, turn 2 is five messages.
    assert kept == [system(), late, developer, *TURN_3]
    assert bound(history, max_messages=10, max_tokens=None) == [
        system(),
        late,
        *TURN_2[:2],
        developer,
        *TURN_2[2:],
        *TURN_3,
    ]


def test_system_messages_alone_over_a_bound_are_kept_and_every_turn_dropped() -> None:
    huge = system("z" * 1000)
    assert bound([huge, *TURN_3], max_messages=None, max_tokens=10) == [huge]
    assert bound([system(), system("b"), *TURN_3], max_messages=1, max_tokens=None) == [system(), system("b")]


def test_a_history_that_starts_mid_turn_loses_its_leading_messages_first() -> None:
    greeting = assistant("Hi! I can check the weather for you.")
    history = [system(), greeting, *TURN_3]

    assert bound(history, max_messages=None, max_tokens=None) == history
    assert bound(history, max_messages=3, max_tokens=None) == [system(), *TURN_3]


def test_leading_tool_results_whose_call_was_cut_off_are_never_kept() -> None:
    cut = [result("call_1"), assistant("21°C in Paris."), *TURN_3]
    assert bound(cut, max_messages=None, max_tokens=None) == TURN_3
    parallel_cut = [*TURN_2[3:], *TURN_3]  # the second result and the answer of a two-call turn
    assert bound(parallel_cut, max_messages=None, max_tokens=None) == TURN_3


def test_a_turn_with_a_tool_result_but_no_call_ends_what_is_kept() -> None:
    broken = [user("Weather?"), result("call_9"), assistant("Sunny.")]
    assert bound([*TURN_1, *broken, *TURN_3], max_messages=None, max_tokens=None) == TURN_3
    no_id = [user("Weather?"), calls("call_1"), {"role": "tool", "content": "sunny"}]
    assert bound([*no_id, *TURN_3], max_messages=None, max_tokens=None) == TURN_3


def test_negative_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_messages"):
        bound(HISTORY, max_messages=-1, max_tokens=None)
    with pytest.raises(ValueError, match="max_tokens"):
        bound(HISTORY, max_messages=None, max_tokens=-5)


def test_the_stored_history_is_not_modified() -> None:
    history = [dict(m) for m in HISTORY]
    bound(history, max_messages=3, max_tokens=10)
    assert history == HISTORY


# Values a stored message may hold that no client could send any more (an upstream's reply, an older release's
# history): bounding must never raise on them, or the turn being stored is lost.
ODD_VALUES: list[Any] = [{}, [], ["x"], {"id": "call_1"}, 3, 2.5, True, None, "", [[{}]]]


@pytest.mark.parametrize("odd", ODD_VALUES)
def test_bounding_never_raises_on_odd_values_in_any_field(odd: Any) -> None:
    poisoned = [
        {"role": odd, "content": "x"},
        {"role": "user", "content": odd, "name": odd},
        {"role": "assistant", "content": None, "tool_calls": odd, "refusal": odd},
        {"role": "assistant", "content": None, "tool_calls": [odd, {"id": odd, "function": odd}]},
        {"role": "assistant", "tool_calls": [{"id": odd, "function": {"name": odd, "arguments": odd}}]},
        {"role": "tool", "tool_call_id": odd, "content": "r"},
        odd,
    ]
    history = [system(), *poisoned, *TURN_3]
    for max_messages, max_tokens in ((None, None), (4, None), (None, 30), (100, 1000), (0, 0)):
        kept = bound(history, max_messages=max_messages, max_tokens=max_tokens)  # type: ignore[arg-type]
        assert kept[-len(TURN_3) :] == TURN_3 or (max_messages == 0 and kept == [system()])


def test_only_string_tool_call_ids_answer_a_call() -> None:
    odd_call = {"role": "assistant", "content": None, "tool_calls": [{"id": ["call_1"], "type": "function"}]}
    odd_result = {"role": "tool", "tool_call_id": ["call_1"], "content": "r"}
    odd_turn = [user("Weather?"), odd_call, odd_result, assistant("Sunny.")]
    # The tool result names no call this turn made: the turn goes, as a result without its call would.
    assert bound([*odd_turn, *TURN_3], max_messages=None, max_tokens=None) == TURN_3
    assert bound([*TURN_1, *TURN_3], max_messages=None, max_tokens=None) == [*TURN_1, *TURN_3]


def test_a_role_that_is_not_a_string_is_neither_pinned_nor_a_turn_start() -> None:
    odd = {"role": {"name": "system"}, "content": "x"}
    assert bound([odd, *TURN_3], max_messages=len(TURN_3), max_tokens=None) == TURN_3
    assert bound([*TURN_3, odd], max_messages=None, max_tokens=None) == [*TURN_3, odd]


def random_turn(rng: random.Random, serial: list[int]) -> list[Message]:
    text = "w" * rng.randrange(0, 80)
    content: Any = text if rng.random() < 0.7 else [{"type": "text", "text": text}]
    turn: list[Message] = [{"role": "user", "content": content}]
    for _ in range(rng.randrange(0, 3)):
        ids = []
        for _ in range(rng.randrange(1, 4)):
            serial[0] += 1
            ids.append(f"call_{serial[0]}")
        turn.append(calls(*ids, arguments="a" * rng.randrange(0, 60)))
        turn.extend(result(i, "r" * rng.randrange(0, 40)) for i in rng.sample(ids, len(ids)))
    if rng.random() < 0.9:
        turn.append(assistant("t" * rng.randrange(0, 120)))
    return turn


def random_history(rng: random.Random) -> list[Message]:
    serial = [0]
    messages = [m for _ in range(rng.randrange(0, 8)) for m in random_turn(rng, serial)]
    if messages and rng.random() < 0.3:
        messages = messages[rng.randrange(len(messages)) :]  # stored history that starts mid-turn
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        pinned = {"role": rng.choice(["system", "developer"]), "content": "s" * rng.randrange(0, 100)}
        messages.insert(rng.randrange(len(messages) + 1), pinned)
    return messages


def is_pinned(message: Message) -> bool:
    return message["role"] in ("system", "developer")


def orphaned_results(messages: list[Message]) -> list[Message]:
    called: set[str] = set()
    orphans = []
    for m in messages:
        called.update(c["id"] for c in m.get("tool_calls") or [])
        if m["role"] == "tool" and m["tool_call_id"] not in called:
            orphans.append(m)
    return orphans


def within(messages: list[Message], max_messages: int | None, max_tokens: int | None) -> bool:
    return (max_messages is None or len(messages) <= max_messages) and (
        max_tokens is None or tokens(messages) <= max_tokens
    )


def test_random_histories_keep_every_invariant() -> None:
    rng = random.Random(20240605)
    trimmed = 0
    for _ in range(3000):
        history = random_history(rng)
        max_messages = rng.choice([None, rng.randrange(0, len(history) + 3)])
        max_tokens = rng.choice([None, rng.randrange(0, tokens(history) + 20)])

        kept = bound(history, max_messages=max_messages, max_tokens=max_tokens)

        # A subsequence of the stored history, by identity and in order.
        positions = [next(i for i, m in enumerate(history) if m is k) for k in kept]
        assert positions == sorted(set(positions))
        # Every system message kept; the other kept messages are the newest ones, with no gap.
        assert [m for m in history if is_pinned(m)] == [m for m in kept if is_pinned(m)]
        turns = [m for m in history if not is_pinned(m)]
        kept_turns = [m for m in kept if not is_pinned(m)]
        assert kept_turns == turns[len(turns) - len(kept_turns) :]
        # Whole turns: what is kept starts at a user message (or is the untouched leading partial turn).
        if kept_turns and kept_turns[0]["role"] != "user":
            assert kept_turns == turns
        assert orphaned_results(kept) == []
        if kept_turns:
            assert within(kept, max_messages, max_tokens)
        # Nothing dropped that could have stayed: the next older turn breaks a bound or lacks a tool call.
        dropped = turns[: len(turns) - len(kept_turns)]
        if dropped:
            trimmed += 1
            starts = [i for i, m in enumerate(dropped) if m["role"] == "user"]
            older = dropped[starts[-1] if starts else 0 :]
            extended = [m for m in history if any(m is k for k in [*kept, *older])]
            assert not within(extended, max_messages, max_tokens) or orphaned_results(older)
    assert trimmed > 1000  # the bounds were exercised, not just the identity
