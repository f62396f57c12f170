"""The listening socket: made here so its port is known before serving (--port 0)."""

from __future__ import annotations

import socket


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP listener whose connections send small writes at once.

    asyncio turns Nagle's algorithm off only for sockets whose protocol number is
    IPPROTO_TCP, and `socket.create_server` leaves it 0; with Nagle on, every response
    after the first on a kept-alive connection (and SSE events) waited ~40 ms for the
    peer's delayed ACK. Accepted sockets inherit TCP_NODELAY from the listener on Linux,
    and get the right protocol number for asyncio elsewhere.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock
