"""What to do after an upstream attempt failed before the commit point.

Pure: an error and how many times this backend was already retried in, a
`Decision` out. The policy the field has converged on:

| failure                                   | decision                                  |
|-------------------------------------------|-------------------------------------------|
| 400-class request error (context length,  | give up: relay it faithfully; another     |
| invalid params, content filter, auth)     | backend would refuse the same request     |
| 429                                       | retry here after Retry-After (capped) or  |
|                                           | backoff, then fail over                   |
| 5xx, reset, broken or cut before content  | retry here after backoff, then fail over  |
| connect timeout, no first chunk in time   | fail over at once: a silent provider      |
|                                           | stays silent                              |

Backoff is exponential with full jitter (``uniform(0, min(max, base·2ⁿ))``),
so retrying clients do not march in step.

What counts against a backend's circuit breaker (`counts_against_backend`)
is a separate question — is the *backend* unhealthy? — with its own table:

| outcome of an attempt                      | breaker | why                              |
|--------------------------------------------|---------|----------------------------------|
| 5xx, reset or refused, timeout, cut,       | failure | the backend failed               |
| malformed stream, in-band error event      |         |                                  |
| 429                                        | failure | Sluice calls with the backend's  |
|                                            |         | own key, so it is that key's     |
|                                            |         | quota or the server's capacity,  |
|                                            |         | spent for every client alike     |
| 400-class error relayed (context length,   | success | the request's fault; the backend |
| invalid params, auth, content-filter 400)  |         | answered, a sign of life         |
| a content filter's ``finish_reason``       | success | a complete answer                |
| the client left, the drain ended it        | nothing | no outcome: the attempt is       |
|                                            |         | abandoned, not recorded          |
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from server.config import RetryPolicy
from server.errors import SluiceError, UpstreamError, UpstreamStatusError, UpstreamTimeout

Action = Literal["retry", "fail_over", "give_up"]


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0  # seconds to wait before the retry


def decide(error: SluiceError, retries_here: int, policy: RetryPolicy,
           rng: random.Random) -> Decision:
    if not isinstance(error, UpstreamError) or not error.retryable:
        return Decision("give_up")
    if isinstance(error, UpstreamTimeout):
        return Decision("fail_over")
    if retries_here >= policy.same_backend_retries:
        return Decision("fail_over")
    if isinstance(error, UpstreamStatusError) and error.upstream_status == 429 \
            and error.retry_after is not None:
        return Decision("retry", min(error.retry_after, policy.retry_after_cap))
    return Decision("retry", backoff(retries_here, policy, rng))


def backoff(retries: int, policy: RetryPolicy, rng: random.Random) -> float:
    ceiling = min(policy.backoff_max, policy.backoff_base * 2 ** retries)
    return rng.uniform(0, ceiling)


def counts_against_backend(error: SluiceError) -> bool:
    """Does this failure say the backend is unhealthy (for its circuit breaker)?

    A relayed request error (400, 401, 404, ...) is the request's fault, not
    the backend's, and Sluice's own refusals never reached it; everything else
    an upstream does wrong counts, 429 included (see the module's table). An
    attempt cancelled because the client left has no outcome and never gets here.
    """
    return isinstance(error, UpstreamError) and error.retryable


def exceeds_context(error: SluiceError) -> bool:
    """Did the upstream refuse the request as longer than its model's context window?

    OpenAI says so with the code ``context_length_exceeded``; vLLM and others
    answer a 400 whose message speaks of the "maximum context length".
    """
    if not isinstance(error, UpstreamStatusError) or error.upstream_status != 400:
        return False
    if error.code == "context_length_exceeded":
        return True
    text = f"{error.public_message} {error.code or ''}".lower()
    return "context length" in text or "context_length" in text or "context window" in text
