"""What the fuzz suite sends and what every answer must be (tests/test_fuzz.py).

The requests are built as an attacker and a buggy client would: valid-looking bodies with a few fields swapped for
odd values (numbers beyond 64 bits, NaN, lone surrogates, deep nesting, wrong types), raw bytes that are not JSON,
stray headers and query strings, odd path segments. The oracle is what a client must be able to rely on whatever
it sent: never a 500, every error as a JSON object in the OpenAI shape, every stream ending in `[DONE]` or an
error event, and no secret anywhere in the answer.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import strategies as st

# Numbers where parsers, databases and Lua disagree: the 32-, 53- and 64-bit edges, beyond them, and huge.
ODD_INTEGERS = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**40, -(10**40), 10**400]
ODD_TEXT = ["", " ", "\x00", "\u00b2", "\u0663", "1e999", "NaN", "null", "true", "../..", "%00", "\ud800", "\U0001f600"]
# Field names of every endpoint, so a mutation may put one endpoint's field where another's is expected.
FIELD_NAMES = [
    "model",
    "messages",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "session_id",
    "stream_options",
    "tools",
    "tool_choice",
    "input",
    "prompt",
    "n",
    "temperature",
    "metadata",
    "agent_name",
    "message",
    "limits",
    "quotas",
    "models",
    "name",
    "expires_at",
    "user",
    "role",
    "content",
    "tool_calls",
    "tool_call_id",
    "include_usage",
    "rpm",
    "tpm",
    "max_concurrent",
    "tokens_per_day",
    "grace_seconds",
]
ROLES = ["user", "assistant", "system", "developer", "tool", "function", "User", ""]
# The config's agents (test-dead's upstream is a closed port), and names that are none of them.
MODELS = [
    "test-chat",
    "test-alias",
    "demo",
    "test-bounded",
    "test-token-bounded",
    "test-partial",
    "test-nostream",
    "test-auto",
    "test-dead",
    "test-claude",
]
ODD_MODELS = ["nope", "test-chat/x", "", " test-chat", "TEST-CHAT", "\u00e9", "*", "test-*"]
# Upstream misbehaviour the test upstream performs on request (`x-test-behaviour`, forwarded by the gateway). None
# answers 500 itself, so that any 500 the client sees is the gateway's own.
UPSTREAM_BEHAVIOURS = [
    {"status": 429, "headers": {"retry-after": "1"}},
    {"status": 400},
    {"status": 503},
    {"status": 401, "body": "<html>no</html>", "content_type": "text/html"},
    {"not_json": True},
    {"drop_after": 1},
    {"no_done": True},
    {"no_usage": True},
    {"tool_call": True},
    {"ignore_stream": True},
    {"raw": "data: {not json}\n\n"},
    {"raw": "event: error\ndata: {}\n\n"},
]

DEEP = "__deep__"  # replaced, once encoded, by JSON nested 100 to 1,100 levels deep

scalars = (
    st.just(DEEP)
    | st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(ODD_INTEGERS)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(ODD_TEXT)
)
keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=10) | st.sampled_from(ODD_TEXT)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=10
)


def one_in(draw: st.DrawFn, n: int) -> bool:
    """True about once in `n` draws (an integer strategy would favour its bounds: 0 a quarter of the time)."""
    return bool(draw(st.sampled_from(range(n))) == 0)


# What a request may get wrong; each request has none, one or two of them, so that most reach the upstream and
# the rest fail in one or two ways at a time (a request wrong in five ways only ever tests the first check).
DEFECTS = ["fields", "bytes", "auth", "headers", "model", "messages"]


@st.composite
def defects(draw: st.DrawFn) -> frozenset[str]:
    count = draw(st.sampled_from([0, 0, 0, 1, 1, 1, 2]))
    return frozenset(draw(st.lists(st.sampled_from(DEFECTS), min_size=count, max_size=count, unique=True)))


@st.composite
def messages(draw: st.DrawFn, odd: bool) -> list[Any]:
    """Chat messages: a valid conversation ending with the user, or (odd) one nearly right."""
    text = st.text(max_size=40)
    parts = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), min_size=1, max_size=3)
    if not odd:
        earlier = st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": text}),
            max_size=3,
        )
        return [*draw(earlier), {"role": "user", "content": draw(text | parts)}]
    out: list[Any] = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3, 4, 0]))):
        if one_in(draw, 10):
            out.append(draw(json_values))
            continue
        message: dict[str, Any] = {"role": draw(st.sampled_from(ROLES) | json_values)}
        if not one_in(draw, 6):
            message["content"] = draw(text | parts | json_values)
        for name in ("tool_calls", "tool_call_id", "name"):
            if one_in(draw, 8):
                message[name] = draw(json_values)
        out.append(message)
    return out


@st.composite
def body(draw: st.DrawFn, path: str, faults: frozenset[str], sessions: Mapping[str, str]) -> bytes:
    """The bytes of a POST body for `path`, with the `faults` drawn for it. A session named in it is the model's
    own (`sessions`: agent → session id), or with the "fields" fault any."""
    name = draw(st.sampled_from(ODD_MODELS if "model" in faults else MODELS))
    model = st.just(name)
    chat = messages(odd="messages" in faults)
    own = sessions.get(name.replace("test-alias", "test-chat"))
    session = st.sampled_from(sorted(sessions.values())) if "fields" in faults or own is None else st.just(own)
    output = st.integers(1, 50) if "fields" not in faults else st.integers(-2, 5) | st.sampled_from(ODD_INTEGERS)
    stream = {"stream": st.booleans()}
    templates = {
        "/v1/chat/completions": st.fixed_dictionaries(
            {"model": model, "messages": chat},
            optional={
                **stream,
                "max_tokens": output,
                "session_id": session,
                "temperature": st.floats(0, 2),
                "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
            },
        ),
        "/v1/completions": st.fixed_dictionaries(
            {"model": model, "prompt": st.text(max_size=20)}, optional={**stream, "max_tokens": output}
        ),
        "/v1/embeddings": st.fixed_dictionaries(
            {"model": model, "input": st.text(min_size=1, max_size=20)}, optional=stream
        ),
        "/v1/responses": st.fixed_dictionaries(
            {"model": model, "input": st.text(max_size=20) | chat}, optional={**stream, "max_output_tokens": output}
        ),
        "/v1/chat": st.fixed_dictionaries(
            {"agent_name": model, "message": st.text(min_size=1, max_size=20)}, optional={"session_id": session}
        ),
        "/v1/sessions": st.fixed_dictionaries(
            {"agent_name": model}, optional={"metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5))}
        ),
    }
    templates["/v1/chat/stream"] = templates["/v1/chat"]
    # Anthropic's door: its own request shape (the messages above are near enough for the odd cases).
    blocks = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(min_size=1, max_size=20)}),
                      min_size=1, max_size=2)  # fmt: skip
    turns = (
        st.lists(
            st.fixed_dictionaries({"role": st.just("user"), "content": st.text(min_size=1, max_size=20) | blocks}),
            min_size=1,
            max_size=2,
        )
        if "messages" not in faults
        else chat
    )
    templates["/v1/messages"] = st.fixed_dictionaries(
        {"model": model, "max_tokens": output, "messages": turns},
        optional={**stream, "system": st.text(max_size=20), "temperature": st.floats(0, 1)},
    )
    value = draw(mutated(templates[path]) if "fields" in faults else templates[path])
    return draw(encoded(value, spoil="bytes" in faults))


@st.composite
def mutated(draw: st.DrawFn, template: st.SearchStrategy[dict[str, Any]]) -> Any:
    """The template with fields dropped, swapped for odd values or added; sometimes not an object at all."""
    if one_in(draw, 15):
        return draw(json_values)
    out = draw(template)
    changed = draw(st.sampled_from([1, 1, 1, 2]))
    for name in draw(st.lists(st.sampled_from(sorted(out)), max_size=changed, unique=True)):
        if one_in(draw, 3):
            del out[name]
        else:
            out[name] = draw(json_values)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        out[draw(keys)] = draw(json_values)
    return out


@st.composite
def encoded(draw: st.DrawFn, value: Any, spoil: bool) -> bytes:
    """The body's bytes: JSON (Python's, which writes NaN, Infinity and any integer), or (spoil) bytes that are
    not quite that."""
    text = json.dumps(value, allow_nan=True)
    if f'"{DEEP}"' in text:  # nesting on both sides of orjson's limits (it reads 1,024 levels and writes 254)
        depth = draw(st.integers(100, 1100))
        text = text.replace(f'"{DEEP}"', "[" * depth + "{}" + "]" * depth, 1)
    how = draw(st.sampled_from(["cut", "bytes", "bom", "utf-16", "empty"])) if spoil else "plain"
    if how == "cut":
        return text[: draw(st.integers(0, max(len(text) - 1, 0)))].encode("utf-8", "surrogatepass")
    if how == "bytes":
        return draw(st.binary(max_size=60))
    if how == "bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    if how == "utf-16":
        return text.encode("utf-16", "surrogatepass")
    if how == "empty":
        return b""
    return text.encode("utf-8", "surrogatepass")


# Header values httpx (h11) will send: visible ASCII and inner spaces, nothing it refuses as malformed.
header_text = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ", max_size=40).map(
    str.strip
)


@dataclass(frozen=True)
class Secrets:
    """What must never come back: the upstream's key, the admin key, the virtual key the fuzz uses."""

    upstream_key: str
    admin_key: str
    virtual_key: str

    def all(self) -> tuple[str, ...]:
        return (self.upstream_key, self.admin_key, self.virtual_key)


@st.composite
def headers(draw: st.DrawFn, secrets: Secrets, session_ids: list[str], faults: frozenset[str]) -> dict[str, str]:
    """Credentials and headers: right ones, or (faults "auth", "headers") odd ones; sometimes the upstream is told
    to misbehave."""
    out: dict[str, str] = {}
    if "auth" not in faults:
        name, value = draw(
            st.sampled_from(
                [("authorization", f"Bearer {secrets.virtual_key}")] * 4 + [("api-key", secrets.virtual_key)]
            )
        )
        out[name] = value
    else:
        credentials = (
            st.sampled_from(
                [
                    "Bearer",
                    "Basic abc",
                    f"Bearer {secrets.admin_key}",
                    f"Bearer {secrets.virtual_key}x",
                    f"Bearer {secrets.virtual_key[:-1]}",
                ]
            )
            | header_text
        )
        if not one_in(draw, 4):
            out["authorization"] = draw(credentials)
    if "headers" not in faults:
        out["content-type"] = "application/json"
    else:
        content_type = st.sampled_from(["text/plain", "application/json; charset=latin-1", "multipart/form-data", ""])
        out["content-type"] = draw(content_type | header_text)
        if one_in(draw, 2):
            out["x-session-id"] = draw(st.sampled_from(session_ids) | header_text)
        for name in draw(
            st.lists(
                st.sampled_from(["x-request-id", "x-forwarded-for", "accept", "x-api-key"]), min_size=1, max_size=3
            )
        ):
            out[name] = draw(header_text)
    if one_in(draw, 5):
        out["x-test-behaviour"] = json.dumps(draw(st.sampled_from(UPSTREAM_BEHAVIOURS)))
    return out


query_values = st.sampled_from([str(n) for n in ODD_INTEGERS] + ["-5", "\u00b2", "1.5", "", "abc"]) | header_text
queries = st.dictionaries(
    st.sampled_from(["limit", "offset", "days", "agent", "key_id", "agent_name", "from", "to", "x"]),
    query_values,
    max_size=3,
)
path_segments = (st.sampled_from([*ODD_TEXT, "sess_x", "key_x", "..", "a/b"]) | st.text(max_size=12)).map(
    lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="")
)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def __repr__(self) -> str:
        return f"{self.method} {self.path} params={self.params} headers={self.headers} body={self.body!r:.400}"

    def send(self, client: httpx.Client) -> httpx.Response:
        return client.request(self.method, self.path, headers=self.headers, params=self.params, content=self.body)


def check(request: Request, response: httpx.Response, secrets: Secrets) -> None:
    check_answer(request, response.status_code, response.headers, response.content, secrets)


def check_answer(request: Request, status: int, headers: Mapping[str, str], content: bytes, secrets: Secrets) -> None:
    """What a client may rely on whatever it sent."""
    what = repr(request)
    text = content.decode("utf-8", "replace")
    assert status != 500, f"500 for {what}: {text[:500]}"
    assert status in (502, 503, 504) or status < 500, f"{status} for {what}"
    for secret in secrets.all():
        assert secret not in text, f"a secret in the answer to {what}"
        assert all(secret not in value for value in headers.values()), f"a secret in the headers: {what}"
    content_type = headers.get("content-type", "")
    if request.method == "HEAD":
        assert not content, f"a body in the answer to {what}"
    elif status >= 400 and request.path.startswith("/v1/messages"):  # Anthropic's error shape
        assert content_type.startswith("application/json"), f"{status} {content_type} for {what}: {text[:300]}"
        answer = json.loads(content)
        assert answer.get("type") == "error", f"not an Anthropic error for {what}: {text[:300]}"
        assert isinstance(answer["error"].get("type"), str), f"no type for {what}: {text[:300]}"
        assert isinstance(answer["error"].get("message"), str), f"no message for {what}: {text[:300]}"
        assert "request-id" in headers, f"no request-id for {what}"
    elif status >= 400:
        assert content_type.startswith("application/json"), f"{status} {content_type} for {what}: {text[:300]}"
        error = json.loads(content).get("error")
        assert isinstance(error, dict), f"no error object for {what}: {text[:300]}"
        assert isinstance(error.get("message"), str), f"no message for {what}: {text[:300]}"
        assert isinstance(error.get("type"), str), f"no type for {what}: {text[:300]}"
        assert error.get("code") != "internal_error", f"a bug for {what}: {text[:300]}"
    elif content_type.startswith("text/event-stream"):
        # Events are relayed as the upstream sent them (whole, but not parsed): only when the upstream was told to
        # send raw bytes may one of them not be JSON.
        check_stream(text, what, events_are_json='"raw"' not in request.headers.get("x-test-behaviour", ""))
    elif content_type.startswith("application/json"):
        json.loads(content)  # whole JSON, or it raises


RESPONSES_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
# How a Messages stream ends: `message_stop`, or `event: error` (`{"type": "error", ...}`).
MESSAGES_ENDS = frozenset({"message_stop"})


def check_stream(text: str, what: str, *, events_are_json: bool = True) -> None:
    """Every event whole JSON (`events_are_json`); the stream ends as its API ends one, or with an error event,
    never just stops."""
    data = [line[len("data:") :].strip() for line in text.split("\n") if line.startswith("data:")]
    assert data, f"an empty stream for {what}"
    for item in data if events_are_json else ():
        if item != "[DONE]":
            json.loads(item)
    last = data[-1]  # [DONE], the API's own end, or the gateway's error event: JSON in every case
    event = json.loads(last) if last != "[DONE]" else {}
    # Chat and completions end with [DONE], the Responses API with its terminal event; a failure with an error.
    ended = last == "[DONE]" or "error" in event or event.get("type") in RESPONSES_ENDS | MESSAGES_ENDS
    assert ended, f"a stream that just stops for {what}: {text[-300:]}"
