"""What the attack client reports to its user, each as one line: refusals (4xx, never retried), an
unreachable or failing server (after every retry), and answers that break the wire contract."""

from __future__ import annotations


class AttackError(Exception):
    """Anything the client reports to its user as one line."""


class ServerRefused(AttackError):
    """The server answered 4xx: a retry cannot fix it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"the server refused the request: HTTP {status} {code}: {message}")
        self.status, self.code, self.detail = status, code, message


class Unauthorized(ServerRefused):
    """401: the API key is missing or wrong."""


class BudgetExhausted(ServerRefused):
    """403 ``budget_exhausted``: the key's query budget cannot pay for this request (nothing was counted)."""


class PayloadTooLarge(ServerRefused):
    """413: the request is above the server's size or batch limit."""


class ServerUnavailable(AttackError):
    """The server could not be reached, or kept failing, after every allowed retry."""


class RateLimited(ServerUnavailable):
    """The server keeps rate limiting, or asks to wait longer than the client is willing to."""


class ProtocolError(AttackError):
    """The server answered 2xx with something that does not follow the wire contract (docs/design.md)."""
