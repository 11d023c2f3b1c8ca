"""Where credentials may go: the token realm rule.

A registry names the token server its credentials are exchanged at (the ``realm`` of its
Bearer challenge). Nothing stops a registry from naming a plain-HTTP server on another host,
and the user's password would then cross the network in clear. The rule is
go-containerregistry's (``bearer.go``): HTTPS goes anywhere; plain HTTP only to the registry's
own host (every loopback name counts as one host) when that host is loopback or named insecure;
every other scheme is refused. Redirects of the token request are held to the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from cib_core.reference import is_loopback_host


def host_of(url: str) -> str:
    """``host[:port]`` of a URL, lowercased, without user info ("" for what is no URL)."""
    try:
        return urlsplit(url).netloc.rsplit("@", 1)[-1].lower()
    except ValueError:
        return ""


def _hostname(host: str) -> str:
    h = host.lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h[1:]
    return h.partition(":")[0] if h.count(":") == 1 else h


def named_insecure(host: str, names: Iterable[str]) -> bool:
    """Whether ``host`` (``name[:port]``) is among the hosts named insecure, or is the same
    machine (by name or address) as one of them: a registry named insecure may have its token
    server on another port."""
    host = host.lower()
    wanted = _hostname(host)
    return any(host == n.lower() or wanted == _hostname(n) for n in names)


def realm_problem(realm: str, registry_url: str, named_insecure: Callable[[str], bool]) -> str | None:
    """Why credentials may not be sent to the token realm (or a redirect of it) ``realm`` for
    the registry at ``registry_url``, or None when they may.

    HTTPS goes anywhere. Plain HTTP only to the registry's own host (all loopback names are one
    host) when that host is loopback or named insecure: a realm on another host, or one the
    caller never named, would get the user's credentials in clear.
    """
    try:
        parts = urlsplit(realm)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return "it is not a valid URL"
    scheme = parts.scheme.lower()
    host = parts.netloc.rsplit("@", 1)[-1].lower()
    if scheme not in ("http", "https") or not host:
        return (f"its scheme is {scheme + ':' if scheme else 'missing'}, and only https (or http to "
                "the registry's own loopback or insecure host) is allowed")
    if scheme == "https":
        return None
    registry_host = host_of(registry_url)
    same_host = _hostname(host) == _hostname(registry_host) or (
        is_loopback_host(host) and is_loopback_host(registry_host))
    if not same_host:
        return "it is plain http on another host than the registry's; such a realm must be https"
    if is_loopback_host(host) or named_insecure(host):
        return None
    return ("it is plain http and its host is neither loopback nor named insecure "
            f"(name it with --insecure-registry {host} if it really has no TLS)")


__all__ = ["host_of", "named_insecure", "realm_problem"]
