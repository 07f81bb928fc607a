"""The opt-in to a resumable stream, and the header that names the stream.

    X-Sluice-Resumable: true        on the request (``/v1/chat/completions``, ``/chat``)
    X-Sluice-Stream-ID: chatstream_…  on the answer: the id to resume it by

On its own so that the views can read the opt-in without importing the
machinery of `server.api.resume`, which imports them.
"""

from __future__ import annotations

from server.errors import RequestError

RESUMABLE_HEADER = "X-Sluice-Resumable"
STREAM_ID_HEADER = "X-Sluice-Stream-ID"


def wants_resumable(value: str | None) -> bool:
    """The opt-in header: absent or ``false`` → no; ``true`` → yes; anything else → 400."""
    if value is None or value.lower() == "false":
        return False
    if value.lower() == "true":
        return True
    raise RequestError(f"The {RESUMABLE_HEADER} header must be true or false.",
                       param=RESUMABLE_HEADER, code="invalid_value")
