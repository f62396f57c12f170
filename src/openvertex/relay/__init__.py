"""Relay endpoints: the self-deployed endpoints (`…/endpoints/{ID}/chat/completions` and
`…/embeddings`), a pass-through to OpenAI-compatible replicas (vLLM, TGI's Messages API,
llama-server, another openvertex).

    endpoints.py     RelayEndpoints: every configured endpoint's pool, the aiohttp session they share, and health checks
    pool.py          RelayPool.forward: pick a replica, add auth, send, retry a failed connection elsewhere
    replicas.py      the replicas of one endpoint: least outstanding requests, failures, in or out of service
    health.py        the periodic GET on each replica's health path
    upstream_auth.py none, a static bearer token, or a Google ID or access token
    model_member.py  the edit made to every body on its way: its `model` dropped or rewritten
    usage.py         the tokens an answer reports, for the key's quotas: a stream is asked for them
    stats.py         per-endpoint counts read by /metrics

Unlike every other route, the answer is not translated: status, content type, body and SSE frames
reach the client as the container wrote them (but for the usage frame a stream was asked for, which
the client did not ask for); only the relay's own failures are Google-shaped.
"""

from openvertex.relay.endpoints import RelayEndpoints
from openvertex.relay.pool import RelayPool, UpstreamAnswer

__all__ = ["RelayEndpoints", "RelayPool", "UpstreamAnswer"]
