"""Where credentials live outside cib: docker's config.json, podman's auth.json, docker
credential helpers and the system keyring. Reading for the credential-provider plugins,
writing for ``cib auth login/logout``.

Files
    * docker: ``$DOCKER_CONFIG/config.json``, default ``~/.docker/config.json``. Keys of
      ``auths`` are matched by host only, as docker does: ``https://127.0.0.1:5000/v1/``,
      ``http://127.0.0.1:5000`` and ``127.0.0.1:5000`` all serve ``127.0.0.1:5000``.
    * podman/skopeo: ``$REGISTRY_AUTH_FILE``, then ``$XDG_RUNTIME_DIR/containers/auth.json``,
      then ``$XDG_CONFIG_HOME/containers/auth.json`` (default ``~/.config/...``); the first
      file with a matching key wins. Keys may carry a repository path (``quay.io/org`` or
      ``quay.io/org/repo``); the most specific key that contains the repository wins. A key
      with a scheme (``https://host/v1/``) is reduced to its host, as podman does.

Entries
    ``auth`` (base64 of ``user:password``), or ``username``/``password``, or
    ``identitytoken``, or ``registrytoken``. How they become :class:`Credentials`:

    * user and password: ``Credentials(username=user, secret=password)``.
    * identity token (an OAuth2 refresh token, docker's ``identitytoken`` field or a
      credential helper answering ``Username: "<token>"``):
      ``Credentials(username=IDENTITY_TOKEN_USER, secret=token)``, that is the username is
      the literal string ``"<token>"``. The token exchange must then send
      ``grant_type=refresh_token&refresh_token=<secret>`` instead of basic credentials; see
      ``Credentials.is_identity_token``.
    * registry token (docker's ``registrytoken``): ``Credentials(token=...)``, a bearer token
      sent as is.

Docker Hub is known under ``docker.io``, ``index.docker.io`` and ``registry-1.docker.io``;
docker keys it as ``https://index.docker.io/v1/`` (:data:`DOCKER_HUB_CONFIG_KEY`).

Keyring
    Stored as service ``"cib:" + registry`` (:func:`keyring_service`), account = username,
    password = secret. Because some keyring backends cannot look an entry up without its
    account name, the username is also stored as service ``"cib-username:" + registry``,
    account ``"username"``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cib_core.authn.credentials import IDENTITY_TOKEN_USER, Credentials
from cib_core.errors import AuthenticationError, ConfigurationError
from cib_core.fileio import write_atomically
from cib_core.reference import DEFAULT_REGISTRY
from cib_core.reference import is_docker_hub as is_docker_hub  # for the credential plugins

log = logging.getLogger(__name__)

DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
HELPER_PREFIX = "docker-credential-"
HELPER_TIMEOUT = 30.0
KEYRING_SERVICE_PREFIX = "cib:"
KEYRING_USERNAME_SERVICE_PREFIX = "cib-username:"
_KEYRING_USERNAME_ACCOUNT = "username"
_NOT_FOUND_MARKER = "credentials not found"


# -- hosts and keys --------------------------------------------------------------------------

def canonical_host(host: str) -> str:
    """Lower-cased host, every Docker Hub alias as ``docker.io``."""
    host = host.lower()
    return DEFAULT_REGISTRY if is_docker_hub(host) else host


def split_key(key: str) -> tuple[str, str]:
    """``(host, path)`` of an ``auths`` key, host canonical.

    With a scheme the path is dropped (``https://host/v1/`` is the host); without one the
    path is a repository namespace (podman's ``quay.io/org/repo``).
    """
    key = key.strip()
    lowered = key.lower()
    for scheme in ("https://", "http://"):
        if lowered.startswith(scheme):
            return canonical_host(key[len(scheme):].split("/", 1)[0]), ""
    host, _, path = key.partition("/")
    return canonical_host(host), path.strip("/")


def helper_server_urls(registry: str) -> list[str]:
    """Server URLs to ask a credential helper for, in order."""
    if is_docker_hub(registry):
        urls = [DOCKER_HUB_CONFIG_KEY, "docker.io", "index.docker.io", registry.lower()]
    else:
        urls = [registry, "https://" + registry]
    return list(dict.fromkeys(urls))


# -- files -----------------------------------------------------------------------------------

def docker_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, default ``~/.docker/config.json``."""
    directory = os.environ.get("DOCKER_CONFIG")
    base = Path(directory) if directory else Path.home() / ".docker"
    return base / "config.json"


def auth_file_paths() -> list[Path]:
    """podman/skopeo auth files in the order they are consulted (existing or not)."""
    paths: list[Path] = []
    explicit = os.environ.get("REGISTRY_AUTH_FILE")
    if explicit:
        paths.append(Path(explicit))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        paths.append(Path(runtime) / "containers" / "auth.json")
    config_home = os.environ.get("XDG_CONFIG_HOME")
    paths.append((Path(config_home) if config_home else Path.home() / ".config")
                 / "containers" / "auth.json")
    return list(dict.fromkeys(paths))


@dataclass(frozen=True)
class AuthEntry:
    """One decoded ``auths`` entry; secrets are masked in ``repr``."""

    source: Path
    key: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)
    registry_token: str | None = field(default=None, repr=False)

    def credentials(self) -> Credentials | None:
        """The entry as Credentials (see the module docstring), None for an empty entry."""
        if self.identity_token:
            return Credentials(username=IDENTITY_TOKEN_USER, secret=self.identity_token)
        if self.registry_token:
            return Credentials(token=self.registry_token)
        if self.username and self.password:
            return Credentials(username=self.username, secret=self.password)
        return None


@dataclass(frozen=True)
class AuthConfig:
    """The parts of a config.json / auth.json that carry credentials."""

    path: Path
    auths: Mapping[str, Mapping[str, Any]] = field(repr=False)  # raw entries hold secrets
    cred_helpers: Mapping[str, str] = field(default_factory=dict)
    creds_store: str | None = None

    def entry(self, key: str) -> AuthEntry:
        """Decode the entry under ``key``; ConfigurationError naming file and key if malformed."""
        return _decode_entry(self.path, key, self.auths[key])

    def find(self, registry: str, repository: str | None = None, *,
             namespaced: bool = False) -> AuthEntry | None:
        """The entry serving ``registry`` (and ``repository``), or None.

        ``namespaced`` False is docker's rule (hosts only; a key equal to ``registry`` comes
        first, then keys in file order; Docker Hub's ``https://index.docker.io/v1/`` first for
        Hub). True is podman's: the longest key path containing ``repository`` wins. Empty
        entries (placeholders docker writes when a credential store is used) are skipped.
        """
        for key in self.matching_keys(registry, repository, namespaced=namespaced):
            entry = self.entry(key)
            if entry.credentials() is not None:
                return entry
        return None

    def matching_keys(self, registry: str, repository: str | None = None, *,
                      namespaced: bool = False) -> list[str]:
        wanted = canonical_host(registry)
        matches: list[tuple[int, int, str]] = []
        for position, key in enumerate(self.auths):
            host, path = split_key(key)
            if host != wanted:
                continue
            if not namespaced:
                path = ""
            if path and not (repository and (repository == path
                                             or repository.startswith(path + "/"))):
                continue
            if namespaced:
                rank = -len(path)
            elif wanted == "docker.io" and key == DOCKER_HUB_CONFIG_KEY:
                rank = -2
            elif key == registry:
                rank = -1
            else:
                rank = 0
            matches.append((rank, position, key))
        return [key for _, _, key in sorted(matches)]


def _read_json_object(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path}: not UTF-8 text; fix or remove the file") from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the credentials file "
                                 f"({exc.strerror or type(exc).__name__}); "
                                 "fix its permissions or remove it") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: the document itself may hold secrets.
        raise ConfigurationError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} "
                                 f"column {exc.colno}); fix or remove the file") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: expected a JSON object at the top level, "
                                 f"found {type(data).__name__}; fix or remove the file")
    return data


_HELPER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def load_auth_config(path: Path) -> AuthConfig | None:
    """Read a docker config.json or podman auth.json; None when the file does not exist.

    Raises ConfigurationError naming the file when it is unreadable or malformed.
    """
    data = _read_json_object(path)
    if data is None:
        return None
    auths = data.get("auths", {})
    if auths is None:
        auths = {}
    if not isinstance(auths, dict) or not all(isinstance(v, dict) for v in auths.values()):
        raise ConfigurationError(f'{path}: "auths" must be an object of objects; '
                                 "fix or remove the file")
    helpers = data.get("credHelpers", {}) or {}
    if not isinstance(helpers, dict) or not all(isinstance(v, str) for v in helpers.values()):
        raise ConfigurationError(f'{path}: "credHelpers" must map registry hosts to helper '
                                 'names (strings); fix the file')
    store = data.get("credsStore")
    if store is not None and not isinstance(store, str):
        raise ConfigurationError(f'{path}: "credsStore" must be a helper name (a string); '
                                 "fix the file")
    for name in [*helpers.values(), store or ""]:
        if not _HELPER_NAME_RE.fullmatch(name) and name:
            # the name becomes part of a program name looked up on PATH: a '/' would run a
            # file relative to the current directory instead
            raise ConfigurationError(f"{path}: {name!r} is not a credential helper name (the "
                                     f"NAME of {HELPER_PREFIX}NAME: letters, digits, '.', '_', "
                                     "'-'); fix the file")
    return AuthConfig(path=path, auths=auths, cred_helpers=helpers, creds_store=store or None)


def load_docker_config(path: Path | None = None) -> AuthConfig | None:
    """docker's config.json (default :func:`docker_config_path`), or None if absent."""
    return load_auth_config(path if path is not None else docker_config_path())


def iter_auth_files() -> Iterator[AuthConfig]:
    """The podman/skopeo auth files that exist, in :func:`auth_file_paths` order."""
    for path in auth_file_paths():
        config = load_auth_config(path)
        if config is not None:
            yield config


def _string_field(path: Path, key: str, entry: Mapping[str, Any], name: str) -> str | None:
    value = entry.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f'{path}: "{name}" of the entry {key!r} must be a string; '
                                 "fix the file")
    return value


def _decode_entry(path: Path, key: str, entry: Mapping[str, Any]) -> AuthEntry:
    username = _string_field(path, key, entry, "username")
    password = _string_field(path, key, entry, "password")
    encoded = _string_field(path, key, entry, "auth")
    if encoded is not None:
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise ConfigurationError(f'{path}: "auth" of the entry {key!r} is not base64 of '
                                     '"user:password"; log in again or fix the file') from None
        user, sep, secret = decoded.partition(":")
        if not sep:
            raise ConfigurationError(f'{path}: "auth" of the entry {key!r} does not decode '
                                     'to "user:password"; log in again or fix the file')
        username, password = user, secret
    return AuthEntry(
        source=path, key=key, username=username, password=password,
        identity_token=_string_field(path, key, entry, "identitytoken"),
        registry_token=_string_field(path, key, entry, "registrytoken"),
    )


def host_helper(config: AuthConfig, registry: str) -> str | None:
    """The helper ``credHelpers`` names for ``registry`` (matched by host), or None."""
    wanted = canonical_host(registry)
    exact = config.cred_helpers.get(registry)
    if exact:
        return exact
    for key, helper in config.cred_helpers.items():
        if helper and split_key(key)[0] == wanted:
            return helper
    return None


def configured_helper(config: AuthConfig, registry: str) -> str | None:
    """The helper name for ``registry``: ``credHelpers`` (matched by host), else ``credsStore``."""
    return host_helper(config, registry) or config.creds_store


# -- credential helpers ----------------------------------------------------------------------

def _run_helper(helper: str, action: str, stdin: str, timeout: float | None,
                ) -> tuple[int, str, str] | None:
    """Run ``docker-credential-<helper> <action>``; None when the helper is not installed."""
    program = shutil.which(HELPER_PREFIX + helper)
    if program is None:
        log.debug("credential helper %s%s is not on PATH; skipping it", HELPER_PREFIX, helper)
        return None
    limit = HELPER_TIMEOUT if timeout is None else timeout
    try:
        done = subprocess.run([program, action], input=stdin, capture_output=True, text=True,
                              timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        raise AuthenticationError(f"credential helper {HELPER_PREFIX}{helper} {action} did not "
                                  f"answer within {limit:g} s; check the helper "
                                  "(is its store locked?)") from None
    except OSError as exc:
        raise AuthenticationError(f"credential helper {program} {action} could not run: "
                                  f"{exc.strerror or type(exc).__name__}") from None
    return done.returncode, done.stdout, done.stderr


def _helper_failure(helper: str, action: str, code: int, stdout: str, stderr: str,
                    registry: str | None = None) -> AuthenticationError:
    text = (stderr.strip() or stdout.strip()).splitlines()
    detail = text[0][:200] if text else ""
    # A helper's error is a line of prose; never repeat anything that looks like its JSON.
    if detail.startswith(("{", "[")):
        detail = ""
    return AuthenticationError(f"credential helper {HELPER_PREFIX}{helper} {action} failed "
                               f"(exit status {code})" + (f": {detail}" if detail else ""),
                               registry=registry)


def helper_get(helper: str, registry: str, *, timeout: float | None = None,
               required: bool = False) -> Credentials | None:
    """Ask ``docker-credential-<helper> get`` for ``registry``, trying :func:`helper_server_urls`.

    None when the helper is not installed (an ``AuthenticationError`` naming it when
    ``required``: the config names it for this very host) or has nothing for any of the URLs; a helper
    ``Username`` of ``"<token>"`` is kept, so an identity token comes back as
    ``Credentials(username="<token>", secret=token)``. Other failures raise
    AuthenticationError naming the helper.
    """
    for url in helper_server_urls(registry):
        result = _run_helper(helper, "get", url, timeout)
        if result is None and required:
            raise AuthenticationError(f"credential helper {HELPER_PREFIX}{helper}, which "
                                      f"credHelpers names for {registry}, is not installed (not "
                                      "an executable on PATH); install it, or remove the entry",
                                      registry=registry)
        if result is None:
            return None
        code, stdout, stderr = result
        if code != 0:
            if _NOT_FOUND_MARKER in (stdout + stderr).lower():
                log.debug("credential helper %s%s has no credentials for %s",
                          HELPER_PREFIX, helper, url)
                continue
            raise _helper_failure(helper, "get", code, stdout, stderr, registry)
        try:
            answer = json.loads(stdout)
        except json.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise AuthenticationError(f"credential helper {HELPER_PREFIX}{helper} get answered "
                                      f"for {url} with something that is not the JSON object of "
                                      "the credential-helper protocol; check the helper",
                                      registry=registry)
        username, secret = answer.get("Username"), answer.get("Secret")
        if not isinstance(secret, str | None) or not isinstance(username, str | None):
            raise AuthenticationError(f"credential helper {HELPER_PREFIX}{helper} get answered "
                                      f"for {url} with a Username or Secret that is not a "
                                      "string; check the helper", registry=registry)
        if not isinstance(secret, str) or not secret:
            log.debug("credential helper %s%s returned no secret for %s",
                      HELPER_PREFIX, helper, url)
            continue
        log.debug("credential helper %s%s has credentials for %s", HELPER_PREFIX, helper, url)
        return Credentials(username=username if isinstance(username, str) and username else None,
                           secret=secret)
    return None


def helper_store(helper: str, server_url: str, username: str, secret: str, *,
                 timeout: float | None = None) -> None:
    """``docker-credential-<helper> store``; AuthenticationError if missing or failing."""
    payload = json.dumps({"ServerURL": server_url, "Username": username, "Secret": secret})
    result = _run_helper(helper, "store", payload, timeout)
    if result is None:
        raise AuthenticationError(f"credential helper {HELPER_PREFIX}{helper} is configured but "
                                  "not on PATH; install it or remove it from the docker config")
    code, stdout, stderr = result
    if code != 0:
        raise _helper_failure(helper, "store", code, stdout, stderr)


def helper_erase(helper: str, server_url: str, *, timeout: float | None = None) -> bool:
    """``docker-credential-<helper> erase``; False when there was nothing to erase."""
    result = _run_helper(helper, "erase", server_url, timeout)
    if result is None:
        return False
    code, stdout, stderr = result
    if code != 0:
        if _NOT_FOUND_MARKER in (stdout + stderr).lower():
            return False
        raise _helper_failure(helper, "erase", code, stdout, stderr)
    return True


# -- writing docker's config.json ------------------------------------------------------------

def config_key(registry: str) -> str:
    """The ``auths`` key docker writes for ``registry``."""
    return DOCKER_HUB_CONFIG_KEY if is_docker_hub(registry) else registry


def _write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomically(path, (json.dumps(data, indent="\t") + "\n").encode("utf-8"), mode=0o600)


def store_credentials(registry: str, username: str, secret: str,
                      path: Path | None = None) -> Path:
    """Log in the way docker does: through the configured credential helper if there is one
    (leaving an empty ``auths`` placeholder), else as base64 ``auth`` in config.json.

    Other keys and entries are kept; the file is replaced atomically with mode 0600.
    Returns the path written.
    """
    target = path if path is not None else docker_config_path()
    data = _read_json_object(target) or {}
    config = load_auth_config(target) or AuthConfig(path=target, auths={})
    helper = configured_helper(config, registry)
    auths = dict(config.auths)
    for key in config.matching_keys(registry):
        del auths[key]
    key = config_key(registry)
    if helper:
        helper_store(helper, DOCKER_HUB_CONFIG_KEY if is_docker_hub(registry) else registry,
                     username, secret)
        auths[key] = {}
    else:
        encoded = base64.b64encode(f"{username}:{secret}".encode()).decode("ascii")
        auths[key] = {"auth": encoded}
    data["auths"] = auths
    _write_json_atomically(target, data)
    log.debug("stored credentials for %s in %s", registry,
              f"{HELPER_PREFIX}{helper}" if helper else target)
    return target


def erase_credentials(registry: str, path: Path | None = None) -> bool:
    """Log out the way docker does: remove every ``auths`` key of ``registry``'s host and
    erase it from the configured credential helper. True if anything was removed."""
    target = path if path is not None else docker_config_path()
    config = load_auth_config(target)
    if config is None:
        return False
    removed = False
    helper = configured_helper(config, registry)
    if helper:
        for url in helper_server_urls(registry):
            removed = helper_erase(helper, url) or removed
    keys = config.matching_keys(registry)
    if keys:
        data = _read_json_object(target) or {}
        auths = dict(config.auths)
        for key in keys:
            del auths[key]
        data["auths"] = auths
        _write_json_atomically(target, data)
        removed = True
    return removed


# -- keyring ---------------------------------------------------------------------------------

def keyring_service(registry: str) -> str:
    """The keyring service name cib uses for ``registry``: ``"cib:" + registry``."""
    return KEYRING_SERVICE_PREFIX + registry


def _keyring_username(keyring_module: Any, registry: str) -> str | None:
    value = keyring_module.get_password(KEYRING_USERNAME_SERVICE_PREFIX + registry,
                                        _KEYRING_USERNAME_ACCOUNT)
    return value if isinstance(value, str) and value else None


def get_keyring_credentials(registry: str) -> Credentials | None:
    """Credentials stored for ``registry`` in the system keyring, or None (also when no
    keyring backend works; that is logged at debug level)."""
    try:
        import keyring
        import keyring.errors
    except ImportError:
        log.debug("the keyring package is not installed; skipping the keyring")
        return None
    service = keyring_service(registry)
    try:
        found = keyring.get_credential(service, None)
        if found is not None and found.password:
            return Credentials(username=found.username or None, secret=found.password)
        username = _keyring_username(keyring, registry)
        if username is None:
            return None
        secret = keyring.get_password(service, username)
    except keyring.errors.KeyringError as exc:
        log.debug("keyring unavailable for %s: %s", service, type(exc).__name__)
        return None
    except Exception as exc:  # noqa: BLE001 - a broken backend must not break unrelated pulls
        log.debug("keyring backend failed for %s: %s", service, type(exc).__name__)
        return None
    if not secret:
        return None
    return Credentials(username=username, secret=secret)


def set_keyring_credentials(registry: str, username: str, secret: str) -> None:
    """Store credentials for ``registry`` in the system keyring (``cib auth login --store
    keyring``); ConfigurationError when no keyring backend can store them."""
    import keyring
    import keyring.errors

    try:
        keyring.set_password(keyring_service(registry), username, secret)
        keyring.set_password(KEYRING_USERNAME_SERVICE_PREFIX + registry,
                             _KEYRING_USERNAME_ACCOUNT, username)
    except keyring.errors.KeyringError as exc:
        raise ConfigurationError(f"cannot store credentials for {registry} in the keyring "
                                 f"({type(exc).__name__}); install or unlock a keyring backend, "
                                 "or use --store config") from None


def delete_keyring_credentials(registry: str) -> bool:
    """Remove ``registry``'s credentials from the keyring; False if none were stored."""
    import keyring
    import keyring.errors

    service = keyring_service(registry)
    removed = False
    try:
        found = keyring.get_credential(service, None)
        usernames = {found.username} if found is not None and found.username else set()
        index = _keyring_username(keyring, registry)
        if index:
            usernames.add(index)
        for username in sorted(usernames):
            try:
                keyring.delete_password(service, username)
                removed = True
            except keyring.errors.PasswordDeleteError:
                pass
        if index:
            try:
                keyring.delete_password(KEYRING_USERNAME_SERVICE_PREFIX + registry,
                                        _KEYRING_USERNAME_ACCOUNT)
            except keyring.errors.PasswordDeleteError:
                pass
    except keyring.errors.KeyringError as exc:
        raise ConfigurationError(f"cannot remove credentials for {registry} from the keyring "
                                 f"({type(exc).__name__}); unlock the keyring backend") from None
    return removed
