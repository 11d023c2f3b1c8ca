"""One repository of one registry as the client and the uploader both talk to it.

What every distribution API call shares: the credentials (explicit, else the first
``cib_credentials`` plugin's, asked only when the registry challenges), the scope a request
needs, sending through the host's :class:`~cib_core.remote.transport.Transport`, and turning
unexpected answers into typed errors with every known secret removed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import requests

from cib_core.authn.challenge import RegistryAuth, ScopedAuth, merge_scopes, repository_scope
from cib_core.authn.credentials import Credentials
from cib_core.authn.resolve import resolve_credentials
from cib_core.callbacks import Progress
from cib_core.digest import GRAMMAR
from cib_core.errors import ConfigurationError, RegistryError
from cib_core.redact import secret_forms
from cib_core.reference import (
    DOCKER_HUB_API_HOST,
    check_registry_host,
    check_repository_name,
    check_tag,
    is_docker_hub,
    validate_digest,
)
from cib_core.remote.blobs import hasher_for
from cib_core.remote.errors import check_error, registry_error
from cib_core.remote.transport import Transport, TransportOptions, TransportPool

DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024


def is_digest_ref(ref: str) -> bool:
    """True when ``ref`` (a tag or a digest) has the digest grammar: tags have no colon."""
    return GRAMMAR.fullmatch(ref) is not None


class RepositorySession:
    """The plumbing of one repository: credentials, scopes, sending, checking answers.

    ``auth`` is that registry's options (``{"Username": ..., "Secret": ...}`` or
    ``{"token": ...}``) or a ``Credentials``; without it the ``cib_credentials`` plugins are
    asked. ``insecure`` allows plain HTTP or unverified TLS (loopback hosts always may).
    Pass one ``pool`` (a ``TransportPool``) to clients of one registry to share a session,
    the ``/v2/`` ping and the tokens; ``progress(digest, done, total)`` is called as blobs move.
    """

    def __init__(self, registry: str, repository: str,
                 auth: Mapping[str, str] | Credentials | None = None, *, insecure: bool = False,
                 pm: Any = None, pool: TransportPool | None = None,
                 transport: Transport | None = None, options: TransportOptions | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, progress: Progress | None = None) -> None:
        if not registry or not repository:
            raise ConfigurationError("RegistryClient needs a registry host and a repository name, "
                                     f"got {registry!r} and {repository!r}")
        check_registry_host(registry)
        check_repository_name(repository)
        self.registry = registry
        self.repository = repository
        self.api_host = DOCKER_HUB_API_HOST if is_docker_hub(registry) else registry
        self.chunk_size = chunk_size
        self.progress = progress
        if transport is None:
            transport = (pool.get(self.api_host, insecure=insecure) if pool is not None
                         else Transport(self.api_host, insecure=insecure, pm=pm, options=options))
        self.transport = transport
        self._auth_options = auth
        self._pm = pm
        self._credentials: Credentials | None = None
        self._auth_state: RegistryAuth | None = None
        self._auth_lock = threading.Lock()

    def __repr__(self) -> str:
        user = self._credentials.username if self._credentials is not None else None
        return f"{type(self).__name__}({self.registry!r}, {self.repository!r}, user={user!r})"

    @property
    def credentials(self) -> Credentials:
        """The credentials this client uses: the explicit options, else the first credential
        provider's answer, else anonymous."""
        if self._credentials is None:
            self._credentials = resolve_credentials(self.registry, self.repository,
                                                    options=self._auth_options, pm=self._pm)
        return self._credentials

    @property
    def registry_auth(self) -> RegistryAuth:
        """The registry's auth state for these credentials. Without explicit options, the
        registry is pinged anonymously first: an open registry never needs the credential
        providers (the keyring alone costs ~80 ms to ask), one that challenges gets them."""
        state = self._auth_state
        if state is not None:
            return state
        with self._auth_lock:
            if self._auth_state is None:
                if self._credentials is None and not self._auth_options:
                    anonymous = self.transport.registry_auth(Credentials())
                    challenges = anonymous.ping()
                    if not challenges:
                        self._credentials = Credentials()
                        self._auth_state = anonymous
                        return anonymous
                    state = self.transport.registry_auth(self.credentials)
                    state.learn(challenges)
                else:
                    state = self.transport.registry_auth(self.credentials)
                self._auth_state = state
            return self._auth_state

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def known_secrets(self) -> tuple[str, ...]:
        """Every spelling of this client's credentials and tokens, to remove from any text a
        registry sends back."""
        creds = self._credentials or Credentials()
        tokens = self._auth_state.tokens.values() if self._auth_state is not None else ()
        return secret_forms(creds.username, creds.secret, creds.token, *tokens)

    # -- requests -------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return f"/v2/{self.repository}/" + "/".join(parts)

    def scoped(self, actions: str = "pull", extra: Iterable[str] = ()) -> ScopedAuth:
        scopes = [repository_scope(self.repository, actions), *extra]
        return self.registry_auth.scoped(merge_scopes(scopes), self.repository)

    def send(self, method: str, path_or_url: str, *, scope: ScopedAuth | None = None,
             headers: Mapping[str, str] | None = None, params: Any = None, data: Any = None,
             retry: bool = True, allow_redirects: bool = True,
             expected_size: int | None = None) -> requests.Response:
        """One request (a path of this registry or an absolute URL), streamed, signed for
        ``scope`` (default: pull on this repository)."""
        url = path_or_url if "://" in path_or_url else self.transport.url(path_or_url)
        return self.transport.request(method, url, headers=headers, params=params, data=data,
                                      auth=scope if scope is not None else self.scoped("pull"),
                                      stream=True, retry=retry, allow_redirects=allow_redirects,
                                      expected_size=expected_size)

    def error(self, resp: requests.Response, what: str, *,
              missing: str | None = None) -> RegistryError:
        """The typed error for an unexpected answer; closes ``resp``. ``what`` names the
        request (``upload of blob sha256:...``); ``missing`` names the thing a 404 means is
        absent (``tag 'v1'``), for a message that says so."""
        return registry_error(resp, what, registry=self.registry, repository=self.repository,
                              anonymous=self.credentials.anonymous, secrets=self.known_secrets,
                              missing=missing)

    def check(self, resp: requests.Response, ok: Iterable[int], what: str, *,
              missing: str | None = None) -> requests.Response:
        """``resp`` when its status is one of ``ok``; otherwise its typed error is raised."""
        return check_error(resp, ok, what, registry=self.registry, repository=self.repository,
                           anonymous=self.credentials.anonymous, secrets=self.known_secrets,
                           missing=missing)

    def read_body(self, resp: requests.Response, cap: int, what: str) -> bytes:
        """At most ``cap`` bytes of the body (a short one is an error); closes ``resp``."""
        return self.transport.read_body(resp, cap, f"{what} in {self.name}")

    def read_json(self, resp: requests.Response, cap: int, what: str) -> Any:
        raw = self.read_body(resp, cap + 1, what)
        if len(raw) > cap:
            raise RegistryError(f"{what} in {self.name} is larger than {cap} bytes", status=resp.status_code,
                                registry=self.registry, repository=self.repository)
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            raise RegistryError(f"{what} in {self.name} is not valid JSON", status=resp.status_code,
                                registry=self.registry, repository=self.repository) from exc

    @staticmethod
    def check_ref(ref: str) -> str:
        """``ref`` if it is a tag or a digest, else ``InvalidReference`` naming it and the
        form, before any request is sent."""
        if isinstance(ref, str) and ":" in ref:
            validate_digest(ref)
            return ref
        return check_tag(ref)

    # -- the questions every part asks ----------------------------------------------------------
    def blob_exists(self, digest: str) -> bool:
        hasher_for(digest, "a blob")
        resp = self.send("HEAD", self.path("blobs", digest))
        if resp.status_code == 404:
            resp.close()
            return False
        self.check(resp, (200,), f"blob {digest}").close()
        return True

    def blob_size(self, digest: str) -> int | None:
        """The size the registry gives for a blob it has (HEAD), or None."""
        resp = self.send("HEAD", self.path("blobs", digest))
        resp.close()
        if resp.status_code != 200:
            return None
        length = resp.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None


__all__ = ["DEFAULT_CHUNK_SIZE", "DOCKER_HUB_API_HOST", "RepositorySession", "is_digest_ref"]
