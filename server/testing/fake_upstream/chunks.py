"""SSE events of an OpenAI ``chat.completion.chunk`` stream, as ready-to-send bytes.

The fake upstream has to outrun the gateway it feeds, so a content event is
never serialised from a dict: `ChunkTemplates` renders everything that is the
same for every chunk of one response (id, created, model, line endings) once,
and `content_event` fills in only the token index with a single ``%``-format.
Token ``i`` reads ``f"t{i} "`` (`token_text`), so tests can check content exactly.

    templates = ChunkTemplates.render("chatcmpl-fake-1", created=1700000000, model="m")
    content_event(templates, 3)
    # b'data: {"id":"chatcmpl-fake-1",...,"choices":[{..."delta":{"content":"t3 "},...}]}\\n\\n'

Every function returns one whole event (``data: ...`` plus its blank line)
except that `split_event` cuts one in two for clients' parser tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

_LF = b"\n\n"
_CRLF = b"\r\n\r\n"
_DATA = b"data: "


def token_text(index: int) -> str:
    """The content of token `index` (0-based)."""
    return f"t{index} "


@dataclass(frozen=True, slots=True)
class ChunkTemplates:
    """The pre-rendered parts of one response's events."""

    head: bytes
    """``data: {"id":...,"object":...,"created":...,"model":...,`` — open for the next key."""
    content_pre: bytes
    content_post: bytes
    stamped_pre: bytes
    stamped_post: bytes
    eol: bytes
    """The blank line ending each event: LF LF, or CRLF CRLF."""

    @classmethod
    def render(
        cls,
        completion_id: str,
        *,
        created: int,
        model: str,
        crlf: bool = False,
    ) -> ChunkTemplates:
        eol = _CRLF if crlf else _LF
        head = b'%b{"id":%b,"object":"chat.completion.chunk","created":%d,"model":%b,' % (
            _DATA,
            orjson.dumps(completion_id),
            created,
            orjson.dumps(model),
        )
        choices = b'"choices":[{"index":0,"delta":{"content":"t'
        post = b' "},"finish_reason":null}]}' + eol
        return cls(
            head=head,
            content_pre=head + choices,
            content_post=post,
            stamped_pre=head + b'"sent_at":',
            stamped_post=b"," + choices,
            eol=eol,
        )


def role_event(t: ChunkTemplates) -> bytes:
    """The first chunk: the assistant role with empty content."""
    return (
        t.head
        + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
        + b'"finish_reason":null}]}'
        + t.eol
    )


def content_event(t: ChunkTemplates, index: int) -> bytes:
    """The chunk carrying `token_text(index)`."""
    return b"%b%d%b" % (t.content_pre, index, t.content_post)


def stamped_content_event(t: ChunkTemplates, index: int, sent_at: float) -> bytes:
    """`content_event` plus a top-level ``"sent_at": <unix time>`` for latency measurement."""
    return b"%b%.6f%b%d%b" % (t.stamped_pre, sent_at, t.stamped_post, index, t.content_post)


def finish_event(t: ChunkTemplates, reason: str) -> bytes:
    """The chunk with an empty delta and ``finish_reason`` (``"stop"`` or ``"length"``)."""
    return b'%b"choices":[{"index":0,"delta":{},"finish_reason":%b}]}%b' % (
        t.head,
        orjson.dumps(reason),
        t.eol,
    )


def usage_event(t: ChunkTemplates, prompt_tokens: int, completion_tokens: int) -> bytes:
    """The ``stream_options.include_usage`` chunk: no choices, only usage."""
    return (
        b'%b"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,'
        b'"total_tokens":%d}}%b'
        % (t.head, prompt_tokens, completion_tokens, prompt_tokens + completion_tokens, t.eol)
    )


def done_event(t: ChunkTemplates) -> bytes:
    return b"data: [DONE]" + t.eol


def malformed_event(t: ChunkTemplates) -> bytes:
    """A ``data:`` line that is not JSON, as a buggy upstream might send."""
    return b"data: {not json" + t.eol


def error_event(t: ChunkTemplates) -> bytes:
    """An in-stream error object, as vLLM and OpenAI send when generation fails mid-stream."""
    return (
        b'data: {"error":{"message":"upstream exploded","type":"server_error",'
        b'"code":null,"param":null}}' + t.eol
    )


def comment_event(t: ChunkTemplates, text: str = "") -> bytes:
    """An SSE comment (``:`` line) — sse-starlette's keep-alive ping is ``: ping - <time>``."""
    line = b":" if not text else b": " + text.encode()
    return line + t.eol


def split_event(event: bytes) -> tuple[bytes, bytes]:
    """Cut an event in two inside its first line, so a client sees a partial line."""
    cut = max(1, min(len(event) - 1, event.find(b"\n") // 2))
    return event[:cut], event[cut:]
