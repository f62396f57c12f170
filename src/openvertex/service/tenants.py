"""Tenants: whose requests may share what the local engine keeps of a prompt.

The engine reuses a prompt prefix's KV only for a request of the tenant that computed it, so
the cached token counts and the time to the first token tell a key nothing of another tenant's
prompts. A tenant is one API key, unless the configuration's `tenants` groups keys (by the
names `openvertex keys` gave them, or the `key-…` fingerprints of configured keys) into one,
whose requests then reuse each other's prefixes. A server without keys is one tenant.
"""

from __future__ import annotations


class Tenants:
    def __init__(self, groups: dict[str, list[str]]) -> None:
        self._of_key: dict[str, str] = {}
        self.replace(groups)

    def replace(self, groups: dict[str, list[str]]) -> None:
        """The grouping as the configuration now says (validated there: a key is in one group)."""
        self._of_key = {key: f"tenant:{tenant}" for tenant, keys in groups.items() for key in keys}

    def of(self, key: str) -> str:
        """The tenant of the key named `key`: its group's, or its own."""
        return self._of_key.get(key) or f"key:{key}"
