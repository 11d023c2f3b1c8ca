"""Credentials as value objects."""

from __future__ import annotations

from dataclasses import dataclass, field

IDENTITY_TOKEN_USER = "<token>"
"""docker's convention: a username of ``<token>`` means the secret is an identity (refresh) token."""


def _mask(value: str | None) -> str:
    return "None" if value is None else "'***'"


@dataclass(frozen=True)
class Credentials:
    """A username and secret (basic auth, or exchanged for a token), and/or a bearer token.

    The ``repr`` never shows the secret or the token.
    """

    username: str | None = None
    secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (f"Credentials(username={self.username!r}, secret={_mask(self.secret)}, "
                f"token={_mask(self.token)})")

    __str__ = __repr__

    @property
    def anonymous(self) -> bool:
        return self.username is None and self.secret is None and self.token is None

    @property
    def is_identity_token(self) -> bool:
        """True when ``secret`` is an OAuth2 identity (refresh) token, not a password."""
        return self.username == IDENTITY_TOKEN_USER and bool(self.secret)

