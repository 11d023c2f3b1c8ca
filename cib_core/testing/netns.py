"""Another host without leaving the machine: a network namespace joined by a veth pair.

Rules about "another host" (credentials that must not follow a token realm or a redirect
there) need a second address that is not loopback. :class:`OtherHost` makes a namespace of its
own with a veth pair (``10.231.N.1`` here, ``10.231.N.2`` there), runs servers inside it and
removes everything on close; traffic never leaves the machine. It needs root and ``ip``.

``python -m cib_core.testing.netns serve ...`` is the server run inside: it answers every
request with a token (or a redirect) and appends one JSON line per request to a log file, so
the test can tell whether anything, and which credentials, arrived.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import itertools
import json
import os
import shutil
import signal
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_counter = itertools.count()
_lock = threading.Lock()
SUBNET = "10.231"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_available() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "making a network namespace needs root"
    return None


class OtherHost:
    """A network namespace reachable at ``address`` from this machine's root namespace."""

    def __init__(self) -> None:
        with _lock:
            n = next(_counter)
        tag = f"{os.getpid() % 100000}{n}"
        self.name = f"cib-test-{tag}"
        self.outer = f"cibo{tag}"[:15]
        self.inner = f"cibi{tag}"[:15]
        self.third_octet = self._free_subnet()
        self.local_address = f"{SUBNET}.{self.third_octet}.1"
        self.address = f"{SUBNET}.{self.third_octet}.2"
        self._processes: list[subprocess.Popen[bytes]] = []
        self._made = False

    @staticmethod
    def _free_subnet() -> int:
        taken = _ip("-o", "-4", "addr", "show").stdout
        start = (os.getpid() * 7) % 250 + 2
        for octet in itertools.chain(range(start, 253), range(2, start)):
            if f" {SUBNET}.{octet}." not in taken:
                return octet
        raise RuntimeError(f"no free {SUBNET}.N.0/30 subnet for a test namespace")

    def start(self) -> OtherHost:
        _ip("netns", "add", self.name)
        self._made = True
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        _ip("link", "set", self.inner, "netns", self.name)
        _ip("addr", "add", f"{self.local_address}/30", "dev", self.outer)
        _ip("link", "set", self.outer, "up")
        _ip("netns", "exec", self.name, "ip", "addr", "add", f"{self.address}/30", "dev", self.inner)
        _ip("netns", "exec", self.name, "ip", "link", "set", self.inner, "up")
        _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        return self

    def serve(self, log: Path, *, port: int = 8080, token: str = "ns-token",  # noqa: S107 - a test token
              tls: tuple[Path, Path] | None = None, redirect: str | None = None) -> str:
        """Start the recording server inside on ``port``; returns ``scheme://address:port``."""
        argv = [sys.executable, "-m", "cib_core.testing.netns", "serve", "--bind", self.address,
                "--port", str(port), "--log", str(log), "--token", token]
        if tls is not None:
            argv += ["--cert", str(tls[0]), "--key", str(tls[1])]
        if redirect is not None:
            argv += ["--redirect", redirect]
        ready = log.with_suffix(".ready")
        argv += ["--ready", str(ready)]
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._processes.append(proc)
        end = time.monotonic() + 20
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the server in {self.name} ended: "
                                   f"{proc.stderr.read().decode() if proc.stderr else ''}")
            if time.monotonic() > end:
                raise RuntimeError(f"the server in {self.name} did not start within 20 s")
            time.sleep(0.05)
        return f"{'https' if tls else 'http'}://{self.address}:{port}"

    def close(self) -> None:
        for proc in self._processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        self._processes.clear()
        _ip("link", "del", self.outer, check=False)
        if self._made:
            _ip("netns", "del", self.name, check=False)
            self._made = False

    def __enter__(self) -> OtherHost:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def recorded(log: Path) -> list[dict[str, Any]]:
    """The requests the server inside has logged: method, path, headers (names lowercased)."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


# -- the server run inside the namespace --------------------------------------------------------

class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_path: Path
    token: str
    redirect: str | None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1 << 20)).decode("latin-1") if length else ""
        entry = {"method": self.command, "path": self.path, "body": body,
                 "headers": {k.lower(): v for k, v in self.headers.items()}}
        with self.log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.redirect is not None:
            self.send_response(307)
            self.send_header("Location", self.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        answer = json.dumps({"token": self.token, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = _answer


def _serve(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="cib_core.testing.netns serve")
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--token", default="ns-token")
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--redirect")
    args = parser.parse_args(argv)
    handler = type("Recorder", (_Recorder,), {"log_path": args.log, "token": args.token,
                                              "redirect": args.redirect})

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def server_bind(self) -> None:  # no reverse DNS lookup of the address
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = args.bind, args.port

    server = Server((args.bind, args.port), handler)
    if args.cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(args.cert), str(args.key))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    args.ready.write_text("ready\n")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.1)
    server.server_close()


if __name__ == "__main__":  # pragma: no cover - run inside a namespace by OtherHost.serve
    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[2:])
    else:
        sys.exit("usage: python -m cib_core.testing.netns serve --bind ADDR --port N --log FILE ...")
