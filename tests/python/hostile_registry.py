#!/usr/bin/env python3
"""A hostile OCI registry for moat's end-to-end tests, on 127.0.0.1.

It builds its images itself and serves them over the distribution API
(`/v2/<repo>/manifests/<ref>`, `/v2/<repo>/blobs/<digest>`), lies included:

- hostile/huge-manifest:latest  a 5 MiB manifest (valid JSON, padded)
- hostile/lying-size:latest     a layer that declares 100 bytes and sends 10 KiB
- hostile/bomb:latest           a gzip layer of 2 MiB that unpacks to 256 MiB
- hostile/trickle:latest        a layer sent one byte a second
- hostile/setuid:latest         a fair image with a setuid-root binary, an
                                `etc -> /etc` link and the user "daemon"

Prints the port it listens on, then serves until killed.
"""

import gzip
import hashlib
import io
import json
import sys
import tarfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"

blobs = {}  # digest -> (bytes, trickle)
manifests = {}  # "repo:tag" -> bytes


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_of(entries):
    """A tar of (name, kind, data, mode) entries, kind file/dir/symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, 0, 0, 0
            if kind == "file":
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info.type = tarfile.SYMTYPE
                info.linkname = data
                t.addfile(info)
    return buf.getvalue()


class Zeros(io.RawIOBase):
    """`size` zero bytes, read without holding them."""

    def __init__(self, size):
        self.left = size

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def bomb_layer(size):
    """A gzip tar holding one file of `size` zero bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as t:
            info = tarfile.TarInfo("zeros")
            info.size, info.mode, info.mtime = size, 0o644, 0
            t.addfile(info, Zeros(size))
    return buf.getvalue()


def add_image(name, layers, user="", pad=0):
    """Records image `name` of `layers` [(bytes, media type, declared size
    or None, trickle)]."""
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"User": user, "Cmd": ["/bin/prog"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    }).encode()
    blobs[digest(config)] = (config, False)
    descs = []
    for data, media, declared, trickle in layers:
        blobs[digest(data)] = (data, trickle)
        descs.append({
            "mediaType": media,
            "digest": digest(data),
            "size": len(data) if declared is None else declared,
        })
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(config),
            "size": len(config),
        },
        "layers": descs,
    }).encode() + b" " * pad
    manifests[name] = manifest


def build():
    fair = tar_of([("bin", "dir", None, 0o755), ("bin/prog", "file", b"#!/bin/sh\n", 0o755)])
    add_image("hostile/huge-manifest:latest", [(fair, LAYER, None, False)], pad=5 << 20)
    add_image("hostile/lying-size:latest",
              [(tar_of([("f", "file", b"x" * 8192, 0o644)]), LAYER, 100, False)])
    add_image("hostile/bomb:latest", [(bomb_layer(256 << 20), LAYER_GZIP, None, False)])
    add_image("hostile/trickle:latest",
              [(tar_of([("slow", "file", b"s" * 64, 0o644)]), LAYER, None, True)])
    setuid = tar_of([
        ("bin", "dir", None, 0o755),
        ("bin/prog", "file", b"#!/bin/sh\necho setuid\n", 0o4755),
        ("etc", "symlink", "/etc", 0o777),
    ])
    add_image("hostile/setuid:latest", [(setuid, LAYER, None, False)], user="daemon")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body, content_type="application/json", trickle=False):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if content_type == MANIFEST:
            self.send_header("Docker-Content-Digest", digest(body))
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            if trickle:
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(1)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        path = self.path.split("?")[0]
        if path in ("/v2", "/v2/"):
            return self.send(200, b"{}")
        parts = path[len("/v2/"):].rsplit("/", 2) if path.startswith("/v2/") else []
        if len(parts) == 3 and parts[1] == "manifests":
            repo, ref = parts[0], parts[2]
            body = manifests.get(f"{repo}:{ref}")
            if body is None:
                body = next((m for m in manifests.values() if digest(m) == ref), None)
            if body is not None:
                return self.send(200, body, MANIFEST)
        if len(parts) == 3 and parts[1] == "blobs" and parts[2] in blobs:
            data, trickle = blobs[parts[2]]
            return self.send(200, data, "application/octet-stream", trickle)
        self.send(404, b'{"errors":[{"code":"NOT_FOUND"}]}')

    do_HEAD = do_GET


def main():
    build()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
