"""The config attributes of ``Image``: each value checked for its type, and applied to a config.

A ``str`` is iterable in Python, so without a check ``image.cmd = "echo hi"`` would become
the command ``["e", "c", "h", "o", ...]`` and ``exposed_ports = "8080"`` the ports ``8/tcp``
and ``0/tcp``. Every assignment and every ``save`` goes through the checks here instead; a
wrong value is a ``ConfigurationError`` naming the attribute and showing the form that works.
Environment values are never shown in a message: they may hold something secret.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, overload

from cib_core.errors import ConfigurationError

T = TypeVar("T")

# the attributes, in the order reference.md and the error messages list them
CONFIG_ATTRIBUTES = ("working_dir", "cmd", "entrypoint", "user", "env", "unset_env", "labels",
                     "exposed_ports", "volumes", "annotations")

_PORT = re.compile(r"^([0-9]{1,5})(?:/(tcp|udp|sctp))?$")
_MAX_SHOWN = 60  # characters of a wrong value quoted in a message


def _form(value: object) -> str:
    """``value`` written as Python source, with double quotes as in the documentation."""
    return json.dumps(value, ensure_ascii=False)


def _describe(value: object, *, show: bool = True) -> str:
    """``a str ('echo hi')``, ``an int (8080)``, or just ``a dict`` when the value is long."""
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    text = repr(value)
    if show and len(text) <= _MAX_SHOWN:
        return f"{article} {kind} ({text})"
    return f"{article} {kind}"


def _as_text(item: object) -> str:
    """What a user who wrote ``item`` where a ``str`` belongs most likely meant."""
    if isinstance(item, os.PathLike):
        return os.fsdecode(item)
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    return str(item)


def _string_list(where: str, name: str, value: object, what: str = "strings") -> list[str]:
    """A ``list`` or ``tuple`` of ``str``, copied into a new list."""
    if not isinstance(value, (list, tuple)):
        raise ConfigurationError(f"{where} must be a list of {what}, not {_describe(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            fixed = [x if isinstance(x, str) else _as_text(x) for x in value]
            raise ConfigurationError(
                f"{where}[{i}] is {_describe(item)}; every item must be a str: "
                f"write {name}={_form(fixed)}")
    return list(value)


def check_command(where: str, name: str, value: object) -> list[str] | None:
    """``cmd`` and ``entrypoint``: ``None`` (keep the base's) or a list of strings (exec form)."""
    if value is None:
        return None
    if isinstance(value, str):
        forms = [f'{name}={_form(["sh", "-c", value])} to run it with a shell']
        try:
            words = shlex.split(value)
        except ValueError:  # unbalanced quotes: only the shell can make sense of it
            words = []
        if words:
            forms.append(f"{name}={_form(words)} to run {words[0]} directly")
        raise ConfigurationError(
            f"{where} must be a list of strings (the program and its arguments), not "
            f"{_describe(value)}: write " + ", or ".join(forms))
    return _string_list(where, name, value)


def check_working_dir(where: str, name: str, value: object) -> str | None:
    """``None`` (keep the base's) or an absolute path in the image."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fsdecode(value)
    if not isinstance(value, str):
        raise ConfigurationError(f'{where} must be a str like "/app", not {_describe(value)}')
    if not value.startswith("/"):
        suggestion = "/" + value.lstrip("./") if value.strip("./") else "/"
        raise ConfigurationError(
            f"{where} must be an absolute path in the image (runtimes refuse a relative "
            f"working directory), not {value!r}: write {name}={_form(suggestion)}, or "
            f"{name}=None to keep the base's")
    return value


def check_user(where: str, name: str, value: object) -> str | None:
    """``None`` (keep the base's) or a user as the config holds it: name, uid, uid:gid."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{where} must be a str (a name, uid or uid:gid), not {_describe(value)}: "
            f"write {name}={_form(_as_text(value))}")
    return value


def check_env(where: str, name: str, value: object) -> list[str]:
    """A list of ``NAME=value`` strings."""
    if isinstance(value, Mapping):
        names = [f"{key}=..." for key in value]
        raise ConfigurationError(
            f"{where} must be a list of \"NAME=value\" strings, not a dict: write "
            f"{name}={_form(names)} (with the values in place of ...)")
    if isinstance(value, str):
        single = value.split("=", 1)[0] + "=..." if "=" in value else "NAME=value"
        raise ConfigurationError(
            f"{where} must be a list of \"NAME=value\" strings, not a str: write "
            f"{name}={_form([single])}")
    if not isinstance(value, (list, tuple)):
        raise ConfigurationError(
            f"{where} must be a list of \"NAME=value\" strings, not {_describe(value, show=False)}")
    for i, entry in enumerate(value):
        if not isinstance(entry, str):
            raise ConfigurationError(
                f"{where}[{i}] is {_describe(entry, show=False)}; every entry must be a "
                "\"NAME=value\" str")
        if "=" not in entry or entry.startswith("="):
            raise ConfigurationError(
                f"{where}[{i}] ({entry!r}) is not of the form NAME=value"
                if "=" not in entry else f"{where}[{i}] has no name before its '='")
    return list(value)


def check_unset_env(where: str, name: str, value: object) -> list[str]:
    """A list of environment variable names to remove from the base's ``Env``."""
    if isinstance(value, (str, Mapping)):
        kind = "a str" if isinstance(value, str) else "a dict"
        first = (value.split("=", 1)[0] if isinstance(value, str) else next(iter(value), "")) or "NAME"
        raise ConfigurationError(
            f"{where} must be a list of variable names, not {kind}: write {name}={_form([first])}")
    names = _string_list(where, name, value, "variable names")
    for i, variable in enumerate(names):
        problem = env_name_problem(variable)
        if problem:  # the entry is not quoted: after an '=' may come a secret value
            raise ConfigurationError(f"{where}[{i}] {problem}")
    return names


def set_and_unset(env: list[str], unset_env: list[str]) -> list[str]:
    """The names that ``env`` sets and ``unset_env`` removes (one of the two is a mistake)."""
    removed = set(unset_env)
    return sorted({entry.split("=", 1)[0] for entry in env} & removed)


def check_env_edits(env: list[str], unset_env: list[str]) -> None:
    """Refuse a name that ``image.env`` sets and ``image.unset_env`` removes."""
    both = set_and_unset(env, unset_env)
    if both:
        raise ConfigurationError(
            f"image.env sets {', '.join(both)} and image.unset_env removes "
            f"{'it' if len(both) == 1 else 'them'}; keep one of the two")


def _string_map(where: str, name: str, value: object) -> dict[str, str]:
    """``labels`` and ``annotations``: a mapping of ``str`` to ``str``, copied into a dict."""
    if isinstance(value, (list, tuple)) and all(isinstance(x, str) and "=" in x for x in value):
        pairs = dict(x.split("=", 1) for x in value)
        raise ConfigurationError(
            f"{where} must be a dict of str to str, not a list: write {name}={_form(pairs)}")
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f'{where} must be a dict of str to str like {{"key": "value"}}, not {_describe(value)}')
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError(
                f"{where} has the key {key!r}; every key must be a non-empty str")
        if not isinstance(item, str):
            raise ConfigurationError(
                f"{where}[{key!r}] is {_describe(item)}; every value must be a str: "
                f"write {name}={_form({key: _as_text(item)})}")
    return dict(value)


def check_labels(where: str, name: str, value: object) -> dict[str, str]:
    """Labels of the image config: ``str`` to ``str``."""
    return _string_map(where, name, value)


def check_annotations(where: str, name: str, value: object) -> dict[str, str]:
    """Annotations of the manifest (and of the index): ``str`` to ``str``."""
    return _string_map(where, name, value)


def check_ports(where: str, name: str, value: object) -> list[str]:
    """A list of ``"8080"``, ``"8080/tcp"``, ``"53/udp"`` or ``"9/sctp"`` strings."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        ports = str(value).replace(",", " ").split() or ["8080"]
        raise ConfigurationError(
            f"{where} must be a list of strings, not {_describe(value)}: write "
            f"{name}={_form(ports)}")
    ports = _string_list(where, name, value)
    for i, port in enumerate(ports):
        problem = port_problem(port)
        if problem:
            raise ConfigurationError(f"{where}[{i}] ({port!r}) {problem}")
    return ports


def port_problem(port: str) -> str | None:
    """What is wrong with ``port`` as an exposed port, or ``None``."""
    m = _PORT.match(port)
    if m is None or not 1 <= int(m.group(1)) <= 65535:
        return ('is not a port: use a number from 1 to 65535, with /tcp (the default), /udp or '
                '/sctp after it: "8080", "53/udp"')
    return None


def volume_problem(path: str) -> str | None:
    """What is wrong with ``path`` as a volume, or ``None``."""
    if not path.startswith("/"):
        return f"is not an absolute path in the image: write {_form('/' + path.lstrip('./'))}"
    return None


def env_name_problem(variable: str) -> str | None:
    """What is wrong with ``variable`` as the name of an environment variable, or ``None``.
    The text never quotes what follows an ``=`` (it may be a secret value)."""
    if not variable:
        return 'is empty; name a variable, like "DEBUG"'
    if "=" in variable:
        return f"holds an '=': name the variable only, like {_form(variable.split('=', 1)[0] or 'NAME')}"
    return None


def check_volumes(where: str, name: str, value: object) -> list[str]:
    """A list of absolute paths in the image."""
    if isinstance(value, (str, os.PathLike)):
        raise ConfigurationError(
            f"{where} must be a list of paths, not {_describe(value)}: write "
            f"{name}={_form([_as_text(value)])}")
    volumes = _string_list(where, name, value, "paths")
    for i, path in enumerate(volumes):
        problem = volume_problem(path)
        if problem:
            raise ConfigurationError(f"{where}[{i}] ({path!r}) {problem}")
    return volumes


_CHECKS: dict[str, Callable[[str, str, object], Any]] = {
    "working_dir": check_working_dir,
    "cmd": check_command,
    "entrypoint": check_command,
    "user": check_user,
    "env": check_env,
    "unset_env": check_unset_env,
    "labels": check_labels,
    "exposed_ports": check_ports,
    "volumes": check_volumes,
    "annotations": check_annotations,
}


def check(name: str, value: object, where: str | None = None) -> Any:
    """``value`` checked as the config attribute ``name`` (``where`` names it in messages)."""
    return _CHECKS[name](where or f"image.{name}", name, value)


class ConfigAttribute(Generic[T]):
    """An attribute whose every assignment is checked; it holds the checked copy.

    Lists and dicts can still be changed in place (``image.env.append(...)``), so ``save``
    checks every value once more before it writes the config.
    """

    def __init__(self, checker: Callable[[str, str, object], T]) -> None:
        self._checker = checker
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> ConfigAttribute[T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> ConfigAttribute[T] | T:
        if obj is None:
            return self
        value: T = obj.__dict__[self.name]
        return value

    def __set__(self, obj: object, value: T) -> None:
        obj.__dict__[self.name] = self._checker(f"image.{self.name}", self.name, value)


def merge_env(base: list[str], changes: list[str]) -> list[str]:
    """Merge ``NAME=value`` entries over ``base`` by name: replace in place, append new names."""
    merged = list(base)
    positions = {entry.split("=", 1)[0]: i for i, entry in enumerate(merged)}
    for entry in changes:
        if "=" not in entry or entry.startswith("="):
            raise ConfigurationError(f"environment entry {entry!r} is not of the form NAME=value")
        name = entry.split("=", 1)[0]
        if name in positions:
            merged[positions[name]] = entry
        else:
            positions[name] = len(merged)
            merged.append(entry)
    return merged


def apply_config(config: dict[str, Any], values: Mapping[str, Any]) -> None:
    """Write checked attribute values into an image config's ``config`` object.

    ``None`` and empty values keep the base's; ``env``, ``labels``, ``exposed_ports`` and
    ``volumes`` are merged over the base's; the names in ``unset_env`` are removed from the
    base's ``Env`` (before ``env`` is merged).
    """
    inner = config.get("config")
    if not isinstance(inner, dict):
        inner = config["config"] = {}
    for attribute, field in (("working_dir", "WorkingDir"), ("entrypoint", "Entrypoint"),
                             ("cmd", "Cmd"), ("user", "User")):
        if values[attribute] is not None:
            inner[field] = values[attribute]
    if values["unset_env"] and inner.get("Env"):
        removed = set(values["unset_env"])
        kept = [entry for entry in inner["Env"] if entry.split("=", 1)[0] not in removed]
        if kept:
            inner["Env"] = kept
        else:
            del inner["Env"]
    if values["env"]:
        inner["Env"] = merge_env(inner.get("Env") or [], values["env"])
    if values["labels"]:
        inner["Labels"] = {**(inner.get("Labels") or {}), **values["labels"]}
    if values["exposed_ports"]:
        ports = dict(inner.get("ExposedPorts") or {})
        for port in values["exposed_ports"]:
            ports[port if "/" in port else f"{port}/tcp"] = {}
        inner["ExposedPorts"] = ports
    if values["volumes"]:
        volumes = dict(inner.get("Volumes") or {})
        for path in values["volumes"]:
            volumes[path] = {}
        inner["Volumes"] = volumes


def env_names(config: Mapping[str, Any]) -> set[str]:
    """The names an image config's ``Env`` sets."""
    inner = config.get("config")
    env = inner.get("Env") if isinstance(inner, Mapping) else None
    if not isinstance(env, list):
        return set()
    return {entry.split("=", 1)[0] for entry in env if isinstance(entry, str)}


def apply_annotations(document: dict[str, Any], annotations: Mapping[str, str]) -> None:
    """Merge ``annotations`` over a manifest's or an index's own."""
    if annotations:
        document["annotations"] = {**(document.get("annotations") or {}), **annotations}
