"""A free TCP port on loopback, for the processes kubespeed starts on one machine."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nobody on 127.0.0.1 listens on now (the OS picks it; another process may take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
