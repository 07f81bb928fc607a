"""The built-in simulated model (kind ``simulated``): Sluice useful with no model server.

It streams a plausible reply token by token at a realistic pace — a first
token delay, then about ``tokens_per_second`` with some jitter — through the
same relay, timers and metrics as a real upstream, so the whole path can be
tried with nothing else installed. Replies are deterministic for a given
conversation (the jitter and the text are seeded by it), which keeps demos
and tests repeatable; each has an id of its own, as a real server's does.
A reply is whole sentences, about ``reply_tokens`` long, and finishes with
``"stop"``; ``max_tokens`` cuts it short with ``"length"``, as a model's
token limit does. ``stream_options.include_usage`` adds the usage chunk.
It also serves ``/v1/completions`` (the prompt seeds the same kind of reply)
and ``/v1/embeddings`` (a deterministic unit vector per input).
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from functools import partial
from typing import Any

import orjson
import trio

from server.api.chat_completions import ChatRequest
from server.backends.base import NO_HEADERS
from server.chunks import chunk_bytes
from server.config import BackendSettings
from server.sse import DONE

_EMBEDDING_SIZE = 16

_SENTENCES = (
    "Sluice relays each token the moment the model produces it.",
    "Every stream lives in one nursery, so whatever ends it releases everything it holds.",
    "When a client leaves, the upstream request is cancelled within milliseconds.",
    "Errors before the first byte get a real HTTP status; later ones travel in-band.",
    "A bounded channel between reader and writer turns a slow reader into backpressure.",
    "Keepalive comments keep proxies from cutting a model that is still thinking.",
    "This reply comes from the built-in simulated model, so no model server is needed.",
    "Structured concurrency means no task outlives the scope that started it.",
    "Timeouts guard the first token and the gaps between tokens, never the whole answer.",
    "Point a backend at vLLM, llama.cpp or any OpenAI-compatible server to go further.",
)


def reply_tokens(messages: list[Any], count: int) -> list[str]:
    """A deterministic reply for this conversation, in word-sized tokens: whole
    sentences, as many as it takes to reach ``count`` tokens (so it ends on a full stop)."""
    seed = hashlib.blake2b(repr(messages).encode(), digest_size=8).digest()
    rng = random.Random(seed)
    words: list[str] = []
    while len(words) < count:
        words.extend(rng.choice(_SENTENCES).split(" "))
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def embedding(text: str, size: int) -> list[float]:
    """A deterministic unit vector for ``text``: the same text, the same vector."""
    rng = random.Random(hashlib.blake2b(text.encode(), digest_size=8).digest())
    vector = [rng.gauss(0.0, 1.0) for _ in range(size)]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def prompt_token_estimate(messages: list[Any]) -> int:
    """About one token per four characters of message content, as a rough count."""
    chars = sum(len(str(m.get("content") or "")) for m in messages if isinstance(m, dict))
    return max(1, chars // 4)


class SimulatedBackend:
    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self._ids = random.Random()  # reply ids must differ, not be secret: no syscall each

    @asynccontextmanager
    async def open_stream(self, request: ChatRequest, headers: Mapping[str, str] = NO_HEADERS
                          ) -> AsyncIterator[AsyncIterator[bytes]]:
        del headers  # no upstream to pass a trace to: the model is this process
        async with aclosing(self._payloads(request)) as payloads:
            yield payloads

    async def embed(self, body: dict[str, Any]) -> bytes:
        """Deterministic unit vectors, one per input (``dimensions``, default 16)."""
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if inputs and isinstance(inputs[0], int):
            inputs = [inputs]  # one input, as token ids
        size = body.get("dimensions") or _EMBEDDING_SIZE
        data = []
        for index, item in enumerate(inputs):
            vector = embedding(repr(item), size)
            data.append({"object": "embedding", "index": index, "embedding": (
                base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
                if body.get("encoding_format") == "base64" else vector)})
        tokens = sum(len(item) if isinstance(item, list) else max(1, len(item) // 4)
                     for item in inputs)
        return orjson.dumps({"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _payloads(self, request: ChatRequest) -> AsyncGenerator[bytes, None]:
        model = self.settings.simulated
        # A /v1/completions request has a prompt: the same reply, seeded by it.
        messages: list[Any] = request.body.get("messages") or [
            {"role": "user", "content": request.body.get("prompt", "")}]
        tokens = reply_tokens(messages, model.reply_tokens)
        finish = "stop"
        if request.max_tokens is not None and request.max_tokens < len(tokens):
            tokens, finish = tokens[:request.max_tokens], "length"
        rng = random.Random(len(tokens))
        chunk = partial(chunk_bytes, completion_id=f"chatcmpl-sim-{self._ids.getrandbits(64):016x}",
                        created=int(time.time()), model=request.model)
        yield chunk(delta={"role": "assistant", "content": ""})
        await trio.sleep(model.first_token_delay)
        interval = 1.0 / model.tokens_per_second
        for i, token in enumerate(tokens):
            if i:
                await trio.sleep(interval * rng.uniform(0.6, 1.4))
            yield chunk(delta={"content": token})
        yield chunk(finish_reason=finish)
        if request.include_usage or not request.stream:
            prompt = prompt_token_estimate(messages)
            yield chunk(usage={"prompt_tokens": prompt,
                                            "completion_tokens": len(tokens),
                                            "total_tokens": prompt + len(tokens)})
        yield DONE
