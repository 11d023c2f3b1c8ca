"""Where wheels come from: the caller's index and find-links (else pip's configuration), the
lock's own URLs; downloads in parallel, each checked against the lock's hash and cached by it.

An index is a PEP 503 "simple" repository (``https://pypi.org/simple``, a devpi, a directory
served over HTTP, or a ``file://`` tree as pip reads it); find-links are directories of files
or HTML pages of links. A file the lock names is looked for by its name in the find-links,
then on the indexes, then at the lock's own URL: the hash check makes any source as good as
another, so a local wheelhouse serves a lock written against PyPI.
"""

from __future__ import annotations

import configparser
import hashlib
import html.parser
import logging
import os
import random
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
from packaging.utils import canonicalize_name

from cib_core.plugin_api import PackagingError, Progress, report_step

from . import wheel_sizes
from .locks import DistFile

log = logging.getLogger(__name__)

DEFAULT_INDEX = "https://pypi.org/simple"
CHUNK = 1 << 20
TIMEOUT = (15.0, 120.0)  # connect, read
ATTEMPTS = 3


@dataclass(frozen=True)
class Sources:
    """Indexes (PEP 503 roots) and find-links (directories or pages), in the order asked."""

    index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [*self.find_links, *self.index_urls]
        return ", ".join(parts) if parts else "no index"


def _split(value: str) -> list[str]:
    return [v for v in value.split() if v]


def pip_configuration(environ: Mapping[str, str] | None = None) -> Sources:
    """The indexes and find-links pip would use here: its configuration files (global, user,
    site, then ``PIP_CONFIG_FILE``; ``[global]``, then ``[install]`` and ``[download]``), then
    ``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``."""
    env = os.environ if environ is None else environ
    config_file = env.get("PIP_CONFIG_FILE")
    files: list[Path] = []
    if config_file != os.devnull:
        xdg_dirs = env.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
        files += [Path(d) / "pip" / "pip.conf" for d in xdg_dirs if d] + [Path("/etc/pip.conf")]
        home = Path(env.get("HOME") or Path.home())
        xdg_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
        files += [home / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf"]
        files.append(Path(sys.prefix) / "pip.conf")
        if config_file:
            files.append(Path(config_file))
    parser = configparser.RawConfigParser()
    for path in files:
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, configparser.Error, UnicodeDecodeError) as exc:
            log.debug("ignoring pip configuration %s: %s", path, exc)
    values: dict[str, str] = {}
    for section in ("global", "install", "download"):
        if parser.has_section(section):
            values.update({k.replace("_", "-"): v for k, v in parser.items(section)})
    for key in ("index-url", "extra-index-url", "find-links", "no-index"):
        from_env = env.get("PIP_" + key.upper().replace("-", "_"))
        if from_env is not None:
            values[key] = from_env
    no_index = values.get("no-index", "").strip().lower() in ("1", "true", "yes", "on")
    indexes = [] if no_index else [values.get("index-url", "").strip() or DEFAULT_INDEX,
                                   *_split(values.get("extra-index-url", ""))]
    return Sources(tuple(indexes), tuple(_split(values.get("find-links", ""))))


# --------------------------------------------------------------------------------------------
# Pages and links
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Link:
    filename: str
    url: str
    sha256: str | None
    yanked: bool = False


class _Anchors(html.parser.HTMLParser):
    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base
        self.links: list[Link] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "base" and attributes.get("href"):
            self.base = urljoin(self.base, attributes["href"] or "")
        if tag != "a" or not attributes.get("href"):
            return
        url = urljoin(self.base, attributes["href"] or "")
        parts = urlsplit(url)
        fragment = dict(p.split("=", 1) for p in parts.fragment.split("&") if "=" in p)
        filename = unquote(parts.path.rsplit("/", 1)[-1])
        self.links.append(Link(filename, url.split("#", 1)[0], fragment.get("sha256", "").lower()
                               or None, "data-yanked" in attributes))


def is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file:")


def local_path(location: str) -> Path:
    if location.startswith("file:"):
        return Path(unquote(urlsplit(location).path))
    return Path(location)


class Finder:
    """Looks up and downloads distribution files; one ``requests`` session for a build."""

    def __init__(self, sources: Sources, cache_dir: str | None, scratch: Path,
                 progress: Progress | None, jobs: int) -> None:
        self.sources = sources
        self.progress = progress
        self.jobs = max(1, jobs)
        # without a cache, downloads live as long as the build's scratch directory
        self.cache = Path(cache_dir) / "wheels" if cache_dir is not None else scratch / "wheels"
        self._session: Any = None
        self._lock = threading.Lock()
        self._pages: dict[str, list[Link]] = {}
        self._fetched: dict[str, Path] = {}

    def close(self) -> None:
        """Close the HTTP session (a later download opens another)."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    # -- HTTP ------------------------------------------------------------------------------
    def _http(self) -> Any:
        with self._lock:
            if self._session is None:
                self._session = requests.Session()
                self._session.headers["User-Agent"] = "cib (python-app packager)"
            return self._session

    def _get(self, url: str, *, stream: bool = False, accept: str | None = None,
             byte_range: str | None = None) -> Any:
        headers = {"Accept": accept} if accept else {}
        if byte_range:
            headers["Range"] = byte_range
        last: Exception | None = None
        for attempt in range(ATTEMPTS):
            try:
                response = self._http().get(url, stream=stream, timeout=TIMEOUT,
                                            headers=headers or None)
            except requests.RequestException as exc:
                last = exc
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return response
                last = PackagingError(url, f"answered HTTP {response.status_code}")
                response.close()
            if attempt + 1 < ATTEMPTS:
                time.sleep(random.uniform(0.5, 1.0) * 2 ** attempt)  # noqa: S311 - jitter
        raise PackagingError(_safe(url), f"cannot be fetched: {last}")

    # -- pages -----------------------------------------------------------------------------
    def _page(self, url: str) -> list[Link]:
        with self._lock:
            if url in self._pages:
                return self._pages[url]
        if is_local(url):
            path = local_path(url)
            if path.is_dir():
                index = path / "index.html"
                if index.is_file():
                    text = index.read_text("utf-8", "replace")
                    links = _parse(text, path.as_uri() + "/")
                else:
                    links = [Link(p.name, p.as_uri(), None) for p in sorted(path.iterdir())
                             if p.is_file()]
            elif path.is_file():
                links = _parse(path.read_text("utf-8", "replace"), path.as_uri())
            else:
                links = []
        else:
            response = self._get(url, accept="text/html")
            if response.status_code == 404:
                links = []
            elif response.status_code != 200:
                raise PackagingError(_safe(url), f"answered HTTP {response.status_code}")
            else:
                links = _parse(response.text, response.url)
        with self._lock:
            self._pages[url] = links
        return links

    def project_links(self, name: str) -> list[Link]:
        """Every file of project ``name`` the find-links and indexes list."""
        normalized = canonicalize_name(name)
        links = []
        for location in self.sources.find_links:
            links += [link for link in self._page(location)
                      if _project_of(link.filename) == normalized]
        for index in self.sources.index_urls:
            links += self._page(f"{index.rstrip('/')}/{normalized}/")
        return links

    def candidates(self, name: str, file: DistFile) -> list[str]:
        """Where the file ``file`` of project ``name`` may be fetched from, best first."""
        places = []
        if file.path:
            places.append(file.path)
        for link in self.project_links(name):
            if link.filename == file.filename and (file.sha256 is None or link.sha256 is None
                                                   or link.sha256 == file.sha256):
                places.append(link.url)
        if file.url:
            places.append(file.url)
        return list(dict.fromkeys(places))

    # -- sizes -----------------------------------------------------------------------------
    def unpacked_sizes(self, wanted: Sequence[tuple[str, DistFile, frozenset[str], str]]
                       ) -> dict[str, int | None]:
        """How many bytes each file unpacks to, by file name, learned without downloading
        it where possible (``wheel_sizes``); ``None`` where it must be downloaded first."""
        unique: dict[str, tuple[str, DistFile, frozenset[str], str]] = {}
        for item in wanted:
            unique.setdefault(item[1].filename, item)
        results: dict[str, int | None] = {}
        lock = threading.Lock()

        def one(item: tuple[str, DistFile, frozenset[str], str]) -> None:
            size = self.unpacked_size(item[0], item[1], item[2])
            with lock:
                results[item[1].filename] = size

        parallel(one, list(unique.values()), self.jobs)
        return results

    def unpacked_size(self, project: str, file: DistFile, allowed: frozenset[str]) -> int | None:
        hashes = sorted(set(allowed) | ({file.sha256} if file.sha256 else set()))
        what = f"{file.filename} ({project})"
        try:
            for sha in hashes:
                cached = self.cache / sha[:2] / sha / file.filename
                if cached.is_file():
                    return wheel_sizes.local_unpacked(cached)
                known = self.cache / "unpacked" / sha
                if known.is_file():
                    return int(known.read_text())
            for place in self.candidates(project, file):
                size: int | None
                try:
                    if is_local(place):
                        size = wheel_sizes.local_unpacked(local_path(place))
                    else:
                        size = wheel_sizes.remote_unpacked(
                            lambda url, span: self._get(url, stream=True, byte_range=span), place)
                except (OSError, PackagingError, requests.RequestException) as exc:
                    log.debug("cannot read the size of %s at %s: %s", file.filename, _safe(place), exc)
                    continue
                if size is not None:
                    self._remember_size(hashes, size)
                    return size
        except zipfile.BadZipFile as exc:
            raise PackagingError(what, f"is not a wheel: {exc}; the index served something else, "
                                 "or the file is damaged") from exc
        except ValueError:  # an unreadable note in the cache: ask again
            pass
        return None

    def _remember_size(self, hashes: list[str], size: int) -> None:
        if len(hashes) != 1:
            return  # several allowed files: which one was read is not known
        note = self.cache / "unpacked" / hashes[0]
        try:
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(str(size))
        except OSError as exc:
            log.debug("cannot note the size of a wheel in %s: %s", note, exc)

    # -- downloads -------------------------------------------------------------------------
    def fetch(self, project: str, file: DistFile, allowed: frozenset[str], where: str) -> Path:
        """The local path of ``file``, fetched and checked against its hashes once per build."""
        with self._lock:
            known = self._fetched.get(file.filename)
        if known is None:
            known = self._fetch(project, file, allowed, where)
            with self._lock:
                self._fetched[file.filename] = known
        return known

    def _fetch(self, project: str, file: DistFile, allowed: frozenset[str], where: str) -> Path:
        hashes = set(allowed) | ({file.sha256} if file.sha256 else set())
        if not hashes:
            raise PackagingError(f"{file.filename} in {where}", "has no sha256 hash in the lock; "
                                 "cib installs only files the lock pins by hash")
        for sha in sorted(hashes):
            cached = self.cache / sha[:2] / sha / file.filename
            if cached.is_file():
                return cached
        places = self.candidates(project, file)
        if not places:
            raise PackagingError(f"{file.filename} ({project})", "is on none of "
                                 f"{self.sources.describe()}, and the lock gives no URL for it; "
                                 "pass --index-url or --find-links where it is")
        failures = []
        for place in places:
            try:
                return self._download(place, file, hashes, where)
            except _Unreachable as exc:
                failures.append(str(exc))
        raise PackagingError(f"{file.filename} ({project})", "could not be fetched from any of "
                             f"its places: {'; '.join(failures)}")

    def _download(self, place: str, file: DistFile, hashes: set[str], where: str) -> Path:
        label = file.filename
        h = hashlib.sha256()
        if is_local(place):
            path = local_path(place)
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(CHUNK):
                        h.update(chunk)
            except OSError as exc:
                raise _Unreachable(f"{place}: {exc.strerror or exc}") from exc
            _check(h.hexdigest(), hashes, file, place, where)
            return path
        response = self._get(place, stream=True)
        if response.status_code != 200:
            response.close()
            raise _Unreachable(f"{_safe(place)}: HTTP {response.status_code}")
        total = int(response.headers.get("Content-Length") or 0) or file.size
        self.cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache, prefix=".part-")
        done = 0
        try:
            with os.fdopen(fd, "wb") as out, response:
                for chunk in response.iter_content(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    report_step(self.progress, label, done, total)
            report_step(self.progress, label, done, done)
            digest = h.hexdigest()
            _check(digest, hashes, file, _safe(place), where)
            final = self.cache / digest[:2] / digest / file.filename
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            return final
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class _Unreachable(Exception):
    """One place of a file could not be read; the next is tried."""


def _check(digest: str, hashes: set[str], file: DistFile, place: str, where: str) -> None:
    if digest not in hashes:
        raise PackagingError(f"{file.filename} from {place}", f"has sha256 {digest}, but {where} "
                             f"allows only {', '.join(sorted(hashes))}: the file is not the one "
                             "locked (fix the lock or the index); nothing was built or pushed")


def _parse(text: str, base: str) -> list[Link]:
    parser = _Anchors(base)
    parser.feed(text)
    return parser.links


def _project_of(filename: str) -> str:
    """The normalized project name a distribution file's name starts with."""
    stem = filename
    for suffix in (".whl", ".tar.gz", ".zip", ".tar.bz2"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return canonicalize_name(stem.split("-", 1)[0])


def _safe(url: str) -> str:
    """A URL without any user:password part, for messages."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return parts._replace(netloc=host).geturl()
    return url


def parallel(fn: Callable[[Any], None], items: Iterable[Any], jobs: int) -> None:
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cib-python-fetch") as pool:
        for _ in pool.map(fn, items):
            pass
