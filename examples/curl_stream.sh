#!/usr/bin/env bash
# Talk to Sluice with nothing but curl: a streamed chat completion, then the model list.
#
#     sluice serve &
#     bash examples/curl_stream.sh
#     SLUICE_URL=http://gpu-box:8000 SLUICE_MODEL=llama-3 bash examples/curl_stream.sh
#
# -N turns off curl's output buffering, so each `data: {...}` event prints the
# moment Sluice relays it; the stream ends with `data: [DONE]`.
# --fail-with-body makes an HTTP error (an unknown model is a 404, with an
# OpenAI error body) print that body and exit non-zero, so this script does too.
# An error that happens after the stream has started arrives in-band, as an
# `{"error": ...}` event, because the 200 status has already been sent.
set -euo pipefail

url="${SLUICE_URL:-http://127.0.0.1:8000}"
model="${SLUICE_MODEL:-sluice-sim}"

echo "POST $url/v1/chat/completions (stream)"
curl -N --silent --show-error --fail-with-body \
    "$url/v1/chat/completions" \
    -H "Content-Type: application/json" \
    -d @- <<JSON
{
  "model": "$model",
  "stream": true,
  "stream_options": {"include_usage": true},
  "messages": [{"role": "user", "content": "Tell me about Sluice."}]
}
JSON

echo
echo "GET $url/v1/models"
curl --silent --show-error --fail-with-body "$url/v1/models"
echo
