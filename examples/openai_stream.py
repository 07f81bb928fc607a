"""Talk to Sluice with the official openai SDK: a streamed reply, then a whole one.

Sluice speaks the OpenAI API, so the stock client works once its base URL
points at the gateway. The streamed call prints tokens as they arrive and,
because it asks for ``stream_options={"include_usage": True}``, ends with a
usage-only chunk (no choices). The non-streaming call gets the same reply in
one ``chat.completion`` with its usage attached.

    sluice serve &                                   # the simulated model, no GPU
    python examples/openai_stream.py
    python examples/openai_stream.py --base-url http://gpu-box:8000/v1 --model llama-3
"""

from __future__ import annotations

import argparse

from openai import OpenAI
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionMessageParam

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me about Sluice."},
]


def main() -> None:
    parser = argparse.ArgumentParser(description="Chat with Sluice through the openai SDK.")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="sluice-sim")
    args = parser.parse_args()

    # Sluice holds the upstream keys and checks none from clients; the SDK wants one anyway.
    client = OpenAI(base_url=args.base_url, api_key="unused", timeout=30.0, max_retries=0)

    print("streamed:")
    stream = client.chat.completions.create(
        model=args.model,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage is not None:  # the last chunk: usage only, empty choices
            print()
            print_usage(chunk.usage)

    print("whole:")
    completion = client.chat.completions.create(
        model=args.model,
        messages=MESSAGES,
    )
    print(completion.choices[0].message.content)
    if completion.usage is not None:
        print_usage(completion.usage)


def print_usage(usage: CompletionUsage) -> None:
    print(f"usage: prompt_tokens={usage.prompt_tokens} "
          f"completion_tokens={usage.completion_tokens} total_tokens={usage.total_tokens}")


if __name__ == "__main__":
    main()
