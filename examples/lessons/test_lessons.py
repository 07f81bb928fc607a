"""Each lesson's test: what a correct gateway does, run against both versions of the lesson.

``nox -s lessons`` runs them; see `conftest` for the verdict table and
`harness` for the staging. Each test names its lesson's symptom with
`symptom` — the one failure its broken gateway must show.
"""

from __future__ import annotations

from harness import Gateway, lesson, read_reply, stage, symptom

from server.testing.fake_upstream import Scenario


@lesson("01_closed_before_read")
async def test_01_the_answer_reaches_the_client(gateway: Gateway) -> None:
    async with stage(gateway, Scenario(tokens=5)) as gw, gw.stream() as response:
        reply = await read_reply(response)
    symptom(len(reply.tokens) == 5 and reply.done,
            f"the client got status {reply.status} and {len(reply.tokens)} of 5 tokens"
            + (f" (the body was cut: {reply.cut})" if reply.cut else ""))
