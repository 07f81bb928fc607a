"""Request messages reach the app without a trip through the scheduler when they can.

hypercorn puts a request's body, its end and the disconnect into a trio
channel; its own ``await channel.send`` and Quart's ``await receive()`` each
yield even when nothing has to wait. `LeanTaskGroup` and `handle_messages`
take the direct way when there is room or something waiting, and the usual
way when not — each checked here both ways.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import trio
import trio.testing
from hypercorn.config import Config
from quart_trio.wrappers.request import TrioBody

from server.api.connection import handle_messages
from server.serving.tcp_server import LeanTaskGroup

BODY: Any = {"type": "http.request", "body": b"{}", "more_body": True}
END: Any = {"type": "http.request", "body": b"", "more_body": False}
GONE: Any = {"type": "http.disconnect"}


async def test_a_message_for_an_app_with_room_is_put_without_a_checkpoint() -> None:
    received: list[dict[str, Any]] = []
    config = Config()
    config.max_app_queue_size = 2

    async def serve(scope: Any, receive: Any, send: Any, *_: Any) -> None:
        while (message := await receive())["type"] != "http.disconnect":
            received.append(message)

    async def app_send(message: Any) -> None:
        pass

    async with LeanTaskGroup() as group:
        app: Any = serve
        put = await group.spawn_app(app, config, cast(Any, {}), app_send)
        with trio.testing.assert_no_checkpoints():
            await put(BODY)
            await put(END)
        with trio.testing.assert_checkpoints():
            await put(GONE)  # the queue (2) is full: this one waits for the app, as before
    assert received == [BODY, END]


async def test_messages_that_wait_are_taken_without_a_checkpoint() -> None:
    send, receive = trio.open_memory_channel[dict[str, Any]](10)
    request = SimpleNamespace(body=TrioBody(None, None))
    for message in (BODY, END, GONE):
        send.send_nowait(message)
    with trio.testing.assert_no_checkpoints():
        await handle_messages(request, receive.receive)  # type: ignore[arg-type]
    assert await request.body == b"{}"


async def test_an_empty_queue_is_waited_on() -> None:
    send, receive = trio.open_memory_channel[dict[str, Any]](10)
    request = SimpleNamespace(body=TrioBody(None, None))
    async with trio.open_nursery() as nursery:
        messages: Any = handle_messages
        nursery.start_soon(messages, request, receive.receive)
        await trio.testing.wait_all_tasks_blocked()
        for message in (BODY, END, GONE):
            await send.send(message)
    assert await request.body == b"{}"
