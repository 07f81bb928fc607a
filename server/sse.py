"""Server-Sent Events, both ways: an incremental decoder and the framing we emit.

Decoding follows the WHATWG HTML "event stream" interpretation (§9.2.6):
lines end in CRLF, LF or CR — also when a CRLF is split across two reads —;
lines starting with ``:`` are comments; several ``data:`` lines join with
``\\n``; a blank line dispatches; an event with no data is not dispatched;
an unterminated event at end of stream is discarded. Only ``data`` matters
to a relay of OpenAI chunks, so the decoder hands back data payloads.

    decoder = SSEDecoder()
    for payload in decoder.feed(b'data: {"a": 1}\\n\\nda'):
        ...                        # b'{"a": 1}'; "da" waits for the next read

Framing is the reverse, plus the one comment line Sluice itself sends while a
stream is silent: ``: keepalive\\n`` — *without* a blank line after it, since
a blank line ends an event and some clients then emit an empty message.
"""

from __future__ import annotations

from typing import Final

KEEPALIVE: Final = b": keepalive\n"
DONE: Final = b"[DONE]"
DONE_EVENT: Final = b"data: [DONE]\n\n"
_BOM: Final = b"\xef\xbb\xbf"
_DATA_PREFIX: Final = len(b"data: ")


class EventTooLarge(ValueError):
    """An upstream event grew past the decoder's bound (a broken or hostile peer)."""


class SSEDecoder:
    """Turns reads of an event stream into event data payloads.

    The fast path (LF-only input, one event per read) costs one ``split`` and a
    short loop; CR and CRLF are normalised only when a CR is present.
    """

    __slots__ = ("_data", "_data_size", "_max_event_bytes", "_pending", "_skip_lf", "_started")

    def __init__(self, *, max_event_bytes: int = 1 << 20) -> None:
        self._pending = b""  # an incomplete line carried to the next read
        self._data: list[bytes] = []  # data lines of the event being built
        self._data_size = 0
        self._max_event_bytes = max_event_bytes
        self._started = False
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume one read; return the payloads of the events it completed."""
        if not chunk:
            return []
        if (self._started and not self._pending and not self._data and not self._skip_lf
                and chunk.startswith(b"data: ") and chunk.find(b"\n") == len(chunk) - 2
                and chunk.endswith(b"\n\n") and b"\r" not in chunk
                and len(chunk) - 8 <= self._max_event_bytes):
            # The common read: exactly one single-line event. Same result as below.
            return [chunk[6:-2]]
        if self._skip_lf:
            # The previous read ended in CR, which already ended its line:
            # an LF right after it is the second half of that CRLF.
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buffer = self._pending + chunk if self._pending else chunk
        if not self._started and buffer:
            if len(buffer) < 3 and _BOM.startswith(buffer):
                self._pending = buffer  # wait: this may be the start of a BOM
                return []
            self._started = True
            if buffer.startswith(_BOM):
                buffer = buffer[3:]
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):
                self._skip_lf = True
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._pending = lines.pop()
        # An unfinished line longer than this could not fit in an event even as
        # the value of a "data: " line: stop reading it now rather than buffer it.
        if len(self._pending) > self._max_event_bytes + _DATA_PREFIX:
            raise EventTooLarge(f"line longer than {self._max_event_bytes} bytes")
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(self._data[0] if len(self._data) == 1
                                  else b"\n".join(self._data))
                    self._data = []
                    self._data_size = 0
            elif line[0] == 0x3A:  # ":" — a comment
                continue
            else:
                name, colon, value = line.partition(b":")
                if name == b"data":
                    if colon and value[:1] == b" ":
                        value = value[1:]
                    # The payload's size: values joined by LF, as dispatched.
                    self._data_size += len(value) + (1 if self._data else 0)
                    if self._data_size > self._max_event_bytes:
                        raise EventTooLarge(f"event larger than {self._max_event_bytes} bytes")
                    self._data.append(value)
                # event:, id:, retry: and unknown fields carry nothing we relay.
        return events


def frame(payload: bytes) -> bytes:
    """One ``data:`` event; a payload with newlines becomes several data lines."""
    if b"\n" in payload:
        return b"".join(b"data: " + line + b"\n" for line in payload.split(b"\n")) + b"\n"
    return b"data: " + payload + b"\n\n"
