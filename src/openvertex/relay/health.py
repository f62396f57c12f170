"""The periodic health check of each replica: GET `health_path` on its origin; 200 is healthy."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from openvertex.errors import ApiError
from openvertex.relay.pool import RelayPool
from openvertex.relay.replicas import Replica

log = logging.getLogger(__name__)


async def check_forever(pool: RelayPool) -> None:
    """Check every replica of `pool` at once, every `health_interval_s`, until cancelled."""
    interval = pool.settings.health_interval_s
    # A check slower than the interval counts as failed: the next one is due.
    timeout = aiohttp.ClientTimeout(total=interval, sock_connect=pool.settings.connect_timeout_s)
    while True:
        try:
            await asyncio.gather(*(check(pool, replica, timeout) for replica in pool.replicas))
        except Exception:  # a bug here must not end the checks for good
            log.exception("endpoint %s: health checks failed", pool.endpoint_id)
        await asyncio.sleep(interval)


async def check(pool: RelayPool, replica: Replica, timeout: aiohttp.ClientTimeout) -> bool:
    try:
        headers = await pool.auth.headers(replica)  # the health route may sit behind the same auth
        async with pool.client.session.get(replica.health_url, headers=headers, timeout=timeout) as response:
            healthy, reason = response.status == 200, f"health check answered {response.status}"
    except (aiohttp.ClientError, TimeoutError, ApiError) as error:
        healthy, reason = False, f"health check failed: {error or type(error).__name__}"
    except Exception as error:  # anything else is a failed check too, never the end of the checks
        log.exception("endpoint %s: a health check of %s failed", pool.endpoint_id, replica.origin)
        healthy, reason = False, f"health check failed: {type(error).__name__}"
    pool.replicas.checked(replica, healthy, reason)
    return healthy
