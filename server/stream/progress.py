"""How far one stream has got: what the client has been sent, and how it got there.

`StreamProgress` is the stream's control state. Its attempts write it
(`server.stream.attempt`): the commit point (``first_content_at``), whether a
choice finished, the text a continuation would resume. The request's plan
reads it to choose what comes after a failed attempt
(`server.stream.fail_over`), and the stream's nursery reads it once the
stream has ended, for metrics and logs — as may anything that wants to know
what a stream cost (``prompt_tokens`` and ``completion_tokens`` as the
upstream reported them, rewritten to count the whole answer after a
continuation):

    progress = StreamProgress()
    ... the stream runs ...
    if progress.committed: ...           # the client has text on screen
    progress.completion_tokens           # None: no usage chunk came
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class StreamProgress:
    """What the client has been sent so far; it survives from one attempt to the next."""

    first_content_at: float | None = None  # trio time of the first content chunk: the commit
    chunks: int = 0  # chunk payloads relayed (a held preamble not counted)
    finished: bool = False  # some choice has a finish_reason
    served_by: str | None = None  # the backend of the first content chunk
    attempts: int = 0  # upstream requests made, continuations included
    # The last usage the upstream reported, as relayed (a continuation's counts the whole
    # answer). Read from chunks without content, where upstreams send it, and from every
    # chunk of a continuation: a content chunk costs nothing more for it.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Kept only when a backend of the model can continue a cut (`server.stream.continuation`):
    content_chunks: int = 0  # ≈ completion tokens relayed (one token per chunk is the norm)
    tool_calls: bool = False  # a tool-call delta was relayed
    text: list[str] = field(default_factory=list)  # content relayed, for a continuation
    continuations: int = 0
    prefill_chunks: int = 0  # content chunks the current continuation was asked to continue

    @property
    def committed(self) -> bool:
        """Has content reached the client? Then a failure can no longer be retried unseen."""
        return self.first_content_at is not None

    def note_usage(self, usage: dict[str, Any]) -> None:
        """Keep the token counts of a usage object (the upstream's, or the rewritten one)."""
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        self.prompt_tokens = prompt if isinstance(prompt, int) else None
        self.completion_tokens = completion if isinstance(completion, int) else None
