"""The one error root of cib and the errors that say what went wrong.

Every message names the input it is about and, where it helps, what to do.
No message ever contains a secret: build messages from hosts, repositories,
digests and paths, never from headers, URLs with credentials or token bodies.
"""

from __future__ import annotations

# Imported by every command of the command line: no typing or collections at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


class CibError(Exception):
    """Root of every error cib raises on purpose."""


class InvalidReference(CibError, ValueError):
    """An image reference or transport string that cannot be parsed."""

    def __init__(self, reference: str, reason: str) -> None:
        self.reference = reference
        self.reason = reason
        super().__init__(f"invalid image reference {reference!r}: {reason}")


class ConfigurationError(CibError, ValueError):
    """An option or argument that cannot work (a contradictory platform, a bad flag value)."""


class RegistryErrorDetail:
    """One entry of the distribution spec's `errors` list."""

    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str = "") -> None:
        self.code = code
        self.message = message

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegistryErrorDetail):
            return NotImplemented
        return (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"RegistryErrorDetail(code={self.code!r}, message={self.message!r})"


class RegistryError(CibError):
    """The registry answered with an error, or with something that is not the protocol.

    `status` is the HTTP status (None when no answer arrived), `codes` the spec's error codes
    (`MANIFEST_INVALID`, `BLOB_UNKNOWN`, ...), `temporary` whether a retry may help.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        errors: Sequence[RegistryErrorDetail] = (),
        registry: str | None = None,
        repository: str | None = None,
        temporary: bool = False,
    ) -> None:
        self.status = status
        self.errors = tuple(errors)
        self.registry = registry
        self.repository = repository
        self.temporary = temporary
        super().__init__(message)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(e.code for e in self.errors)


class AuthenticationError(RegistryError):
    """The registry or its token server refused the credentials (or there were none)."""


class AuthorizationError(RegistryError):
    """The credentials were accepted but do not allow this action on this repository."""


class NotFound(RegistryError):
    """A manifest, blob, tag or repository is unknown, in a registry or a local layout."""


class DigestMismatch(CibError):
    """Content did not hash to the digest it was asked for or announced with."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        self.what = what
        self.expected = expected
        self.actual = actual
        super().__init__(f"digest mismatch for {what}: expected {expected}, got {actual}")


class LayerSourceError(CibError):
    """A local file or directory cannot go into a layer; names the path.

    ``option``, when given, is a setting that avoids the error, as the caller spells it; the
    message ends with it. The library names its own keywords (``follow_symlinks=False``); a
    front end that spells them otherwise (the command line's ``--no-follow-symlinks``) raises
    the error again with its spelling.
    """

    def __init__(self, path: object, reason: str, *, option: str | None = None) -> None:
        self.path = path
        self.reason = reason
        self.option = option
        super().__init__(f"{path}: {reason}, or use {option}" if option else f"{path}: {reason}")


class LocalWriteError(CibError):
    """A local target (an OCI layout, a docker-archive, an exported tarball, a file cib
    writes) cannot be written; names the path, the reason in plain words and what to do.

    ``errno`` is the operating system's error number when one caused it, else None.
    """

    def __init__(self, path: object, reason: str, hint: str = "", *, what: str = "",
                 errno: int | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        self.hint = hint
        self.errno = errno
        subject = f"{what} {path}" if what else str(path)
        super().__init__(f"cannot write {subject}: {reason}" + (f"; {hint}" if hint else ""))


class PackagingError(CibError):
    """An app cannot be packaged (``Image.add_app``, ``add_python_app``): names the input (a
    project, a lock, a wheel, the base) and what to do.

    ``output`` is what a failed tool printed (a project's build backend), for a front end to
    show in full; the message carries only its last lines.
    """

    def __init__(self, what: object, reason: str, *, output: str = "") -> None:
        self.what = what
        self.reason = reason
        self.output = output
        super().__init__(f"{what}: {reason}")


class ManifestError(CibError, ValueError):
    """A manifest, index or config document that is malformed or of an unsupported type."""


class PluginError(CibError):
    """A plugin failed to load or misbehaved; names the plugin."""

    def __init__(self, plugin: str, reason: str) -> None:
        self.plugin = plugin
        self.reason = reason
        super().__init__(f"plugin {plugin!r}: {reason}")
