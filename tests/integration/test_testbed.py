"""The test bed itself, over real HTTP: registries in three modes, the token server, the base
images (checked with skopeo and umoci), the fault proxy and the paginating proxy."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import time
import urllib.parse

import pytest
import requests

from cib_core.testing import (
    FaultProxy,
    PaginatingProxy,
    PushedImage,
    RegistryServer,
    fetch_token,
    make_layer,
    pull_to_oci,
    push_base_image,
    push_image,
    skopeo_copy,
    skopeo_inspect,
    umoci_unpack,
)

pytestmark = pytest.mark.integration

TIMEOUT = 30


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(url: str, repo: str, data: bytes, headers: dict[str, str]) -> requests.Response:
    """Monolithic upload; returns the final response (or the first failing one)."""
    started = requests.post(f"{url}/v2/{repo}/blobs/uploads/", headers=headers, timeout=TIMEOUT)
    if started.status_code != 202:
        return started
    location = urllib.parse.urljoin(url + "/", started.headers["Location"])
    sep = "&" if "?" in location else "?"
    return requests.put(f"{location}{sep}digest={sha256(data)}", data=data,
                        headers={**headers, "Content-Type": "application/octet-stream"},
                        timeout=TIMEOUT)


def challenge_params(header: str) -> dict[str, str]:
    scheme, _, rest = header.partition(" ")
    params = {"scheme": scheme}
    for part in rest.split('",'):
        key, _, value = part.partition("=")
        params[key.strip()] = value.strip().strip('"')
    return params


# -- the three registry modes -----------------------------------------------------------------

def test_open_registry_answers_v2(cib_registry: RegistryServer) -> None:
    response = requests.get(f"{cib_registry.url}/v2/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert cib_registry.mode == "open" and cib_registry.auth is None and cib_registry.creds_arg() is None
    assert cib_registry.host.startswith("127.0.0.1:") and cib_registry.storage.is_dir()


def test_basic_registry_challenges_then_accepts_credentials(cib_basic_registry: RegistryServer) -> None:
    anonymous = requests.get(f"{cib_basic_registry.url}/v2/", timeout=TIMEOUT)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith('Basic realm="')
    assert cib_basic_registry.username and cib_basic_registry.password
    assert requests.get(f"{cib_basic_registry.url}/v2/", timeout=TIMEOUT,
                        auth=(cib_basic_registry.username, cib_basic_registry.password)).status_code == 200
    assert requests.get(f"{cib_basic_registry.url}/v2/", timeout=TIMEOUT,
                        auth=(cib_basic_registry.username, "wrong")).status_code == 401
    assert cib_basic_registry.auth == {"Username": cib_basic_registry.username,
                                   "Secret": cib_basic_registry.password}
    assert cib_basic_registry.creds_arg() == f"{cib_basic_registry.username}:{cib_basic_registry.password}"
    assert cib_basic_registry.password not in repr(cib_basic_registry)


def test_token_registry_challenges_with_bearer(cib_token_registry: RegistryServer) -> None:
    server = cib_token_registry.token_server
    assert server is not None
    response = requests.get(f"{cib_token_registry.url}/v2/", timeout=TIMEOUT)
    assert response.status_code == 401
    params = challenge_params(response.headers["WWW-Authenticate"])
    assert params["scheme"] == "Bearer"
    assert params["realm"] == server.realm
    assert params["service"] == server.service


def test_token_server_get_with_several_scopes(cib_token_registry: RegistryServer) -> None:
    server = cib_token_registry.token_server
    assert server is not None and cib_token_registry.username and cib_token_registry.password
    server.clear_requests()
    response = requests.get(server.realm, timeout=TIMEOUT,
                            auth=(cib_token_registry.username, cib_token_registry.password),
                            params=[("service", server.service),
                                    ("scope", "repository:a/one:pull"),
                                    ("scope", "repository:b/two:pull,push"),
                                    ("scope", "registry:catalog:*")])
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"]
    claims = server.decode(body["token"])
    assert claims["aud"] == server.service and isinstance(claims["aud"], str)
    assert claims["iss"] == server.issuer and claims["sub"] == cib_token_registry.username
    assert claims["nbf"] <= time.time() < claims["exp"] and claims["jti"]
    assert claims["access"] == [
        {"type": "repository", "name": "a/one", "actions": ["pull"]},
        {"type": "repository", "name": "b/two", "actions": ["pull", "push"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]
    header = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[0] + "=="))
    assert header["alg"] == "RS256" and len(header["x5c"]) == 1
    [logged] = server.requests
    assert logged.method == "GET" and logged.basic_auth
    assert logged.scopes == ("repository:a/one:pull", "repository:b/two:pull,push",
                             "registry:catalog:*")
    # the token works against the registry: the catalog needs registry:catalog:*
    catalog = requests.get(f"{cib_token_registry.url}/v2/_catalog", timeout=TIMEOUT,
                           headers={"Authorization": f"Bearer {body['token']}"})
    assert catalog.status_code == 200 and "repositories" in catalog.json()


def test_token_server_oauth2_post_and_refresh(cib_token_registry: RegistryServer) -> None:
    server = cib_token_registry.token_server
    assert server is not None
    server.clear_requests()
    form = {"grant_type": "password", "username": cib_token_registry.username,
            "password": cib_token_registry.password, "service": server.service,
            "client_id": "cib-tests", "access_type": "offline",
            "scope": "repository:a/one:pull repository:a/two:push"}
    response = requests.post(server.realm, data=form, timeout=TIMEOUT)
    assert response.status_code == 200
    body = response.json()
    assert body["refresh_token"] and body["access_token"] == body["token"]
    assert [a["name"] for a in server.decode(body["token"])["access"]] == ["a/one", "a/two"]

    refreshed = requests.post(server.realm, timeout=TIMEOUT, data={
        "grant_type": "refresh_token", "refresh_token": body["refresh_token"],
        "service": server.service, "client_id": "cib-tests", "scope": "repository:a/one:pull"})
    assert refreshed.status_code == 200
    assert server.decode(refreshed.json()["token"])["access"] == [
        {"type": "repository", "name": "a/one", "actions": ["pull"]}]

    bad = requests.post(server.realm, timeout=TIMEOUT, data={**form, "password": "wrong"})
    assert bad.status_code == 401
    bad_refresh = requests.post(server.realm, timeout=TIMEOUT, data={
        "grant_type": "refresh_token", "refresh_token": "nope", "service": server.service})
    assert bad_refresh.status_code == 401
    assert [(r.method, r.grant_type, r.status) for r in server.requests] == [
        ("POST", "password", 200), ("POST", "refresh_token", 200),
        ("POST", "password", 401), ("POST", "refresh_token", 401)]
    assert server.requests[0].offline and server.requests[0].client_id == "cib-tests"


def test_token_push_and_pull_blob(cib_token_registry: RegistryServer) -> None:
    repo = "testbed/token-blob"
    data = os.urandom(4096)
    token = fetch_token(cib_token_registry, [f"repository:{repo}:pull,push"])
    bearer = {"Authorization": f"Bearer {token}"}
    assert push_blob(cib_token_registry.url, repo, data, bearer).status_code == 201
    pulled = requests.get(f"{cib_token_registry.url}/v2/{repo}/blobs/{sha256(data)}", headers=bearer,
                          timeout=TIMEOUT)
    assert pulled.status_code == 200 and pulled.content == data


def test_token_with_too_little_scope_is_refused(cib_token_registry: RegistryServer) -> None:
    repo = "testbed/token-scope"
    pull_only = {"Authorization": f"Bearer {fetch_token(cib_token_registry, [f'repository:{repo}:pull'])}"}
    refused = push_blob(cib_token_registry.url, repo, b"x" * 10, pull_only)
    assert refused.status_code == 401
    params = challenge_params(refused.headers["WWW-Authenticate"])
    assert params["error"] == "insufficient_scope"
    assert params["scope"].startswith(f"repository:{repo}:")

    elsewhere = fetch_token(cib_token_registry, ["repository:elsewhere:pull,push"])
    other_repo = {"Authorization": f"Bearer {elsewhere}"}
    assert push_blob(cib_token_registry.url, repo, b"y" * 10, other_repo).status_code == 401


def test_token_server_grants_only_what_a_user_may(cib_token_registry: RegistryServer) -> None:
    server = cib_token_registry.token_server
    assert server is not None
    server.add_user("reader", "reader-pass", actions=("pull",))
    server.clear_requests()
    response = requests.get(server.realm, auth=("reader", "reader-pass"), timeout=TIMEOUT,
                            params={"service": server.service, "scope": "repository:r/x:pull,push"})
    assert response.status_code == 200
    assert server.decode(response.json()["token"])["access"] == [
        {"type": "repository", "name": "r/x", "actions": ["pull"]}]
    assert server.requests[-1].granted == ("repository:r/x:pull",)
    assert server.requests[-1].scopes == ("repository:r/x:pull,push",)


def test_token_server_anonymous_pull_only_when_allowed(cib_token_registry: RegistryServer) -> None:
    server = cib_token_registry.token_server
    assert server is not None
    params = {"service": server.service, "scope": "repository:anon/x:pull,push"}
    assert requests.get(server.realm, params=params, timeout=TIMEOUT).status_code == 401
    with server.configured(anonymous_pull=True):
        response = requests.get(server.realm, params=params, timeout=TIMEOUT)
        assert response.status_code == 200
        assert server.decode(response.json()["token"])["access"] == [
            {"type": "repository", "name": "anon/x", "actions": ["pull"]}]
        assert not server.requests[-1].basic_auth
    assert not server.anonymous_pull


# -- base images, checked by skopeo and umoci -------------------------------------------------

def test_base_images_match_skopeo(cib_base_image: PushedImage, cib_oci_base_image: PushedImage) -> None:
    for image, manifest_type in ((cib_base_image, "application/vnd.docker.distribution.manifest.v2+json"),
                                 (cib_oci_base_image, "application/vnd.oci.image.manifest.v1+json")):
        raw = skopeo_inspect(image.ref, raw=True)
        assert sha256(raw) == image.digest
        assert json.loads(raw)["mediaType"] == manifest_type == image.media_type
        config = skopeo_inspect(image.ref, config=True)
        assert config["config"]["Env"] == [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
        assert config["config"]["Cmd"] == ["sh"] and config["architecture"] == "amd64"
        assert config == image.config
        assert [layer["digest"] for layer in image.layers] == skopeo_inspect(image.ref)["Layers"]
        assert len(image.layers) == 2
    # the same content: only media types differ
    assert [la["digest"] for la in cib_base_image.layers] == [la["digest"] for la in cib_oci_base_image.layers]


def test_multiarch_base_image(cib_multiarch_base_image: PushedImage) -> None:
    image = cib_multiarch_base_image
    raw = skopeo_inspect(image.ref, raw=True)
    assert sha256(raw) == image.digest
    assert json.loads(raw)["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert set(image.platforms) == {"linux/amd64", "linux/arm64/v8"}
    arm = skopeo_inspect(image.ref, config=True, arch="arm64/v8")
    assert arm["architecture"] == "arm64" and arm["variant"] == "v8"
    amd = skopeo_inspect(image.ref, config=True, arch="amd64")
    assert amd["architecture"] == "amd64"
    assert arm == image.platforms["linux/arm64/v8"].config
    own_layers = {p: img.layers[-1]["digest"] for p, img in image.platforms.items()}
    assert len(set(own_layers.values())) == 2


def test_base_image_unpacks_with_umoci(cib_base_image: PushedImage, tmp_path) -> None:
    layout = tmp_path / "layout"
    tag = pull_to_oci(cib_base_image.ref, layout)
    assert tag == "1"
    rootfs = umoci_unpack(layout, tag, tmp_path / "bundle")
    busybox = rootfs / "bin" / "busybox"
    assert busybox.is_file() and os.access(busybox, os.X_OK)
    assert os.readlink(rootfs / "bin" / "sh") == "busybox"
    assert os.readlink(rootfs / "var" / "run") == "/run"
    assert "ID=cib-test" in (rootfs / "etc" / "os-release").read_text()
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    bundle_config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert bundle_config["process"]["args"] == ["sh"]


def test_push_into_auth_registries_and_copy_across(cib_basic_registry: RegistryServer,
                                                   cib_token_registry: RegistryServer,
                                                   cib_second_registry: RegistryServer,
                                                   cib_base_image: PushedImage) -> None:
    in_basic = push_base_image(cib_basic_registry, "testbed/base", "1")
    in_token = push_base_image(cib_token_registry, "testbed/base", "1", flavour="oci")
    assert in_basic.digest == cib_base_image.digest  # same bytes, same digest
    assert sha256(skopeo_inspect(in_basic.ref, raw=True, creds=cib_basic_registry.creds_arg())) == in_basic.digest
    assert sha256(skopeo_inspect(in_token.ref, raw=True, creds=cib_token_registry.creds_arg())) == in_token.digest

    skopeo_copy(in_basic.ref, cib_second_registry.ref("testbed/copied", "1"),
                src_creds=cib_basic_registry.creds_arg())
    copied = skopeo_inspect(cib_second_registry.ref("testbed/copied", "1"), raw=True)
    assert sha256(copied) == in_basic.digest


def test_push_image_with_custom_layers(cib_registry: RegistryServer) -> None:
    layer = make_layer({"hello.txt": "hi\n"}, dirs=("data",), symlinks={"link": "hello.txt"})
    assert layer == make_layer({"hello.txt": "hi\n"}, dirs=("data",), symlinks={"link": "hello.txt"})
    pushed = push_image(cib_registry, "testbed/custom", "v1", [layer],
                        {"architecture": "amd64", "os": "linux", "config": {}}, oci=True)
    assert pushed.config["rootfs"]["diff_ids"][0].startswith("sha256:")
    assert skopeo_inspect(pushed.ref)["Layers"] == [sha256(layer)]


# -- the fault proxy --------------------------------------------------------------------------

def test_fault_proxy_status_faults_are_counted(cib_registry: RegistryServer, cib_fault_proxy) -> None:
    proxy = cib_fault_proxy(cib_registry, rate=1.0, kinds=("503",))
    statuses = [requests.get(f"{proxy.url}/v2/", timeout=TIMEOUT).status_code for _ in range(5)]
    assert statuses == [503] * 5
    assert proxy.counts == {"503": 5} and proxy.requests_seen == 5

    proxy.rate = 0.0
    assert requests.get(f"{proxy.url}/v2/", timeout=TIMEOUT).status_code == 200
    proxy.inject_next("429")
    limited = requests.get(f"{proxy.url}/v2/", timeout=TIMEOUT)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert proxy.counts == {"503": 5, "429": 1}


def test_fault_proxy_is_seeded(cib_registry: RegistryServer, cib_fault_proxy) -> None:
    def run(seed: int) -> tuple[list[int], FaultProxy]:
        proxy = cib_fault_proxy(cib_registry, rate=0.5, kinds=("500", "502", "504"), seed=seed)
        return [requests.get(f"{proxy.url}/v2/", timeout=TIMEOUT).status_code
                for _ in range(30)], proxy

    first, proxy_a = run(7)
    second, _ = run(7)
    assert first == second
    assert 0 < proxy_a.faults_injected < 30
    assert sum(1 for s in first if s != 200) == proxy_a.faults_injected
    assert sum(proxy_a.counts.values()) == proxy_a.faults_injected


def test_fault_proxy_connection_faults(cib_registry: RegistryServer, cib_base_image: PushedImage,
                                       cib_fault_proxy) -> None:
    proxy = cib_fault_proxy(cib_registry)
    layer = cib_base_image.layers[0]
    blob_url = f"{proxy.url}/v2/{cib_base_image.repository}/blobs/{layer['digest']}"

    proxy.inject_next("reset")
    with pytest.raises(requests.ConnectionError):
        requests.get(blob_url, timeout=TIMEOUT)

    for kind in ("reset_body", "truncate"):
        proxy.inject_next(kind)
        with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
            requests.get(blob_url, timeout=TIMEOUT).content  # noqa: B018

    whole = requests.get(blob_url, timeout=TIMEOUT)
    assert whole.status_code == 200 and sha256(whole.content) == layer["digest"]

    proxy.inject_next("slow")
    proxy.slow_seconds = 0.3
    started = time.monotonic()
    assert requests.get(f"{proxy.url}/v2/", timeout=TIMEOUT).status_code == 200
    assert time.monotonic() - started >= 0.3
    assert proxy.counts == {"reset": 1, "reset_body": 1, "truncate": 1, "slow": 1}


def test_fault_proxy_lost_response_was_processed(cib_registry: RegistryServer, cib_base_image: PushedImage,
                                                 cib_fault_proxy) -> None:
    proxy = cib_fault_proxy(cib_registry, methods=["PUT"])
    repo = push_base_image(cib_registry, "testbed/lost", "1").repository
    proxy.inject_next("lost_response")
    with pytest.raises(requests.ConnectionError):
        requests.put(f"{proxy.url}/v2/{repo}/manifests/lost", data=cib_base_image.raw, timeout=TIMEOUT,
                     headers={"Content-Type": cib_base_image.media_type})
    # the registry got it although the client never heard back
    assert requests.head(f"{cib_registry.url}/v2/{repo}/manifests/lost", timeout=TIMEOUT,
                         headers={"Accept": cib_base_image.media_type}).status_code == 200
    assert proxy.counts == {"lost_response": 1}


def test_fault_proxy_streams_uploads_and_rewrites_location(cib_basic_registry: RegistryServer,
                                                           cib_fault_proxy) -> None:
    proxy = cib_fault_proxy(cib_basic_registry)
    auth = (cib_basic_registry.username, cib_basic_registry.password)
    repo = "testbed/proxy-upload"
    started = requests.post(f"{proxy.url}/v2/{repo}/blobs/uploads/", auth=auth, timeout=TIMEOUT)
    assert started.status_code == 202
    location = started.headers["Location"]
    assert location.startswith(proxy.url) or location.startswith("/v2/")
    assert cib_basic_registry.host not in location

    piece = os.urandom(1 << 20)
    digest = hashlib.sha256(piece * 6).hexdigest()

    def chunks():
        for _ in range(6):
            yield piece

    patched = requests.patch(urllib.parse.urljoin(proxy.url, location), data=chunks(), auth=auth,
                             timeout=TIMEOUT, headers={"Content-Type": "application/octet-stream"})
    assert patched.status_code in (202, 204)
    assert patched.headers["Range"] == f"0-{6 * len(piece) - 1}"
    done_url = urllib.parse.urljoin(proxy.url, patched.headers["Location"])
    sep = "&" if "?" in done_url else "?"
    done = requests.put(f"{done_url}{sep}digest=sha256:{digest}", auth=auth, timeout=TIMEOUT)
    assert done.status_code == 201
    pulled = requests.get(f"{cib_basic_registry.url}/v2/{repo}/blobs/sha256:{digest}", auth=auth,
                          timeout=TIMEOUT)
    assert hashlib.sha256(pulled.content).hexdigest() == digest
    assert proxy.faults_injected == 0


def test_fault_proxy_closes_with_idle_connections(cib_registry: RegistryServer) -> None:
    proxy = FaultProxy(cib_registry).start()
    session = requests.Session()
    assert session.get(f"{proxy.url}/v2/", timeout=TIMEOUT).status_code == 200  # keep-alive open
    started = time.monotonic()
    proxy.close()
    assert time.monotonic() - started < 3
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(proxy.host.split(":")[1])),
                                                          timeout=2):
        pass
    session.close()


# -- the paginating proxy ---------------------------------------------------------------------

def test_paginating_proxy_pages_tags_and_catalog(cib_registry: RegistryServer,
                                                 cib_base_image: PushedImage) -> None:
    repo = "testbed/paged"
    tags = ["a", "b", "c", "d", "e"]
    push_base_image(cib_registry, repo, "a")
    for tag in tags[1:]:
        assert requests.put(f"{cib_registry.url}/v2/{repo}/manifests/{tag}", data=cib_base_image.raw,
                            headers={"Content-Type": cib_base_image.media_type},
                            timeout=TIMEOUT).status_code == 201
    # the registry itself answers everything at once
    direct = requests.get(f"{cib_registry.url}/v2/{repo}/tags/list?n=2", timeout=TIMEOUT)
    assert sorted(direct.json()["tags"]) == tags and "Link" not in direct.headers

    with PaginatingProxy(cib_registry, page_size=2) as proxy:
        pages, links = [], []
        url = f"{proxy.url}/v2/{repo}/tags/list"
        for _ in range(10):
            response = requests.get(url, timeout=TIMEOUT)
            assert response.status_code == 200
            pages.append(response.json()["tags"])
            if "next" not in response.links:
                break
            links.append(response.headers["Link"])
            url = urllib.parse.urljoin(proxy.url, response.links["next"]["url"])
        assert pages == [["a", "b"], ["c", "d"], ["e"]]
        assert links[0] == f'</v2/{repo}/tags/list?n=2&last=b>; rel="next"'
        # a smaller n is honoured; a last not in the list works lexically
        assert requests.get(f"{proxy.url}/v2/{repo}/tags/list?n=1&last=bb",
                            timeout=TIMEOUT).json()["tags"] == ["c"]

        # the session's registry holds every repository the other tests made, so the number
        # of pages grows with the suite: follow the links to the end, only guarding a loop
        repositories, url = [], f"{proxy.url}/v2/_catalog"
        for _ in range(10_000):
            response = requests.get(url, timeout=TIMEOUT)
            assert len(response.json()["repositories"]) <= 2
            repositories += response.json()["repositories"]
            if "next" not in response.links:
                break
            url = urllib.parse.urljoin(proxy.url, response.links["next"]["url"])
        else:
            pytest.fail("the paginated catalog never ended")
        assert repo in repositories and cib_base_image.repository in repositories
        assert repositories == sorted(set(repositories))
        assert proxy.pages_served == 3 + 1 + len(range(0, len(repositories), 2))

        missing = requests.get(f"{proxy.url}/v2/testbed/nothing-here/tags/list", timeout=TIMEOUT)
        assert missing.status_code == 404


def test_skopeo_inspect_raw_with_arch_gives_the_platform_manifest(
        cib_multiarch_base_image: PushedImage) -> None:
    for platform, arch in (("linux/arm64/v8", "arm64"), ("linux/amd64", "amd64")):
        raw = skopeo_inspect(cib_multiarch_base_image.ref, raw=True, arch=arch)
        assert sha256(raw) == cib_multiarch_base_image.platforms[platform].digest


def test_any_registry_serves_a_pushed_image(cib_any_registry: RegistryServer) -> None:
    pushed = push_base_image(cib_any_registry, "testbed/any", "1", flavour="oci")
    raw = skopeo_inspect(pushed.ref, raw=True, creds=cib_any_registry.creds_arg())
    assert sha256(raw) == pushed.digest
    assert (cib_any_registry.auth is None) == (cib_any_registry.mode == "open")


def test_missing_tool_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path) -> None:
    from cib_core.testing import require_tool

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="docker-registry"):
        require_tool("docker-registry")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="docker-registry"):
        require_tool("docker-registry")
