"""Answers known from a request's head: sent without the app, once the body has come.

An app may know a request's whole answer from its scope alone — Sluice's
refusal of a new stream while its loop is behind (`server.gateway.SluiceApp`,
``immediate_response``). Such an answer still waits for the request's body:
hypercorn keeps an HTTP/1.1 connection for the client's next request only if
the request was read to its end when the response ends — otherwise it
closes it, and a client's pool that reuses it sees "server disconnected".

Two ways to send one:

- `answer_after_body`, the ASGI way, under any server: read the body (and
  drop it), then send;
- `ImmediateAnswer`, Sluice's TCP server's way (`server.serving.tcp_server.
  LeanTaskGroup`) for a request whose body came whole with its head (the
  usual case): no task is started for it; hypercorn puts its messages into
  this stand-in from the connection's own task as it parses them, and the
  answer goes out right there — on a busy loop, one pass sooner than a new
  task's first step, and cheaper. A body still on its way is read by a task
  running `AnswerAfterBody`, as on the ASGI way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, HTTPScope, Scope

# How long an answer waits for the rest of the request body (usually there already).
BODY_BOUND = 1.0


async def answer_after_body(receive: ASGIReceiveCallable, send: ASGISendCallable,
                            messages: Sequence[ASGISendEvent]) -> None:
    """Read the request body and drop it, then send ``messages``.

    A body that does not come within `BODY_BOUND` is left (and the connection
    with it: hypercorn closes a connection whose request was not read whole).
    """
    with trio.move_on_after(BODY_BOUND):
        while (message := await receive())["type"] == "http.request" \
                and message.get("more_body", False):
            pass
    for answer in messages:
        await send(answer)


class ImmediateAnswer:
    """Stands in for the app of one request whose answer was known from its head, and whose
    body had come whole with it.

    Called with each of the request's ASGI messages from the connection's task
    as hypercorn parses them: the body's end is in the same parse as the head,
    and the answer goes out then, in that task; hypercorn recycles the
    connection as after any response.
    """

    __slots__ = ("_messages", "_send")

    def __init__(self, messages: Sequence[ASGISendEvent], send: ASGISendCallable) -> None:
        self._messages = messages
        self._send = send

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.request" and not message.get("more_body", False):
            messages, self._messages = self._messages, ()
            for answer in messages:
                await self._send(answer)
        # the body's bytes: dropped; a disconnect: nothing to do


class AnswerAfterBody:
    """An ASGI app that only sends one known answer, once the request's body has come: for a
    body still on its way when the answer was known (`answer_after_body`)."""

    __slots__ = ("_messages",)

    def __init__(self, messages: Sequence[ASGISendEvent]) -> None:
        self._messages = messages

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable,
                       send: ASGISendCallable) -> None:
        await answer_after_body(receive, send, self._messages)


def content_length(scope: HTTPScope) -> int | None:
    """The request's ``Content-Length`` (h11 has checked it is one number), if it has one."""
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            return int(value)
    return None
