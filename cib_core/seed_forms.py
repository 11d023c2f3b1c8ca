"""Answers to the npm library's spellings and call forms, in the words of the Python API.

cib is the Python rendering of the npm ``container-image-builder``; code ported from it
writes ``image.Cmd = [...]``, passes an options object (``addFiles(dir, {ignores: [...]})``)
and, following that library's README, maps local paths to image paths. In Python these would
be silently ignored or fail far from the cause, so each gets an error that shows the Python form.
docs/migrating.md lists every name side by side.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from cib_core.errors import ConfigurationError

P = ParamSpec("P")
R = TypeVar("R")

# an example of each config attribute, shown when the npm spelling is used
CONFIG_EXAMPLES = {
    "working_dir": 'image.working_dir = "/app"',
    "cmd": 'image.cmd = ["node", "index.js"]',
    "entrypoint": 'image.entrypoint = ["/usr/bin/tini", "--"]',
    "user": 'image.user = "1000:1000"',
    "env": 'image.env = ["HOME=/workspace"]',
    "unset_env": 'image.unset_env = ["DEBUG"]',
    "labels": 'image.labels = {"team": "web"}',
    "exposed_ports": 'image.exposed_ports = ["8080/tcp"]',
    "volumes": 'image.volumes = ["/data"]',
    "annotations": 'image.annotations = {"org.opencontainers.image.version": "1.0"}',
}

# fields of the image config's `config` object that have no attribute of their own
_OTHER_CONFIG_FIELDS = frozenset({
    "StopSignal", "Healthcheck", "Shell", "OnBuild", "ArgsEscaped", "Hostname", "Domainname",
    "AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce", "Image",
    "Memory", "MemorySwap", "CpuShares",
})

# option values never quoted in a message (credentials)
_SECRET_OPTIONS = frozenset({"auth"})


def snake_case(name: str) -> str:
    """``WorkingDir`` -> ``working_dir``, ``addFiles`` -> ``add_files``, ``Cmd`` -> ``cmd``."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def unknown_attribute(obj: object, name: str, known: Mapping[str, bool], *,
                      setting: bool) -> AttributeError:
    """The error for an attribute ``obj`` does not have, naming the Python spelling.

    ``known`` maps each public name of the object to whether it is a method.
    """
    cls = type(obj).__name__
    head = f"{cls!r} object has no attribute {name!r}"
    snake = snake_case(name)
    if snake != name and snake in known:
        if snake in CONFIG_EXAMPLES:
            hint = (f"the Python spelling is image.{snake}, "
                    f"as in {CONFIG_EXAMPLES[snake]}")
        elif known[snake]:
            hint = f"the Python spelling is image.{snake}(...)"
        else:
            hint = f"the Python spelling is image.{snake}"
        return AttributeError(f"{head}: {hint}", name=name, obj=obj)
    if name in _OTHER_CONFIG_FIELDS:
        return AttributeError(
            f"{head}: the config field {name} has no attribute of its own; set it with "
            f"image.get_image_config()[{name!r}] = ...", name=name, obj=obj)
    close = difflib.get_close_matches(name, [k for k in known if not k.startswith("_")], n=1,
                                      cutoff=0.75)
    if close:
        return AttributeError(f"{head}; did you mean image.{close[0]}?", name=name, obj=obj)
    if setting and not name.startswith("_"):
        return AttributeError(
            f"{head}, so assigning it would change nothing; the config attributes are "
            + ", ".join(CONFIG_EXAMPLES), name=name, obj=obj)
    return AttributeError(head, name=name, obj=obj)


def _shown(key: str, value: object) -> str:
    if key in _SECRET_OPTIONS:
        return "{...}"
    text = repr(value)
    return text if len(text) <= 80 else text[:70] + "...]"


def options_object_error(call: str, positional: tuple[object, ...], options: Mapping[Any, Any],
                         keywords: Mapping[str, inspect.Parameter]) -> ConfigurationError:
    """The error for the npm library's options object passed where Python takes keywords."""
    arguments = [repr(a) for a in positional]
    required = [name for name, p in keywords.items()
                if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
    absent = required[len(positional):]
    arguments += [name.upper() for name in absent]
    missing = []
    for key, value in options.items():
        name = snake_case(str(key))
        if name in keywords:
            arguments.append(f"{name}={_shown(name, value)}")
        else:
            missing.append(str(key))
    message = (f"{call}() takes its options as keyword arguments, not as an options object "
               f"as in the npm library: write {call}({', '.join(arguments)})")
    if absent:
        message += f" ({', '.join(absent)} has no default in cib)"
    if missing:
        message += ("; cib has no option " + ", ".join(repr(k) for k in missing)
                    + " (docs/migrating.md lists the npm options and their Python names)")
    return ConfigurationError(message)


def refuse_options_object(first: int, call: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a method so that a mapping passed positionally at index ``first`` or later
    (``self`` not counted), the place of the npm library's options object, raises a
    ``ConfigurationError`` that shows the keyword form. ``call`` names the function in it."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        parameters = inspect.signature(fn).parameters
        keywords = {name: p for name, p in parameters.items()
                    if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != "self"}

        @functools.wraps(fn)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            given = args[1:]  # after self
            for i in range(first, len(given)):
                options = given[i]
                if isinstance(options, Mapping):
                    raise options_object_error(call, tuple(given[:i]), options, keywords)
            return fn(*args, **kwargs)

        return checked

    return decorate


def _looks_local(key: object) -> bool:
    """Whether a key of add_files' mapping reads as a path on this machine."""
    if isinstance(key, os.PathLike):
        return True
    if not isinstance(key, str) or key.startswith("/"):
        return False
    return (key in (".", "..") or key.startswith(("./", "../", "~"))
            or os.path.lexists(key))


def _looks_like_image_path(value: object) -> bool:
    """Whether a value of add_files' mapping reads as a path in the image, not a source."""
    return isinstance(value, str) and value.startswith("/") and not os.path.lexists(value)


def check_mapping_order(files: Mapping[Any, Any], positional: bool) -> None:
    """Refuse a mapping written ``{local_path: image_path}``, as the npm library's README
    once showed it: cib's order is ``{image_path: source}``."""
    swapped = [key for key, value in files.items()
               if _looks_local(key) and _looks_like_image_path(value)]
    if not swapped:
        return
    if positional:
        ((target, source),) = files.items()
        local = os.fsdecode(target)
        raise ConfigurationError(
            f"add_files({source!r}, {local!r}) names the local directory second: {source!r} "
            f"does not exist on this machine and reads as a path in the image; write "
            f"add_files({local!r}, {source!r})")
    wrong = {os.fsdecode(k): files[k] for k in swapped}
    fixed = {(files[k] if k in swapped else k): (os.fsdecode(k) if k in swapped else v)
             for k, v in files.items()}
    raise ConfigurationError(
        f"add_files takes a mapping {{image_path: source}}; {wrong!r} reads the other way "
        f"round (its values do not exist on this machine and read as paths in the image): "
        f"write add_files({fixed!r})")
