"""API keys: who is asking, what they may use, and what they used.

`secret` (the key strings), `record` (a key's record and fields), `settings`
(``[auth]``), `directory` (finding a presented key's record), `gate` (the
request path: 401/403/429, the reservation, the settlement), `metrics`
(per-key accounting), `admin` and `admin_api` (managing keys at run time),
`cli` (``sluice keys``). Limits and their shared state are `server.limits`.
"""
