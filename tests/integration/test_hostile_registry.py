"""A registry that misbehaves on purpose (issue 15, classes 4, 5, 6 and the remote part of 7).

A real registry cannot be made to cut a body short, trickle it, page without end or quote the
user's password back; ``cib_core.testing.hostile.HostileRegistry`` does. Each case is run
through the library and through the ``cib`` script: an error is one ``cib: error:`` line and
exit 1, never an empty success, a hang, unbounded memory or a secret on the screen.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import cib_core.remote.client as client_module
import cib_plugins.http_transport
from cib_core.errors import NotFound, RegistryError
from cib_core.plugins import CibPluginManager
from cib_core.remote.body import DeadlineExceeded
from cib_core.remote.client import RegistryClient
from cib_core.remote.transport import TransportOptions
from cib_core.retry import RetryPolicy
from cib_core.testing.hostile import HostileHandler, HostileRegistry, json_pages, run_cib

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCTETS = "application/octet-stream"
USER, PASSWORD = "alice", "pa55-w0rd/secret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
FORMS = (PASSWORD, f"{USER}:{PASSWORD}", BASIC.split()[1], quote(PASSWORD, safe=""))


def _pm() -> CibPluginManager:
    pm = CibPluginManager(autoload=False)
    pm.register(cib_plugins.http_transport, name="http-transport")
    return pm


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Image:
    """A small OCI image: one gzip layer, a config, a manifest, with their digests."""

    def __init__(self) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("hello.txt")
            payload = b"hello from a hostile registry\n"
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        self.layer = gzip.compress(buf.getvalue(), mtime=0)
        self.config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                                  "rootfs": {"type": "layers",
                                             "diff_ids": [_sha(buf.getvalue())]}}).encode()
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": _sha(self.config), "size": len(self.config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": _sha(self.layer), "size": len(self.layer)}]}).encode()
        self.digest = _sha(self.manifest)

    def serve(self, registry: HostileRegistry, *, manifest: Callable[[HostileHandler], None] | None = None,
              config: Callable[[HostileHandler], None] | None = None) -> None:
        """Serve it as ``app:1`` (and by digest); ``manifest``/``config`` replace those answers."""
        def good_manifest(h: HostileHandler) -> None:
            h.reply(200, self.manifest, {"Docker-Content-Digest": self.digest}, OCI_MANIFEST)

        for path in ("/v2/app/manifests/1", f"/v2/app/manifests/{self.digest}"):
            registry.route(path, manifest or good_manifest)
        registry.route(f"/v2/app/blobs/{_sha(self.config)}",
                       config or (lambda h: h.reply(200, self.config, content_type=OCTETS)))
        registry.route(f"/v2/app/blobs/{_sha(self.layer)}",
                       lambda h: h.reply(200, self.layer, content_type=OCTETS))


@pytest.fixture
def image() -> Image:
    return Image()


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    registry = HostileRegistry().start()
    yield registry
    registry.close()


def _client(registry: HostileRegistry, slept: list[float] | None = None, *,
            auth: Any = None, **options: Any) -> RegistryClient:
    policy = RetryPolicy(sleep=(slept if slept is not None else []).append)
    return RegistryClient(registry.host, "app", auth, pm=_pm(),
                          options=TransportOptions(retry=policy, **options))


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("cib: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# --------------------------------------------------------------------------------------------
# class 4: a body that ends before its Content-Length is an error everywhere
# --------------------------------------------------------------------------------------------

def _truncated(data: bytes, content_type: str = OCI_MANIFEST) -> Callable[[HostileHandler], None]:
    return lambda h: h.reply_truncated(data[:len(data) // 2], len(data), content_type=content_type)


def _chunked_cut(data: bytes) -> Callable[[HostileHandler], None]:
    def answer(h: HostileHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", OCI_MANIFEST)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        half = data[:len(data) // 2]
        h.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))  # and no last chunk: cut off
        h.wfile.flush()
        h.close_connection = True
    return answer


@pytest.mark.parametrize("how", ["short of its length", "chunked, cut off", "empty"])
def test_a_cut_off_manifest_is_an_error_never_an_empty_success(how: str, hostile: HostileRegistry,
                                                                image: Image, tmp_path: Path) -> None:
    answers = {"short of its length": _truncated(image.manifest),
               "chunked, cut off": _chunked_cut(image.manifest),
               "empty": lambda h: h.reply(200, b"", content_type=OCI_MANIFEST)}
    image.serve(hostile, manifest=answers[how])
    slept: list[float] = []
    client = _client(hostile, slept)
    for ref in ("1", image.digest):
        with pytest.raises(RegistryError) as err:
            client.manifest_raw(ref)
        assert "\n" not in str(err.value)
    gets = len(hostile.requests_for("/v2/app/manifests/"))
    if how == "empty":
        assert gets == 2  # a whole, empty answer: nothing to ask again
    else:
        assert gets == 2 * 5 and len(slept) == 2 * 4  # asked again by the retry policy
    home = tmp_path / "home"
    for argv in (["manifest", f"{hostile.host}/app:1"], ["digest", f"{hostile.host}/app:1"],
                 ["config", f"{hostile.host}/app:1"], ["inspect", f"{hostile.host}/app:1"],
                 ["copy", f"{hostile.host}/app:1", f"oci:{tmp_path / 'layout'}:1"]):
        result = run_cib(home, *argv)
        _one_error_line(result)
        assert result.stdout == "", argv
    index = tmp_path / "layout" / "index.json"
    assert not index.exists() or '"1"' not in index.read_text()


def test_cut_off_config_blob_token_and_lists_are_errors(hostile: HostileRegistry, image: Image,
                                                        tmp_path: Path) -> None:
    image.serve(hostile, config=_truncated(image.config, OCTETS))
    hostile.route("/v2/app/tags/list", _truncated(json.dumps({"tags": ["1", "2"]}).encode(),
                                                  "application/json"))
    hostile.route("/v2/app/manifests/gone", lambda h: h.reply_truncated(
        b'{"errors":[{"code":"MANIFEST_UN', 70, status=404))
    client = _client(hostile)
    with pytest.raises(RegistryError, match="broke off"):
        client.blob(_sha(image.config), size=len(image.config))
    with pytest.raises(RegistryError, match="broke off|ended after"):
        client.tags()
    with pytest.raises(NotFound):  # the status says it; a cut-off error body changes nothing
        client.manifest_raw("gone")
    home = tmp_path / "home"
    for argv in (["config", f"{hostile.host}/app:1"], ["ls", f"{hostile.host}/app"],
                 ["blob", f"{hostile.host}/app@{_sha(image.config)}"]):
        _one_error_line(run_cib(home, *argv))

    # a token server whose answer is cut off
    token_server = HostileRegistry().start()
    token_server.route("/token", _truncated(json.dumps({"token": "t" * 200}).encode(), "application/json"))
    guarded = HostileRegistry(challenge=f'Bearer realm="{token_server.url}/token",service="s"').start()
    try:
        with pytest.raises(RegistryError, match="token server .* (broke off|ended after)"):
            RegistryClient(guarded.host, "app", pm=_pm()).tags()
        _one_error_line(run_cib(home, "ls", f"{guarded.host}/app"))
    finally:
        guarded.close()
        token_server.close()


# --------------------------------------------------------------------------------------------
# class 5: a deadline per request that grows with its size; endless pages
# --------------------------------------------------------------------------------------------

def test_one_byte_a_minute_is_cut_off_at_the_deadline(hostile: HostileRegistry, image: Image,
                                                      tmp_path: Path) -> None:
    """The first byte comes at once, the next a minute later: the read timeout (120 s) alone
    would wait; the deadline (2 s here) cuts the single read short."""
    image.serve(hostile, manifest=lambda h: h.reply_trickle(image.manifest, every=60.0,
                                                            content_type=OCI_MANIFEST))
    client = _client(hostile, request_deadline=2.0, min_rate=1024)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="slower than the minimum of 1 KiB/s") as err:
        client.manifest_raw("1")
    elapsed = time.monotonic() - started
    print(f"DEADLINE manifest at one byte a minute: cut off after {elapsed:.2f}s (deadline 2 s)")
    assert 1.9 < elapsed < 4.0 and not err.value.temporary
    assert len(hostile.requests_for("/v2/app/manifests/")) == 1  # too slow is not asked again

    started = time.monotonic()
    result = run_cib(tmp_path / "home", "manifest", f"{hostile.host}/app:1",
                     env={"CIB_REQUEST_DEADLINE": "2", "CIB_MIN_TRANSFER_RATE": "1024"})
    elapsed = time.monotonic() - started
    print(f"DEADLINE cib manifest at one byte a minute: exit {result.returncode} after {elapsed:.2f}s")
    assert "slower than the minimum" in _one_error_line(result) and elapsed < 8.0
    bad = run_cib(tmp_path / "home", "manifest", f"{hostile.host}/app:1",
                  env={"CIB_REQUEST_DEADLINE": "soon"})
    assert "CIB_REQUEST_DEADLINE='soon' is not a positive number" in _one_error_line(bad)


def _trickled_headers(h: Any) -> None:
    """A status line, then a header one byte every 0.3 s: each read is well within the read
    timeout, and the headers never end."""
    owner = h._owner()
    try:
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        h.wfile.flush()
        while not owner.closing.wait(0.3):
            h.wfile.write(b"X")
            h.wfile.flush()
    except OSError:
        pass
    h.close_connection = True


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_deadline(
        hostile: HostileRegistry, tmp_path: Path) -> None:
    """The deadline bounds the whole answer, its headers too, not only each read."""
    hostile.route("/v2/app/manifests/1", _trickled_headers)
    client = _client(hostile, request_deadline=2.0, min_rate=1024, read_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as err:
        client.manifest_raw("1")
    elapsed = time.monotonic() - started
    print(f"DEADLINE headers at a byte every 0.3 s: cut off after {elapsed:.2f}s (deadline 2 s)")
    assert 1.9 < elapsed < 4.0 and not err.value.temporary
    assert len(hostile.requests_for("/v2/app/manifests/")) == 1  # too slow is not asked again
    result = run_cib(tmp_path / "home", "manifest", f"{hostile.host}/app:1",
                     env={"CIB_REQUEST_DEADLINE": "2"})
    assert "slower than the minimum" in _one_error_line(result)


def test_the_deadline_grows_with_the_size_expected(hostile: HostileRegistry) -> None:
    """48 KiB at ~24 KiB/s take 2 s, twice the 1 s allowance, yet beat 1 s + 48 KiB at the
    16 KiB/s minimum: they arrive. The same bytes at ~2 KiB/s are cut off at about 4 s."""
    data = bytes(range(256)) * 192
    digest = _sha(data)
    hostile.route(f"/v2/app/blobs/{digest}", lambda h: h.reply_trickle(
        data, every=0.1, piece=2400, content_type=OCTETS))
    client = _client(hostile, request_deadline=1.0, min_rate=16 * 1024)
    started = time.monotonic()
    assert client.blob(digest, size=len(data)) == data
    fast = time.monotonic() - started
    hostile.route(f"/v2/app/blobs/{digest}", lambda h: h.reply_trickle(
        data, every=0.1, piece=200, content_type=OCTETS))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        client.blob(digest, size=len(data))
    slow = time.monotonic() - started
    print(f"DEADLINE 48 KiB blob: 24 KiB/s arrives in {fast:.2f}s; 2 KiB/s cut off after {slow:.2f}s "
          "(deadline 1 s + 48 KiB / 16 KiB/s = 4 s)")
    assert fast > 1.5 and 3.8 < slow < 6.0


def _endless(hostile: HostileRegistry, per_page: int) -> None:
    hostile.route("/v2/app/tags/list", lambda h: json_pages(
        h, "tags", lambda n: [f"{n:08d}-{i:04d}-{'x' * 48}" for i in range(per_page)],
        "/v2/app/tags/list"))


def test_endless_distinct_tag_pages_are_capped(hostile: HostileRegistry,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _endless(hostile, per_page=10)
    monkeypatch.setattr(client_module, "MAX_PAGES", 50)
    monkeypatch.setattr(client_module, "MAX_LIST_ENTRIES", 120)
    client = _client(hostile)
    with pytest.raises(RegistryError, match="more than 120 entries"):
        client.tags()
    assert len(hostile.requests_for("/v2/app/tags/list")) == 13
    seen = 0
    with pytest.raises(RegistryError, match="more than 50 pages"):
        for _tag in client.iter_tags():
            seen += 1
    assert seen == 500  # streamed: every page up to the cap, no entry cap
    assert len(hostile.requests_for("/v2/app/tags/list")) == 13 + 50


_MEASURE = """
import resource, sys, time
import cib_plugins.http_transport
from cib_core.plugins import CibPluginManager
from cib_core.remote.client import RegistryClient
pm = CibPluginManager(autoload=False)
pm.register(cib_plugins.http_transport, name="http-transport")
started = time.monotonic()
try:
    RegistryClient(sys.argv[1], "app", pm=pm).tags()
except Exception as exc:
    print(type(exc).__name__, str(exc)[:200])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic() - started)
"""


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_memory_stays_bounded_on_endless_pages(hostile: HostileRegistry, tmp_path: Path) -> None:
    """Measured: ``tags()`` stops at a million entries; ``cib ls`` streams with flat memory."""
    _endless(hostile, per_page=1000)
    run = subprocess.run([sys.executable, "-c", _MEASURE, hostile.host], capture_output=True,
                         text=True, timeout=170, check=True)
    error, figures = run.stdout.strip().splitlines()
    peak_kib, seconds = int(figures.split()[0]), float(figures.split()[1])
    print(f"BOUNDS tags() on endless 1000-tag pages: {error[:90]}...; peak RSS {peak_kib // 1024} MiB "
          f"after {seconds:.1f}s, {len(hostile.requests_for('/v2/app/tags/list'))} pages")
    assert error.startswith("RegistryError") and "more than 1000000 entries" in error
    assert peak_kib < 400 * 1024

    hostile.seen.clear()
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "cib"), "ls", f"{hostile.host}/app"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(home))
    try:
        marks = []
        for pages in (100, 400, 1600):
            while len(hostile.requests_for("/v2/app/tags/list")) < pages:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.05)
            marks.append(_peak_kib(proc.pid))
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    print(f"BOUNDS cib ls on endless 1000-tag pages: peak RSS {marks[0] // 1024} MiB after 100 pages "
          f"(100k tags), {marks[1] // 1024} MiB after 400, {marks[2] // 1024} MiB after 1600 (1.6M tags)")
    assert marks[2] - marks[0] < 16 * 1024, marks  # streamed: no growth with the tags printed


# --------------------------------------------------------------------------------------------
# class 6: no secret from a registry's text, and none from urllib3's own log lines
# --------------------------------------------------------------------------------------------

def test_a_registry_quoting_the_credentials_gets_them_redacted(image: Image, tmp_path: Path) -> None:
    registry = HostileRegistry(challenge='Basic realm="hostile"', accept=(BASIC,)).start()
    quoting = (f"user {USER}:{PASSWORD} (header {BASIC}, password {quote(PASSWORD, safe='')}) "
               "may not read this")
    for status in (400, 403):
        registry.route(f"/v2/app/manifests/s{status}", lambda h, s=status: h.reply(
            s, json.dumps({"errors": [{"code": "DENIED", "message": quoting,
                                       "detail": {"password": PASSWORD}}]}).encode(),
            {"X-Echo": f"{USER}:{PASSWORD}", "Location": f"/v2/{PASSWORD}/x"}))
    try:
        client = RegistryClient(registry.host, "app", {"Username": USER, "Secret": PASSWORD}, pm=_pm())
        for ref in ("s400", "s403"):
            with pytest.raises(RegistryError) as err:
                client.manifest_raw(ref)
            texts = [str(err.value), repr(err.value), *(d.message for d in err.value.errors)]
            assert "may not read this" in str(err.value)  # the registry's words are kept...
            for text in texts:
                for secret in FORMS:
                    assert secret not in text, (secret, text)  # ...without the secret
        home = tmp_path / "home"
        (home / ".docker").mkdir(parents=True)
        (home / ".docker" / "config.json").write_text(json.dumps(
            {"auths": {registry.host: {"auth": BASIC.split()[1]}}}))
        for verbosity in ([], ["-v"], ["-vv"], ["-vvv"]):
            result = run_cib(home, *verbosity, "manifest", f"{registry.host}/app:s400")
            assert result.returncode == 1
            assert "may not read this" in result.stderr
            if verbosity == ["-vv"]:
                assert "X-Echo" in result.stderr  # the headers were logged, redacted
            for secret in FORMS:
                assert secret not in result.stderr + result.stdout, (verbosity, secret)
    finally:
        registry.close()


def test_vvv_shows_urllib3_lines_without_presigned_signatures(image: Image, tmp_path: Path) -> None:
    storage = HostileRegistry().start()
    registry = HostileRegistry(challenge='Basic realm="hostile"', accept=(BASIC,)).start()
    signed = ("/bucket/blob?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLEKEY%2F20240101"
              "&X-Amz-Signature=0badc0ffee0badc0ffee&X-Amz-Expires=60")
    digest = _sha(image.layer)
    registry.route(f"/v2/app/blobs/{digest}", lambda h: h.redirect(storage.url + signed))
    storage.route("/bucket/blob", lambda h: h.reply(200, image.layer, content_type=OCTETS))
    try:
        home = tmp_path / "home"
        (home / ".docker").mkdir(parents=True)
        (home / ".docker" / "config.json").write_text(json.dumps(
            {"auths": {registry.host: {"auth": BASIC.split()[1]}}}))
        result = subprocess.run([str(Path(sys.executable).parent / "cib"), "-vvv", "blob",
                                 f"{registry.host}/app@{digest}"], capture_output=True, timeout=60,
                                env=_env(home), check=False)
    finally:
        registry.close()
        storage.close()
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert result.stdout == image.layer
    assert "[urllib3.connectionpool]" in stderr and '"GET /bucket/blob?' in stderr  # urllib3's own
    for secret in ("0badc0ffee", "AKIAEXAMPLEKEY", *FORMS):
        assert secret not in stderr, secret
    assert storage.seen and all("authorization" not in r.headers for r in storage.seen)


def _env(home: Path) -> dict[str, str]:
    """The environment of ``run_cib``, for a run whose output is bytes or that is watched."""
    return dict(os.environ, HOME=str(home), DOCKER_CONFIG=str(home / ".docker"),
                CIB_DISABLE_PLUGIN_AUTOLOAD="1",
                PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")


# --------------------------------------------------------------------------------------------
# class 7, the remote part: redirects in a loop and to other schemes are one line
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("target", "message"), [
    ("self", "in a loop"),
    ("ftp://127.0.0.1:21/blob", "only http and https are"),
    ("file:///etc/passwd", "only http and https are"),
    ("http://[::1/blob", "only http and https are"),
])
def test_bad_redirects_are_one_line(target: str, message: str, hostile: HostileRegistry,
                                    image: Image, tmp_path: Path) -> None:
    digest = _sha(image.layer)
    path = f"/v2/app/blobs/{digest}"
    location = hostile.url + path if target == "self" else target
    hostile.route(path, lambda h: h.redirect(location))
    with pytest.raises(RegistryError, match=message):
        _client(hostile).blob(digest)
    assert message in _one_error_line(run_cib(tmp_path / "home", "blob", f"{hostile.host}/app@{digest}"))


# --------------------------------------------------------------------------------------------
# the one retry policy, seen from the wire (with an injected sleep: nothing really waits)
# --------------------------------------------------------------------------------------------

def test_retries_wait_by_the_policy_and_honour_retry_after(hostile: HostileRegistry,
                                                           image: Image) -> None:
    answers = iter([(429, {"Retry-After": "7"}), (503, {}), (429, {"Retry-After": "3600"})])

    def flaky(h: HostileHandler) -> None:
        status, headers = next(answers, (0, {}))
        if status:
            h.reply(status, b'{"errors":[{"code":"TOOMANYREQUESTS","message":"later"}]}', headers)
        else:
            h.reply(200, image.manifest, {"Docker-Content-Digest": image.digest}, OCI_MANIFEST)

    image.serve(hostile, manifest=flaky)
    slept: list[float] = []
    policy = RetryPolicy(retries=4, base=0.5, max_delay=20.0, retry_after_max=60.0,
                         random=lambda: 1.0, sleep=slept.append)
    client = RegistryClient(hostile.host, "app", pm=_pm(), options=TransportOptions(retry=policy))
    assert client.manifest_raw("1")[0] == image.manifest
    # Retry-After 7 over a 0.5 s backoff; 1 s backoff; Retry-After 3600 capped at 60
    assert slept == [7.0, 1.0, 60.0]

    always = HostileRegistry().start()
    try:
        always.route("/v2/app/manifests/1", lambda h: h.reply(503, b"{}"))
        slept.clear()
        with pytest.raises(RegistryError) as err:
            RegistryClient(always.host, "app", pm=_pm(),
                           options=TransportOptions(retry=policy)).manifest_raw("1")
        assert err.value.temporary and err.value.status == 503
        assert slept == [0.5, 1.0, 2.0, 4.0]  # bounded: four retries, then the error
        assert len(always.requests_for("/v2/app/manifests/1")) == 5
    finally:
        always.close()
