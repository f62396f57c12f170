"""Self-deployed endpoints (`…/endpoints/{ID}/chat/completions`): a pass-through to OpenAI-compatible
replicas (vLLM, TGI's Messages API, llama-server, another openvertex).

    gateway.py       Endpoints: every configured endpoint's pool, the aiohttp session they share, and health checks
    pool.py          EndpointPool.forward: pick a replica, add auth, send, retry a failed connection elsewhere
    replicas.py      the replicas of one endpoint: least outstanding requests, failures, in or out of service
    health.py        the periodic GET on each replica's health path
    upstream_auth.py none, a static bearer token, or a Google ID or access token
    model_member.py  the one edit made to a body on its way: its `model` dropped or rewritten
    stats.py         per-endpoint counts read by /metrics

Unlike every other route, the answer is not translated: status, content type, body and SSE frames
reach the client as the container wrote them; only the gateway's own failures are Google-shaped.
"""

from openvertex.endpoints.gateway import Endpoints
from openvertex.endpoints.pool import EndpointPool, UpstreamAnswer

__all__ = ["EndpointPool", "Endpoints", "UpstreamAnswer"]
