"""Where the server listens: whether a host is reachable from this machine only, and whether its port can be
bound now (checked before the model loads, so that a port in use is one line and not an error after start-up)."""

from __future__ import annotations

import errno
import ipaddress
import socket


class ListenError(Exception):
    """The server cannot listen on the address it was given (the message says why, in one line)."""


def is_loopback(host: str) -> bool:
    """True when only this machine can connect to ``host``: ``localhost``, 127.0.0.0/8 or ``::1``.
    Any other name or address (``0.0.0.0`` included) counts as reachable from other machines."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` the way uvicorn will (``SO_REUSEADDR``, IPv6 when ``host`` holds a ``:``) and release
    it at once; :class:`ListenError` naming the cause and what to do when the bind fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror as error:
            raise ListenError(f"cannot listen on {host!r}: the name does not resolve ({error.strerror})") from None
        except OSError as error:
            raise ListenError(_reason(host, port, error)) from None


def _reason(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use (another server listens there): stop it or choose another --port"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: not an address of this machine (use 127.0.0.1, or 0.0.0.0 for every interface)"
    if error.errno == errno.EACCES:
        return f"no permission to listen on port {port} (ports below 1024 need privileges): choose --port 1024 or above"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"
