"""WWW-Authenticate parsing, scopes, the token cache, credentials from options and the realm rule."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cib_core.authn.challenge import (
    Challenge,
    TokenCache,
    merge_scopes,
    parse_www_authenticate,
    repository_scope,
)
from cib_core.authn.credentials import Credentials
from cib_core.authn.realm import named_insecure, realm_problem
from cib_core.authn.resolve import credentials_from_options, options_for_registry

CASES = [
    ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/node:pull"',
     [Challenge("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                           "scope": "repository:library/node:pull"})]),
    ('Bearer realm="http://127.0.0.1:5001/token",service="svc",scope="repository:a/b:pull,push",'
     'error="insufficient_scope"',
     [Challenge("bearer", {"realm": "http://127.0.0.1:5001/token", "service": "svc",
                           "scope": "repository:a/b:pull,push", "error": "insufficient_scope"})]),
    # several challenges in one header, and odd spacing and case
    ('Basic realm="x", Bearer realm="https://t/token", service="s"',
     [Challenge("basic", {"realm": "x"}), Challenge("bearer", {"realm": "https://t/token", "service": "s"})]),
    ('BEARER  Realm = "r" ,  SERVICE=plain', [Challenge("bearer", {"realm": "r", "service": "plain"})]),
    # quoted strings with escapes and commas
    (r'Basic realm="a \"quoted\", realm"', [Challenge("basic", {"realm": 'a "quoted", realm'})]),
    ('Bearer realm="r",scope="repository:a:pull repository:b:pull"',
     [Challenge("bearer", {"realm": "r", "scope": "repository:a:pull repository:b:pull"})]),
    # token68 schemes next to parameter schemes
    ("Negotiate abc+/9==, Basic realm=r", [Challenge("negotiate", {}, "abc+/9=="),
                                           Challenge("basic", {"realm": "r"})]),
    ("Basic", [Challenge("basic", {})]),
    ("", []),
    (", ,", []),
    # an unterminated quote takes the rest
    ('Basic realm="open', [Challenge("basic", {"realm": "open"})]),
    # the first of a repeated parameter wins
    ('Basic realm="a", realm="b"', [Challenge("basic", {"realm": "a"})]),
]


@pytest.mark.parametrize(("header", "expected"), CASES)
def test_parse_www_authenticate(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


def test_challenge_properties() -> None:
    (c,) = parse_www_authenticate(
        'Bearer realm="r",service="s",scope="x:y:pull z:w:push",error="invalid_token"')
    assert (c.realm, c.service, c.error) == ("r", "s", "invalid_token")
    assert c.scopes == ("x:y:pull", "z:w:push")


@pytest.mark.parametrize(("repo", "actions", "expected"), [
    ("a/b", "pull", "repository:a/b:pull"),
    ("a/b", "push", "repository:a/b:pull,push"),
    ("a/b", "push,pull", "repository:a/b:pull,push"),
    ("a", ["delete"], "repository:a:delete"),
])
def test_repository_scope(repo: str, actions: str, expected: str) -> None:
    assert repository_scope(repo, actions) == expected


def test_merge_scopes_unions_actions_per_resource() -> None:
    merged = merge_scopes(["repository:t:pull", "repository:s:pull", "repository:t:push,pull",
                           "registry:catalog:*", "repository:host:5000/x:pull"])
    assert merged == ("registry:catalog:*", "repository:host:5000/x:pull", "repository:s:pull",
                      "repository:t:pull,push")
    assert merge_scopes(["repository:a:pull repository:a:push"]) == ("repository:a:pull,push",)


def test_token_cache_expiry_and_superset() -> None:
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    push = merge_scopes(["repository:a:pull,push"])
    pull = merge_scopes(["repository:a:pull"])
    other = merge_scopes(["repository:b:pull"])
    cache.put("user:u", push, "T1", 60)
    assert cache.get("user:u", push) == "T1"
    assert cache.get("user:u", pull) == "T1"  # a push token covers reads
    assert cache.get("user:u", other) is None
    assert cache.get("anonymous", pull) is None  # never across credentials
    now[0] += 55  # past the lifetime minus the early-renewal margin
    assert cache.get("user:u", push) is None
    cache.put("user:u", pull, "T2", 300)
    cache.discard("T2")
    assert cache.get("user:u", pull) is None


@pytest.mark.parametrize(("opts", "expected"), [
    ({"Username": "u", "Secret": "s"}, Credentials("u", "s")),
    ({"username": "u", "secret": "s"}, Credentials("u", "s")),
    ({"username": "u", "password": "s"}, Credentials("u", "s")),
    ({"token": "t"}, Credentials(token="t")),
    ({"Token": "t"}, Credentials(token="t")),
    ({}, None),
    (None, None),
])
def test_credentials_from_options(opts: dict[str, str] | None, expected: Credentials | None) -> None:
    assert credentials_from_options(opts) == expected


def test_options_for_registry_matches_hosts_and_docker_hub_aliases() -> None:
    opts = {"127.0.0.1:5000": {"token": "a"}, "https://index.docker.io/v1/": {"token": "b"}}
    assert options_for_registry("127.0.0.1:5000", opts) == {"token": "a"}
    assert options_for_registry("docker.io", opts) == {"token": "b"}
    assert options_for_registry("gcr.io", opts) is None


# -- where credentials may go: the token realm rule ------------------------------------------------

def _named(*hosts: str) -> Callable[[str], bool]:
    return lambda host: named_insecure(host, hosts)


@pytest.mark.parametrize(("realm", "registry", "insecure", "allowed"), [
    # HTTPS goes anywhere
    ("https://auth.docker.io/token", "https://registry-1.docker.io", (), True),
    ("https://10.231.7.2:8443/token", "http://127.0.0.1:5000", (), True),
    # plain HTTP on the registry's own loopback machine (any loopback name, any port)
    ("http://127.0.0.1:5001/token", "http://127.0.0.1:5000", (), True),
    ("http://localhost:5001/token", "http://127.0.0.1:5000", (), True),
    ("http://[::1]:5001/token", "http://localhost:5000", (), True),
    # plain HTTP to another host: never, named insecure or not
    ("http://10.231.7.2:8080/token", "http://127.0.0.1:5000", (), False),
    ("http://10.231.7.2:8080/token", "http://127.0.0.1:5000", ("10.231.7.2:8080",), False),
    ("http://other-host/token", "https://registry.example", (), False),
    ("http://vm:5001/token", "http://127.0.0.1:5000", (), False),  # a name, not loopback
    # plain HTTP on the registry's own host: only when that host is named insecure
    ("http://registry.example:5001/token", "https://registry.example", (), False),
    ("http://registry.example:5001/token", "http://registry.example:5000",
     ("registry.example:5000",), True),
    ("http://REGISTRY.example/token", "https://registry.example", ("registry.example",), True),
    # other schemes, and what is no URL
    ("file:///etc/passwd", "http://127.0.0.1:5000", (), False),
    ("ftp://127.0.0.1/token", "http://127.0.0.1:5000", (), False),
    ("gopher://127.0.0.1:70/token", "http://127.0.0.1:5000", (), False),
    ("javascript:alert(1)", "http://127.0.0.1:5000", (), False),
    ("/token", "http://127.0.0.1:5000", (), False),
    ("", "http://127.0.0.1:5000", (), False),
    ("https://127.0.0.1:99999/token", "http://127.0.0.1:5000", (), False),
])
def test_realm_rule(realm: str, registry: str, insecure: tuple[str, ...], allowed: bool) -> None:
    trouble = realm_problem(realm, registry, _named(*insecure))
    assert (trouble is None) == allowed, trouble
    if trouble is not None:
        assert "\n" not in trouble


def test_named_insecure_is_the_host_or_its_machine() -> None:
    names = ("registry.example:5000", "[fd00::1]:5000")
    assert named_insecure("registry.example:5000", names)
    assert named_insecure("REGISTRY.example:5001", names)  # its token server on another port
    assert named_insecure("[fd00::1]:8080", names)
    assert not named_insecure("other.example:5000", names)
    assert not named_insecure("registry.example.evil:5000", names)
    assert not named_insecure("registry.example:5000", ())


def test_realm_rule_names_the_way_out_only_where_there_is_one() -> None:
    same_host = realm_problem("http://registry.example:5001/t", "https://registry.example", _named())
    assert same_host is not None and "--insecure-registry registry.example:5001" in same_host
    elsewhere = realm_problem("http://10.231.7.2/t", "http://127.0.0.1:5000", _named())
    assert elsewhere is not None and "--insecure-registry" not in elsewhere and "https" in elsewhere
    scheme = realm_problem("file:///etc/passwd", "http://127.0.0.1:5000", _named())
    assert scheme is not None and "file:" in scheme
