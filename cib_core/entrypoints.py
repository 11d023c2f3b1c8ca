"""The plugins installed: the entry points of the ``cib`` group, and what each was last seen to
implement, kept in the cache directory so that start-up need not find them again.

Finding entry points reads the metadata of every installed distribution (``importlib.metadata``,
some 20 ms). The list is kept for a ``sys.path`` whose directories have not changed since
(installing or removing a distribution changes its directory); a changed one is scanned
again. Beside each entry point the cache notes the hooks its plugin implemented when it was
last loaded, with the size and time of its module's file: the command line's help needs to
know whether any plugin adds commands, and when none does (and no module changed) it loads
no plugin at all. Failures to read or write the cache are logged at debug level and ignored.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import zlib
from collections import namedtuple
from collections.abc import Iterable, Iterator, Mapping

from cib_core.caches import cache_root

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

ENTRY_POINT_GROUP = "cib"
AUTOLOAD_ENV = "CIB_DISABLE_PLUGIN_AUTOLOAD"
DISTRIBUTION = "cib-core"
BUILTIN_MODULE_PREFIX = "cib_plugins."


# The tuples are made with collections.namedtuple: typing (for typing.NamedTuple) is not
# otherwise imported by `cib --help`, which reads these.
if TYPE_CHECKING:
    class Seen(NamedTuple):
        hooks: tuple[str, ...]
        file: str
        stamp: tuple[int, int]

    class _EntryPointFields(NamedTuple):
        name: str
        value: str
        version: str
        builtin: bool
        seen: Seen | None = None
else:
    Seen = namedtuple("Seen", "hooks file stamp")
    _EntryPointFields = namedtuple("EntryPoint", "name value version builtin seen",
                                   defaults=(None,))
Seen.__doc__ = """What a plugin was when it was last loaded: the names of the hooks it implemented,
its module's file, and that file's modification time (ns) and size then."""


class EntryPoint(_EntryPointFields):
    """One entry point of the ``cib`` group, as the plugin host needs it: its ``name``, its
    ``value`` (``module`` or ``module:attribute``), the ``version`` of the distribution that
    declares it, ``builtin`` when that is the core distribution (``cib-core``), and what its
    plugin was when last loaded (``seen``, a :class:`Seen`)."""

    __slots__ = ()

    def load(self) -> object:
        module, _, attribute = self.value.partition(":")
        loaded: object = importlib.import_module(module.strip())
        for part in filter(None, attribute.strip().split(".")):
            loaded = getattr(loaded, part)
        return loaded


def _debug(message: str, *args: object) -> None:
    import logging  # only when something went wrong: the help of the command line needs none

    logging.getLogger(__name__).debug(message, *args)


def autoload_enabled() -> bool:
    """Whether third-party entry points load (``CIB_DISABLE_PLUGIN_AUTOLOAD`` unset)."""
    return os.environ.get(AUTOLOAD_ENV, "") not in ("1", "true", "yes")


def entry_points() -> list[EntryPoint]:
    """Every entry point of the ``cib`` group, sorted by name (see the module's text)."""
    signature = _signature()
    cached = _read()
    if cached is not None and cached.get("signature") == signature:
        try:
            return [_from_json(ep) for ep in cached["entry_points"]]
        except (KeyError, TypeError, ValueError) as exc:
            _debug("ignoring a damaged entry-point cache: %s", exc)
    found = sorted(_scan(), key=lambda ep: ep.name)
    _write({"signature": signature, "entry_points": [_to_json(ep) for ep in found]})
    return found


def command_providers(blocked: Iterable[str], autoload: bool) -> list[str] | None:
    """The plugins that would load and add commands (``cib_commands``), from what they were
    when last loaded; ``None`` when that is not known for every one of them (never loaded,
    or its module changed since)."""
    providers = []
    blocked = set(blocked)
    for ep in entry_points():
        if ep.name in blocked or not (ep.builtin or autoload):
            continue
        if ep.seen is None or _stamp(ep.seen.file) != ep.seen.stamp:
            return None
        if "cib_commands" in ep.seen.hooks:
            providers.append(ep.name)
    return providers


def remember(seen: Mapping[str, tuple[tuple[str, ...], object]]) -> None:
    """Note the hooks of the plugins just loaded (by entry-point name, with the loaded
    object), for :func:`command_providers`."""
    cached = _read()
    if cached is None or cached.get("signature") != _signature():
        return
    changed = False
    for ep in cached.get("entry_points", []):
        if not isinstance(ep, dict) or ep.get("name") not in seen:
            continue
        hooks, plugin = seen[ep["name"]]
        file = getattr(plugin, "__file__", None)
        stamp = _stamp(file) if isinstance(file, str) else None
        now = None if stamp is None else {"hooks": list(hooks), "file": file, "stamp": list(stamp)}
        if ep.get("seen") != now:
            ep["seen"] = now
            changed = True
    if changed:
        _write(cached)


def kept_help(key: str) -> str | None:
    """The help of the command line kept by :func:`keep_help` under ``key``, if any."""
    cached = _read()
    if cached is None or cached.get("signature") != _signature():
        return None
    kept = cached.get("help")
    text = kept.get(key) if isinstance(kept, dict) else None
    return text if isinstance(text, str) else None


def keep_help(key: str, text: str) -> None:
    """Keep the command line's help (rendered with no plugin adding commands) under ``key``
    (see ``cib_core.cli.help_key``), beside the entry points it depends on: a new list of
    them drops it. One text is kept, for the last terminal width."""
    cached = _read()
    if cached is None or cached.get("signature") != _signature():
        return
    if cached.get("help") != {key: text}:
        cached["help"] = {key: text}
        _write(cached)


def _signature() -> list[list[Any]]:
    return [[entry, _mtime(entry)] for entry in sys.path]


def _mtime(entry: str) -> int | None:
    try:
        return os.stat(entry or ".").st_mtime_ns
    except OSError:
        return None


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _cache_file() -> str | None:
    root = cache_root()
    if root is None:
        return None
    # a file per interpreter and path; two that share one only scan again in turn
    key = zlib.crc32(repr((sys.executable, sys.path)).encode())
    return os.path.join(root, "plugins", f"{key:08x}.json")


def _read() -> dict[str, Any] | None:
    path = _cache_file()
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        _debug("ignoring the unreadable entry-point cache %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _write(data: dict[str, Any]) -> None:
    path = _cache_file()
    if path is None:
        return
    try:
        import tempfile

        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        _debug("cannot write the entry-point cache %s: %s", path, exc)


def _to_json(ep: EntryPoint) -> dict[str, Any]:
    return {"name": ep.name, "value": ep.value, "version": ep.version, "builtin": ep.builtin,
            "seen": None}


def _from_json(data: dict[str, Any]) -> EntryPoint:
    seen = data.get("seen")
    return EntryPoint(str(data["name"]), str(data["value"]), str(data["version"]),
                      bool(data["builtin"]),
                      None if not seen else Seen(tuple(seen["hooks"]), str(seen["file"]),
                                                 (int(seen["stamp"][0]), int(seen["stamp"][1]))))


def _scan() -> Iterator[EntryPoint]:
    import importlib.metadata

    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        name = getattr(dist, "name", None)
        builtin = (str(name).lower().replace("_", "-") == DISTRIBUTION if name is not None
                   else ep.value.startswith(BUILTIN_MODULE_PREFIX))
        yield EntryPoint(ep.name, ep.value, str(getattr(dist, "version", None) or "unknown"), builtin)
