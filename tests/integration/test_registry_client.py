"""RegistryClient against the real registries of the test bed (open, htpasswd, token), with
skopeo and the fixtures' own plain-HTTP pushes as the independent judges."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import cib_plugins.http_transport
from cib_core import mediatypes as mt
from cib_core.authn.challenge import IDENTITY_TOKEN_USER
from cib_core.authn.credentials import Credentials
from cib_core.authn.resolve import auth as resolve_auth
from cib_core.errors import (
    AuthenticationError,
    AuthorizationError,
    CibError,
    ConfigurationError,
    DigestMismatch,
    InvalidReference,
    NotFound,
    RegistryError,
)
from cib_core.plugins import CibPluginManager, hookimpl
from cib_core.remote.client import RegistryClient
from cib_core.remote.transport import TransportOptions, TransportPool
from cib_core.retry import RetryPolicy
from cib_core.testing import (
    FaultProxy,
    RegistryServer,
    fetch_token,
    make_layer,
    push_image,
    skopeo_inspect,
)

pytestmark = pytest.mark.integration


def _pm() -> CibPluginManager:
    """Only the builtin transport: credentials come from the test, never from this machine."""
    pm = CibPluginManager(autoload=False)
    pm.register(cib_plugins.http_transport, name="http-transport")
    return pm


def _client(server: RegistryServer | FaultProxy, repo: str, auth: Any = "server",
            **kw: Any) -> RegistryClient:
    if auth == "server":
        auth = server.auth if isinstance(server, RegistryServer) else None
    return RegistryClient(server.host, repo, auth, pm=_pm(), **kw)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _unique(prefix: str) -> str:
    return f"{prefix}/{os.getpid()}-{time.monotonic_ns()}"


def _oci_manifest(config: bytes, layers: list[bytes], **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": _sha(b), "size": len(b)} for b in layers],
    }
    doc.update(extra)
    return doc


# -- the method table, once per auth mode -----------------------------------------------------

def test_method_table(cib_any_registry: RegistryServer) -> None:
    repo = _unique("table/app")
    client = _client(cib_any_registry, repo, chunk_size=1 << 20)

    # upload: bytes (monolithic), then the same content chunked from a generator
    layer = make_layer({"hello.txt": "hi\n", "big.bin": os.urandom(2_500_000)})
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    done = client.upload(layer)
    assert (done.status, done.digest, done.size) == (201, _sha(layer), len(layer))
    assert client.blob_exists(done.digest)
    skipped = client.upload(layer)
    assert skipped.status == 200  # present: not sent again
    pieces = (layer[i:i + 333_333] for i in range(0, len(layer), 333_333))
    chunked = client.upload(pieces, force=True)
    assert (chunked.digest, chunked.size) == (_sha(layer), len(layer))
    assert client.upload(config).digest == _sha(config)

    # blob: bytes and a verified stream, with progress
    assert client.blob(done.digest) == layer
    seen: list[tuple[str, int, int | None]] = []
    with client.blob(done.digest, stream=True, progress=lambda d, n, t: seen.append((d, n, t))) as s:
        assert s.read() == layer
    assert seen[-1] == (done.digest, len(layer), len(layer))

    # manifests
    manifest = _oci_manifest(config, [layer])
    pushed = client.manifest_upload("v1", manifest)
    assert pushed.status == 201
    raw, media_type, digest = client.manifest_raw("v1")
    assert (media_type, digest) == (mt.OCI_MANIFEST, pushed.digest)
    assert raw == skopeo_inspect(cib_any_registry.ref(repo, "v1"), raw=True, creds=cib_any_registry.creds_arg())
    assert client.manifest("v1") == manifest
    assert client.manifest(digest) == manifest
    assert client.manifest_exists("v1") and client.manifest_exists(digest)
    assert not client.manifest_exists("nope")
    with pytest.raises(NotFound) as missing:
        client.manifest("nope")
    assert missing.value.status == 404 and "MANIFEST_UNKNOWN" in missing.value.codes
    assert repo in str(missing.value) and cib_any_registry.host in str(missing.value)

    # exact bytes survive; untagged upload by digest; media type from the document
    docker_manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP, "digest": _sha(layer), "size": len(layer)}],
    }, indent=7).encode()
    untagged = client.manifest_upload(None, docker_manifest)
    assert untagged.digest == _sha(docker_manifest)
    assert client.manifest_raw(untagged.digest) == (docker_manifest, mt.DOCKER_MANIFEST, untagged.digest)
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": pushed.digest, "size": len(raw),
         "platform": {"architecture": "amd64", "os": "linux"}}]}
    client.manifest_upload("multi", index)
    assert client.manifest_raw("multi")[1] == mt.OCI_INDEX

    # tags and catalog
    assert sorted(client.tags()) == ["multi", "v1"]
    assert repo in client.catalog()

    # referrers: distribution 2.8 has no API, so the tag scheme; empty when neither
    assert client.referrers(pushed.digest) == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                               "manifests": []}
    empty = b"{}"
    client.upload(empty)
    sig = _oci_manifest(empty, [], artifactType="application/vnd.example.sig",
                        subject={"mediaType": mt.OCI_MANIFEST, "digest": pushed.digest, "size": len(raw)})
    sig["config"]["mediaType"] = mt.OCI_EMPTY
    sig_pushed = client.manifest_upload(None, sig)
    fallback = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": sig_pushed.digest, "size": sig_pushed.size,
         "artifactType": "application/vnd.example.sig"}]}
    client.manifest_upload(pushed.digest.replace(":", "-"), fallback)
    assert client.referrers(pushed.digest)["manifests"] == fallback["manifests"]
    sigs = client.referrers(pushed.digest, "application/vnd.example.sig")
    assert sigs["manifests"] == fallback["manifests"]
    assert client.referrers(pushed.digest, "application/other")["manifests"] == []

    # mount: True between repositories of one registry, False when declined
    other = _client(cib_any_registry, repo + "-mounted")
    assert not other.blob_exists(done.digest)
    assert other.mount(done.digest, repo) is True
    assert other.blob(done.digest) == layer
    assert other.mount(_sha(b"nothing like this"), repo) is False
    third = _client(cib_any_registry, repo + "-declined")
    assert third.mount(_sha(config), _unique("table/absent")) is False
    assert not third.blob_exists(_sha(config))

    # delete
    client.delete_manifest("multi")
    assert not client.manifest_exists("multi")
    client.delete_manifest(untagged.digest)
    assert not client.manifest_exists(untagged.digest)
    other.delete_blob(done.digest)
    assert not other.blob_exists(done.digest)
    with pytest.raises(NotFound):
        other.blob(done.digest)
    with pytest.raises(InvalidReference):
        client.blob("sha256:short")


def test_pushed_by_an_independent_client_reads_back(cib_any_registry: RegistryServer) -> None:
    repo = _unique("oracle/img")
    layer = make_layer({"a": "b"})
    image = push_image(cib_any_registry, repo, "t", [layer], {"architecture": "amd64", "os": "linux"}, oci=False)
    client = _client(cib_any_registry, repo)
    raw, media_type, digest = client.manifest_raw("t")
    assert (raw, media_type, digest) == (image.raw, mt.DOCKER_MANIFEST, image.digest)
    assert client.blob(image.config_digest) == image.config_raw
    assert client.blob(_sha(layer)) == layer


# -- pagination, faults and resumption -----------------------------------------------------------

def test_tags_and_catalog_follow_link_pagination(cib_registry: RegistryServer,
                                                 cib_fault_proxy: Callable[..., FaultProxy]) -> None:
    repo = _unique("paged/app")
    direct = _client(cib_registry, repo)
    config = b'{"n":1}'
    direct.upload(config)
    wanted = sorted(f"t{i}" for i in range(7))
    for tag in wanted:
        direct.manifest_upload(tag, _oci_manifest(config, []))
    proxy = cib_fault_proxy(cib_registry, paginate=2)
    client = _client(proxy, repo)
    assert sorted(client.tags()) == wanted
    assert proxy.pages_served == 4  # 2 + 2 + 2 + 1
    proxy.reset_counts()
    catalog = client.catalog()
    assert repo in catalog and len(catalog) == len(set(catalog))
    assert proxy.pages_served >= 2
    assert sorted(direct.catalog()) == sorted(catalog)


def test_retries_temporary_answers(cib_registry: RegistryServer,
                                   cib_fault_proxy: Callable[..., FaultProxy]) -> None:
    repo = _unique("retry/app")
    proxy = cib_fault_proxy(cib_registry, methods=["GET", "HEAD"])
    data = os.urandom(10_000)
    _client(cib_registry, repo).upload(data)
    client = _client(proxy, repo, options=TransportOptions(retry=RetryPolicy(base=0.01)))
    client.blob_exists(_sha(data))  # ping first, so the faults hit the blob requests
    proxy.inject_next("503")
    proxy.inject_next("reset")
    proxy.inject_next("429")  # Retry-After: 1
    started = time.monotonic()
    assert client.blob(_sha(data)) == data
    assert time.monotonic() - started >= 0.9
    assert proxy.counts == {"503": 1, "reset": 1, "429": 1}
    proxy.inject_next("500", 10)
    with pytest.raises(RegistryError) as err:
        client.blob(_sha(data))
    assert err.value.status == 500 and err.value.temporary


def test_chunked_upload_resumes_after_a_dropped_patch(cib_registry: RegistryServer,
                                                      cib_fault_proxy: Callable[..., FaultProxy]) -> None:
    repo = _unique("resume/app")
    proxy = cib_fault_proxy(cib_registry, methods=["PATCH"])
    client = _client(proxy, repo, chunk_size=1 << 20)
    data = os.urandom(4 * (1 << 20) + 12345)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(data), 1 << 18):
            if i == 2 << 20:
                proxy.inject_next("reset")  # the PATCH of the third chunk is cut off
            yield data[i:i + (1 << 18)]

    done = client.upload(pieces())
    assert (done.digest, done.size) == (_sha(data), len(data))
    assert proxy.counts == {"reset": 1}
    assert _client(cib_registry, repo).blob(done.digest) == data
    # the first chunk, too
    proxy.inject_next("reset")
    again = client.upload(iter([data]), force=True)
    assert again.digest == _sha(data) and proxy.counts == {"reset": 2}


def test_upload_whose_session_was_lost(cib_registry: RegistryServer, tmp_path: Path,
                                       cib_fault_proxy: Callable[..., FaultProxy]) -> None:
    """The registry processed a PATCH whose answer was lost: distribution then cancels the
    session (its state token is stale), so a file starts over and a stream says so."""
    proxy = cib_fault_proxy(cib_registry, methods=["PATCH"])
    client = _client(proxy, _unique("resume/lost"), chunk_size=1 << 20)
    data = os.urandom(3 * (1 << 20))
    path = tmp_path / "blob"
    path.write_bytes(data)
    proxy.inject_next("lost_response")
    with path.open("rb") as f:
        done = client.upload(f)
    assert done.digest == _sha(data) and proxy.counts == {"lost_response": 1}
    assert client.blob(done.digest) == data
    proxy.inject_next("lost_response")
    with pytest.raises(RegistryError, match="upload it again") as err:
        client.upload(iter([os.urandom(3 << 20)]))
    assert err.value.temporary


def test_upload_stream_sends_one_patch(cib_any_registry: RegistryServer,
                                      cib_fault_proxy: Callable[..., FaultProxy]) -> None:
    """``upload_stream``: pieces of unknown digest in one chunked-encoded PATCH, then the PUT
    with the digest hashed on the way; on every auth mode, through a recording proxy."""
    proxy = cib_fault_proxy(cib_any_registry)
    repo = _unique("stream/one")
    client = _client(proxy, repo, auth=cib_any_registry.auth)
    pieces = [os.urandom(n) for n in (1, 0, 300_000, 2 << 20, 17)]
    seen: list[int] = []
    done = client.upload_stream(iter(pieces), progress=lambda _d, sent, _t: seen.append(sent))
    data = b"".join(pieces)
    assert (done.digest, done.size) == (_sha(data), len(data))
    assert client.blob(done.digest) == data
    assert seen[-1] == len(data) and seen == sorted(seen)
    uploads = [(m, {k.lower(): v for k, v in h.items()}) for m, p, h in proxy.seen
               if "/blobs/uploads/" in p]
    assert [m for m, _ in uploads] == ["POST", "PATCH", "PUT"]
    assert uploads[1][1].get("transfer-encoding") == "chunked"
    assert "content-range" not in uploads[1][1]


def test_upload_stream_that_breaks_off_is_temporary_and_cancelled(
        cib_registry: RegistryServer, cib_fault_proxy: Callable[..., FaultProxy]) -> None:
    """It cannot resume: a failed PATCH cancels the session (DELETE) and raises a temporary
    error for the producer to start over; a piece that is not bytes is a clear error."""
    proxy = cib_fault_proxy(cib_registry, methods=["PATCH"])
    client = _client(proxy, _unique("stream/broken"))
    proxy.inject_next("503")
    with pytest.raises(RegistryError, match="streamed upload .* broke off") as err:
        client.upload_stream(iter([os.urandom(1 << 20)]))
    assert err.value.temporary
    methods = [m for m, p, _ in proxy.seen if "/blobs/uploads/" in p]
    assert methods == ["POST", "PATCH", "DELETE"]
    with pytest.raises(ConfigurationError, match="must yield bytes, not str"):
        client.upload_stream(iter(["text"]))  # type: ignore[list-item]
    # The PATCH's headers went out on the POST's connection and its body never did, so cib
    # sent the DELETE on a new connection without waiting: the proxy's two handler threads
    # may record them in either order.
    again = [m for m, p, _ in proxy.seen if "/blobs/uploads/" in p][3:]
    assert again[0] == "POST" and sorted(again[1:]) == ["DELETE", "PATCH"], again


@pytest.mark.slow
def test_large_generator_upload_keeps_memory_bounded(cib_registry: RegistryServer, tmp_path: Path) -> None:
    script = tmp_path / "big_upload.py"
    script.write_text(
        "import hashlib, json, os, sys\n"
        "import cib_plugins.http_transport as ht\n"
        "from cib_core.plugins import CibPluginManager\n"
        "from cib_core.remote.client import RegistryClient\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key + ':'):\n"
        "            return int(line.split()[1]) * 1024\n"
        "pm = CibPluginManager(autoload=False); pm.register(ht, name='http-transport')\n"
        "client = RegistryClient(sys.argv[1], 'big/blob', pm=pm)\n"
        "client.upload(iter([os.urandom(1 << 20)]))  # warm up: sessions, imports\n"
        "block = os.urandom(1 << 20)\n"
        "total = 256 << 20\n"
        "def gen():\n"
        "    for i in range(total >> 20):\n"
        "        yield i.to_bytes(8, 'big') + block[8:]\n"
        "h = hashlib.sha256()\n"
        "for piece in gen():\n"
        "    h.update(piece)\n"
        "base = status('VmRSS')\n"
        "result = client.upload(gen())\n"
        "peak = status('VmHWM')\n"
        "print(json.dumps({'growth': peak - base, 'base': base, 'peak': peak, 'size': result.size,\n"
        "                  'ok': result.digest == 'sha256:' + h.hexdigest()}))\n"
        "client.delete_blob(result.digest)\n"
    )
    out = subprocess.run([sys.executable, str(script), cib_registry.host], capture_output=True,
                         timeout=600, check=True)
    report = json.loads(out.stdout.decode().strip().splitlines()[-1])
    print(f"256 MiB generator upload: peak RSS growth {report['growth'] / 2**20:.1f} MiB "
          f"(base {report['base'] / 2**20:.1f} MiB, peak {report['peak'] / 2**20:.1f} MiB)")
    assert report["ok"] and report["size"] == 256 << 20
    assert report["growth"] < 64 << 20


def test_copy_blob_between_registries_streams(cib_registry: RegistryServer,
                                              cib_second_registry: RegistryServer) -> None:
    data = os.urandom(5 * (1 << 20) + 7)
    src = _client(cib_registry, _unique("copy/src"))
    src.upload(data)
    dst = _client(cib_second_registry, _unique("copy/dst"), chunk_size=1 << 20)
    result = dst_result = src.copy_blob_to(dst, _sha(data), len(data))
    assert (result.digest, dst_result.size) == (_sha(data), len(data))
    assert dst.blob(_sha(data)) == data
    assert src.copy_blob_to(dst, _sha(data), len(data)).status == 200  # present: skipped


# -- auth ---------------------------------------------------------------------------------------

def test_token_scopes_are_least_privilege(cib_token_registry: RegistryServer) -> None:
    ts = cib_token_registry.token_server
    assert ts is not None
    src_repo, repo = _unique("scope/src"), _unique("scope/dst")
    data = os.urandom(1000)
    _client(cib_token_registry, src_repo).upload(data)
    ts.clear_requests()
    reader = _client(cib_token_registry, repo)
    assert not reader.blob_exists(_sha(data))
    assert not reader.manifest_exists("latest")
    with pytest.raises(NotFound):
        reader.tags()
    reads = ts.requests
    assert reads and all(r.scopes == (f"repository:{repo}:pull",) for r in reads)
    assert len(reads) == 1  # one token, cached across the reads
    ts.clear_requests()
    writer = _client(cib_token_registry, repo)
    assert writer.mount(_sha(data), src_repo) is True
    (mount_req,) = ts.requests
    assert sorted(mount_req.scopes) == sorted([f"repository:{repo}:pull,push",
                                               f"repository:{src_repo}:pull"])
    assert mount_req.basic_auth and mount_req.username == cib_token_registry.username
    ts.clear_requests()
    writer.upload(os.urandom(10))
    assert all(r.scopes == (f"repository:{repo}:pull,push",) for r in ts.requests)
    ts.clear_requests()
    assert writer.blob_exists(_sha(data))  # the push token covers the read
    assert ts.requests == []


def test_insufficient_scope_reauthenticates_once(cib_token_registry: RegistryServer) -> None:
    ts = cib_token_registry.token_server
    assert ts is not None
    repo = _unique("scope/reauth")
    client = _client(cib_token_registry, repo)
    ts.clear_requests()
    # a push request signed with a pull-only token: the registry answers 401 insufficient_scope
    resp = client.send("POST", client.path("blobs", "uploads/"), scope=client.scoped("pull"))
    assert resp.status_code == 202
    assert [r.status_code for r in resp.history] == [401]
    scopes = [r.scopes for r in ts.requests]
    assert scopes == [(f"repository:{repo}:pull",), (f"repository:{repo}:pull,push",)]
    client.uploads.cancel(resp.headers["Location"], client.scoped("push"))


def test_invalid_cached_token_is_replaced(cib_token_registry: RegistryServer) -> None:
    ts = cib_token_registry.token_server
    assert ts is not None
    repo = _unique("scope/stale")
    client = _client(cib_token_registry, repo)
    scopes = (f"repository:{repo}:pull",)
    client.transport.token_cache.put(f"user:{cib_token_registry.username}", scopes, "not-a-jwt", 300)
    ts.clear_requests()
    assert not client.blob_exists(_sha(b"stale"))  # 401 invalid_token, then a fresh token
    assert [r.scopes for r in ts.requests] == [scopes]
    assert client.transport.token_cache.get(f"user:{cib_token_registry.username}", scopes) != "not-a-jwt"


def test_insufficient_permission_is_an_authorization_error(cib_token_registry: RegistryServer) -> None:
    ts = cib_token_registry.token_server
    assert ts is not None
    ts.add_user("reader", "reader-secret-123", actions=("pull",))
    client = _client(cib_token_registry, _unique("scope/ro"),
                     {"Username": "reader", "Secret": "reader-secret-123"})
    assert not client.blob_exists(_sha(b"x"))
    with pytest.raises(AuthorizationError) as err:
        client.upload(b"x")
    assert err.value.status == 401 and client.repository in str(err.value)


def test_wrong_credentials(cib_basic_registry: RegistryServer, cib_token_registry: RegistryServer) -> None:
    for server in (cib_basic_registry, cib_token_registry):
        client = _client(server, "any/repo", {"Username": server.username, "Secret": "wrong-password-xyz"})
        with pytest.raises(AuthenticationError) as err:
            client.manifest("latest")
        assert err.value.status == 401
        assert server.host in str(err.value) and "any/repo" in str(err.value)
        assert "wrong-password-xyz" not in str(err.value)
        anonymous = _client(server, "any/repo", None)
        with pytest.raises(AuthenticationError) as err:
            anonymous.manifest("latest")
        assert "cib auth login" in str(err.value)


def test_identity_token_uses_the_oauth2_form_and_token_options_go_straight(
        cib_token_registry: RegistryServer) -> None:
    ts = cib_token_registry.token_server
    assert ts is not None
    repo = _unique("oauth/app")
    _client(cib_token_registry, repo).upload(b"oauth-blob")
    grant = requests.post(ts.realm, data={
        "grant_type": "password", "username": cib_token_registry.username,
        "password": cib_token_registry.password, "service": ts.service, "client_id": "test",
        "access_type": "offline"}, timeout=10)
    refresh = grant.json()["refresh_token"]
    ts.clear_requests()
    client = _client(cib_token_registry, repo, Credentials(username=IDENTITY_TOKEN_USER, secret=refresh))
    assert client.blob(_sha(b"oauth-blob")) == b"oauth-blob"
    (req,) = ts.requests
    assert (req.method, req.grant_type, req.status, req.client_id) == ("POST", "refresh_token", 200, "cib")
    assert req.scopes == (f"repository:{repo}:pull",)
    # a bearer token given directly is used as is, with no exchange
    token = fetch_token(cib_token_registry, [f"repository:{repo}:pull"])
    ts.clear_requests()
    direct = _client(cib_token_registry, repo, {"token": token})
    assert direct.blob(_sha(b"oauth-blob")) == b"oauth-blob"
    assert ts.requests == []


def test_auth_function_and_plugin_chain(cib_basic_registry: RegistryServer) -> None:
    class Provider:
        @hookimpl
        def cib_credentials(self, registry: str, repository: str | None) -> Credentials | None:
            if registry != cib_basic_registry.host:
                return None
            return Credentials(cib_basic_registry.username, cib_basic_registry.password)

    pm = _pm()
    pm.register_plugin(Provider(), "test-provider")
    ref = f"{cib_basic_registry.host}/chain/app:1"
    assert resolve_auth(ref, pm=pm) == Credentials(cib_basic_registry.username, cib_basic_registry.password)
    explicit = {cib_basic_registry.host: {"username": "other", "secret": "s"}}
    assert resolve_auth(ref, "push", explicit, pm=pm) == Credentials("other", "s")
    assert resolve_auth("127.0.0.1:1/x/y", pm=pm) == Credentials()
    assert resolve_auth("oci:/tmp/layout", pm=pm) == Credentials()
    client = RegistryClient(cib_basic_registry.host, _unique("chain/app"), pm=pm)
    client.upload(b"via plugin")
    assert client.blob_exists(_sha(b"via plugin"))


def test_one_ping_and_token_per_registry_across_clients(cib_token_registry: RegistryServer) -> None:
    ts = cib_token_registry.token_server
    assert ts is not None
    pool = TransportPool(pm=_pm())
    repo = _unique("pool/app")
    ts.clear_requests()
    a = RegistryClient(cib_token_registry.host, repo, cib_token_registry.auth, pool=pool)
    b = RegistryClient(cib_token_registry.host, repo, cib_token_registry.auth, pool=pool)
    assert a.transport is b.transport
    threads = [threading.Thread(target=c.blob_exists, args=(_sha(b"z"),)) for c in (a, b) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ts.requests) == 1
    pool.close()


# -- a registry that redirects blobs to storage on another host ----------------------------------

class _Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.seen: list[dict[str, str]] = []
        self.routes: dict[str, Callable[[_Handler], None]] = {}
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Recorder

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None:
            self.reply(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"unknown"}]}')
        else:
            route(self)

    do_HEAD = do_GET

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


SECRET = "s3cret-pass-word"


@pytest.fixture
def fake_registry() -> Iterator[tuple[_Recorder, _Recorder]]:
    """A registry (Basic auth) that 307s blob GETs to a 'storage' server on another port."""
    reg, storage = _Recorder(_Handler), _Recorder(_Handler)
    good = "Basic " + base64.b64encode(f"u:{SECRET}".encode()).decode()

    def guarded(inner: Callable[[_Handler], None]) -> Callable[[_Handler], None]:
        def route(h: _Handler) -> None:
            if h.headers.get("Authorization") != good:
                h.reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                        {"WWW-Authenticate": 'Basic realm="fake"'})
            else:
                inner(h)
        return route

    reg.routes["/v2/"] = guarded(lambda h: h.reply(200, b"{}"))
    yield reg, storage
    for s in (reg, storage):
        s.shutdown()
        s.server_close()


def _blob_behind_a_redirect(reg: _Recorder, storage: _Recorder, data: bytes) -> tuple[str, str]:
    """Serve ``data`` as blob ``app@digest`` of ``reg``: Basic-authenticated GETs get a 307 to
    ``storage`` (a pre-signed URL); returns (digest, the good Authorization value)."""
    digest = _sha(data)
    good = "Basic " + base64.b64encode(f"u:{SECRET}".encode()).decode()

    def redirect(h: _Handler) -> None:
        if h.headers.get("Authorization") != good:
            h.reply(401, b"{}", {"WWW-Authenticate": 'Basic realm="fake"'})
        else:
            h.reply(307, b"", {"Location": f"http://{storage.host}/bucket/blob?X-Amz-Signature=sig"})

    reg.routes[f"/v2/app/blobs/{digest}"] = redirect
    storage.routes["/bucket/blob"] = lambda h: h.reply(200, data, ctype="application/octet-stream")
    return digest, good


def test_redirect_to_storage_never_carries_authorization(
        fake_registry: tuple[_Recorder, _Recorder]) -> None:
    reg, storage = fake_registry
    data = os.urandom(3 * (1 << 20))
    digest, good = _blob_behind_a_redirect(reg, storage, data)
    client = RegistryClient(reg.host, "app", {"Username": "u", "Secret": SECRET}, pm=_pm())
    assert client.blob(digest) == data
    assert any(s.get("authorization") == good for s in reg.seen)
    assert all(s["user-agent"].startswith("cib/") for s in reg.seen + storage.seen)
    assert storage.seen and all("authorization" not in s for s in storage.seen)
    # storage that challenges does not get our credentials either: the 401 surfaces
    storage.routes["/bucket/blob"] = lambda h: h.reply(401, b"denied",
                                                       {"WWW-Authenticate": 'Basic realm="s3"'})
    storage.seen.clear()
    with pytest.raises(AuthenticationError):
        client.blob(digest)
    assert len(storage.seen) == 1 and "authorization" not in storage.seen[0]


def test_cli_redirect_to_storage_never_carries_authorization(
        fake_registry: tuple[_Recorder, _Recorder], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same through `cib -vv blob`, with the credentials from docker's config.json: the
    bytes arrive, storage never sees Authorization, and -vv output shows no secret."""
    from click.testing import CliRunner

    from cib_core.cli.app import cli

    reg, storage = fake_registry
    data = os.urandom(1 << 20)
    digest, good = _blob_behind_a_redirect(reg, storage, data)
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps(
        {"auths": {reg.host: {"auth": base64.b64encode(f"u:{SECRET}".encode()).decode()}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    result = CliRunner().invoke(cli, ["-vv", "blob", f"{reg.host}/app@{digest}"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == data
    assert storage.seen and all("authorization" not in s for s in storage.seen)
    assert any(s.get("authorization") == good for s in reg.seen)
    assert "307" in result.stderr and storage.host in result.stderr  # -vv shows the redirect
    for secret in (SECRET, good, good.split()[1], "X-Amz-Signature=sig"):
        assert secret not in result.stderr


def test_bad_answers(fake_registry: tuple[_Recorder, _Recorder]) -> None:
    reg, _ = fake_registry
    good = "Basic " + base64.b64encode(f"u:{SECRET}".encode()).decode()
    data = os.urandom(3 * (1 << 20) + 5)
    claimed = _sha(b"something else")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}).encode()

    def authed(fn: Callable[[_Handler], None]) -> Callable[[_Handler], None]:
        def route(h: _Handler) -> None:
            if h.headers.get("Authorization") != good:
                h.reply(401, b"{}", {"WWW-Authenticate": 'Basic realm="fake"'})
            else:
                fn(h)
        return route

    reg.routes[f"/v2/app/blobs/{claimed}"] = authed(
        lambda h: h.reply(200, data, ctype="application/octet-stream"))
    reg.routes["/v2/app/manifests/wrongdigest"] = authed(lambda h: h.reply(
        200, manifest, {"Docker-Content-Digest": claimed}, ctype=mt.OCI_MANIFEST))
    reg.routes[f"/v2/app/manifests/{claimed}"] = authed(
        lambda h: h.reply(200, manifest, ctype=mt.OCI_MANIFEST))
    reg.routes["/v2/app/manifests/huge"] = authed(lambda h: h.reply(
        200, b"{}", {"Content-Length": str(5 << 20)}, ctype=mt.OCI_MANIFEST))
    reg.routes["/v2/app/tags/list"] = authed(lambda h: h.reply(400, b"<html><body>Bad gateway</body></html>",
                                                               ctype="text/html"))
    reg.routes["/v2/_catalog"] = authed(lambda h: h.reply(400, b"not json at all"))
    client = RegistryClient(reg.host, "app", {"Username": "u", "Secret": SECRET}, pm=_pm())

    # a blob whose bytes do not match: the data before the last piece, then DigestMismatch
    got = bytearray()
    with pytest.raises(DigestMismatch), client.blob(claimed, stream=True) as stream:
        while piece := stream.read(65536):
            got += piece
    assert len(got) < len(data) and bytes(got) == data[:len(got)]
    with pytest.raises(DigestMismatch):
        client.blob(claimed)
    with pytest.raises(DigestMismatch):
        client.manifest_raw("wrongdigest")
    with pytest.raises(DigestMismatch):
        client.manifest_raw(claimed)
    with pytest.raises(RegistryError, match="limit"):
        client.manifest_raw("huge")
    with pytest.raises(RegistryError, match="HTML page"):
        client.tags()
    with pytest.raises(RegistryError, match="not valid JSON"):
        client.catalog()


def test_scheme_rules(fake_registry: tuple[_Recorder, _Recorder], monkeypatch: pytest.MonkeyPatch,
                      tmp_path: Path) -> None:
    """Loopback is plain HTTP; a host named insecure tries HTTPS (unverified) and falls back to
    HTTP; any other host is HTTPS with verification, honouring SSL_CERT_FILE."""
    import cib_core.remote.transport as transport_module
    from cib_core.remote.transport import Transport

    reg, _ = fake_registry
    assert Transport(reg.host, pm=_pm()).base_url == f"http://{reg.host}"
    monkeypatch.setattr(transport_module, "is_loopback_host", lambda host: False)
    insecure = Transport(reg.host, insecure=True, pm=_pm())
    assert insecure.verify is False
    assert insecure.base_url == f"http://{reg.host}"  # the TLS handshake failed: plain HTTP
    secure = Transport(reg.host, pm=_pm())
    assert secure.base_url == f"https://{reg.host}" and secure.verify is True
    with pytest.raises(RegistryError, match=f"TLS with registry {reg.host} failed") as err:
        RegistryClient(reg.host, "app", pm=_pm(), transport=secure).manifest("x")
    assert err.value.status is None and "insecure" in str(err.value)
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not really a bundle")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert Transport(reg.host, pm=_pm()).verify == str(bundle)
    assert Transport(reg.host, pm=_pm(), options=TransportOptions(ca_bundle="/x.pem")).verify == "/x.pem"


# -- no secret anywhere -------------------------------------------------------------------------

def test_no_secret_in_messages_or_debug_logs(cib_basic_registry: RegistryServer, cib_token_registry: RegistryServer,
                                             fake_registry: tuple[_Recorder, _Recorder],
                                             monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    ts = cib_token_registry.token_server
    assert ts is not None
    issued: list[str] = []
    original = ts.issue

    def recording_issue(*args: Any, **kwargs: Any) -> str:
        token = original(*args, **kwargs)
        issued.append(token)
        return token

    monkeypatch.setattr(ts, "issue", recording_issue)
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []

    def attempt(fn: Callable[[], object]) -> None:
        try:
            fn()
        except CibError as exc:
            messages.append(str(exc))
            messages.append(repr(exc))

    for server in (cib_basic_registry, cib_token_registry):
        repo = _unique("secrets/app")
        good = _client(server, repo)
        attempt(lambda: good.upload(os.urandom(3000)))
        attempt(lambda: good.manifest("missing"))
        attempt(lambda: good.blob(_sha(b"missing")))
        attempt(lambda: good.tags())
        attempt(lambda: good.catalog())
        messages.append(repr(good))
        bad = _client(server, repo, {"Username": server.username, "Secret": "not-" + str(server.password)})
        attempt(lambda: bad.manifest("latest"))
        attempt(lambda: bad.upload(b"x"))
    attempt(lambda: _client(cib_token_registry, "secrets/x", {"token": "tok-" + str(cib_token_registry.password)})
            .manifest("latest"))
    reg, _ = fake_registry
    attempt(lambda: RegistryClient(reg.host, "app", {"Username": "u", "Secret": SECRET}, pm=_pm())
            .blob(_sha(b"q")))
    assert issued, "the token flow ran"
    assert len(messages) >= 10
    texts = messages + [r.getMessage() for r in caplog.records]
    assert any("Authorization" in t for t in texts)  # the headers were logged, redacted
    secrets_ = [cib_basic_registry.password, cib_token_registry.password, SECRET, *issued]
    secrets_ += [base64.b64encode(f"{s.username}:{s.password}".encode()).decode()
                 for s in (cib_basic_registry, cib_token_registry)]
    for secret in secrets_:
        assert secret
        for text in texts:
            assert secret not in text


def test_unreachable_registry_is_a_temporary_error_after_bounded_retries() -> None:
    sleeps: list[float] = []
    from cib_core.remote.transport import Transport

    policy = RetryPolicy(retries=2, base=0.01, sleep=sleeps.append)
    transport = Transport("127.0.0.1:1", pm=_pm(), options=TransportOptions(retry=policy))
    with pytest.raises(RegistryError, match="cannot reach registry 127.0.0.1:1") as err:
        RegistryClient("127.0.0.1:1", "x/y", pm=_pm(), transport=transport).manifest("latest")
    assert err.value.status is None and err.value.temporary
    assert len(sleeps) == 2 and all(0 <= s <= 0.02 for s in sleeps)


def test_chunk_size_honours_oci_chunk_min_length(cib_registry: RegistryServer) -> None:
    """A registry that asks for chunks of at least N bytes (OCI-Chunk-Min-Length, added by the
    proxy since distribution 2.8 does not send it) gets PATCHes of at least N, the last aside."""
    minimum = 3 << 20
    data = os.urandom(10 << 20)
    with FaultProxy(cib_registry, add_headers={"POST": {"OCI-Chunk-Min-Length": str(minimum)}}) as proxy:
        client = RegistryClient(proxy.host, "chunks/min", pm=_pm(), chunk_size=1 << 20)
        result = client.upload(iter([data[i:i + 65536] for i in range(0, len(data), 65536)]))
        ranges = [h["content-range"] for m, _, h in proxy.seen if m == "PATCH"]
    assert result.digest == _sha(data)
    sizes = [int(end) - int(start) + 1 for start, end in (r.split("-") for r in ranges)]
    assert sum(sizes) == len(data) and len(sizes) == 4
    assert all(size >= minimum for size in sizes[:-1])
    assert RegistryClient(cib_registry.host, "chunks/min", pm=_pm()).blob(result.digest) == data
