#!/usr/bin/env python3
"""Pushes hostile OCI images to a registry (the local test registry), for berth's hostile-image tests.

Usage: hack/push-hostile-images.py REGISTRY_ADDR REPO_PREFIX CANARY_DIR

Each image is one base layer plus what its name says; CANARY_DIR is the host directory the escaping
entries aim at (it must stay untouched). Tags: REPO_PREFIX/<case>:latest. Prints one line per image.
  dotdot      a file at ../../../../../../../../CANARY/pwned
  absolute    a file at /CANARY/pwned
  symlink     a symlink s -> / and then a file s/CANARY/pwned through it
  hardlink    a hard link to /etc/shadow
  chardev     a character device dev/mem (1:1)
  setuid      a setuid-root file bin/su
  bomb        a gzip bomb: 300 MiB of zeros in about 300 KiB
  sparse      a 10 GiB sparse file holding three 4 KiB blocks, a GNU sparse entry (type S)
  sparse-pax  the same file as a PAX sparse file (GNU tar's format 1.0)
  liar        a manifest announcing a layer smaller than it is
  bigenv      a config with a 1 MiB environment variable
  thousand    1000 layers
Built with Python's tarfile, gzip and urllib only (no registry client to trust), and GNU tar for the
sparse files (tarfile cannot write them).
"""

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

ADDR, PREFIX, CANARY = sys.argv[1], sys.argv[2].strip("/"), sys.argv[3].rstrip("/")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def request(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req) as r:
        return r.headers, r.read()


def push_blob(repo, data):
    d = digest(data)
    try:
        request("HEAD", f"http://{ADDR}/v2/{repo}/blobs/{d}")
        return d
    except urllib.error.HTTPError:
        pass
    headers, _ = request("POST", f"http://{ADDR}/v2/{repo}/blobs/uploads/")
    loc = headers["Location"]
    if loc.startswith("/"):
        loc = f"http://{ADDR}{loc}"
    sep = "&" if "?" in loc else "?"
    request("PUT", f"{loc}{sep}digest={d}", data, {"Content-Type": "application/octet-stream"})
    return d


def tar_of(entries):
    """entries: (TarInfo, bytes or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def info(name, kind=tarfile.REGTYPE, size=0, mode=0o644, link=""):
    i = tarfile.TarInfo(name)
    i.type, i.size, i.mode, i.linkname = kind, size, mode, link
    i.mtime = 1700000000
    return i


def file(name, data, mode=0o644):
    return (info(name, size=len(data), mode=mode), data)


BASE = tar_of([(info("etc", tarfile.DIRTYPE, mode=0o755), None), file("etc/hostname", b"hostile\n")])


def push_image(case, tars, env=None, lie=False):
    repo = f"{PREFIX}/{case}"
    layers, diff_ids = [], []
    for t in tars:
        gz = gzip.compress(t, compresslevel=6, mtime=0)
        diff_ids.append(digest(t))
        layers.append({"mediaType": LAYER_GZIP, "digest": push_blob(repo, gz), "size": len(gz)})
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": env or ["PATH=/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": push_blob(repo, config), "size": len(config)}
    if lie:
        layers[-1]["size"] = layers[-1]["size"] // 2
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": layers}).encode()
    request("PUT", f"http://{ADDR}/v2/{repo}/manifests/latest", manifest, {"Content-Type": OCI_MANIFEST})
    print(f"{ADDR}/{repo}:latest")


def bomb_layer(zero_bytes):
    """A tar of one file of zeros, gzip-compressed as it is written: (gzip bytes, sha256 of the tar)."""
    header = info("zeros", size=zero_bytes)
    tar_head = header.tobuf(tarfile.PAX_FORMAT)
    pad = (512 - zero_bytes % 512) % 512
    out = io.BytesIO()
    h = hashlib.sha256()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as g:
        g.write(tar_head)
        h.update(tar_head)
        zeros = bytes(1 << 20)
        left = zero_bytes
        while left:
            n = min(left, len(zeros))
            g.write(zeros[:n])
            h.update(zeros[:n])
            left -= n
        tail = bytes(pad + 1024)
        g.write(tail)
        h.update(tail)
    return out.getvalue(), h


def sparse_layer(fmt):
    """GNU tar --sparse (fmt: its format options) of `sparse`, 10 GiB long, written at 0, 5 GiB and its end."""
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "sparse"), "wb") as f:
            for at, text in ((0, b"HEAD"), (5 << 30, b"MIDL"), ((10 << 30) - 4096, b"TAIL")):
                f.seek(at)
                f.write(text * 1024)
        tar = subprocess.run(
            ["tar", "--sparse", *fmt, "--numeric-owner", "--owner=0", "--group=0", "--mtime=@1700000000"]
            + ["-C", d, "-cf", "-", "sparse"],
            check=True,
            capture_output=True,
        ).stdout
    assert len(tar) < 1 << 20, "GNU tar did not find the holes"
    return tar


canary_rel = CANARY.lstrip("/")
push_image("dotdot", [BASE, tar_of([file("../../../../../../../../" + canary_rel + "/pwned", b"x")])])
push_image("absolute", [BASE, tar_of([file(CANARY + "/pwned", b"x")])])
push_image(
    "symlink",
    [BASE, tar_of([(info("s", tarfile.SYMTYPE, link="/"), None), file("s/" + canary_rel + "/pwned", b"x")])],
)
push_image("hardlink", [BASE, tar_of([(info("h", tarfile.LNKTYPE, link="/etc/shadow"), None)])])
dev = info("dev/mem", tarfile.CHRTYPE, mode=0o640)
dev.devmajor, dev.devminor = 1, 1
push_image("chardev", [BASE, tar_of([(info("dev", tarfile.DIRTYPE, mode=0o755), None), (dev, None)])])
push_image(
    "setuid",
    [BASE, tar_of([(info("bin", tarfile.DIRTYPE, mode=0o755), None), file("bin/su", b"#!/bin/sh\n", 0o4755)])],
)
gz, h = bomb_layer(300 << 20)


# The bomb's diff id comes from the streamed hash (the 300 MiB tar is never held in memory).
repo = f"{PREFIX}/bomb"
base_gz = gzip.compress(BASE, mtime=0)
layers = [
    {"mediaType": LAYER_GZIP, "digest": push_blob(repo, base_gz), "size": len(base_gz)},
    {"mediaType": LAYER_GZIP, "digest": push_blob(repo, gz), "size": len(gz)},
]
config = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest(BASE), "sha256:" + h.hexdigest()]},
    }
).encode()
cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": push_blob(repo, config), "size": len(config)}
manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": layers}).encode()
request("PUT", f"http://{ADDR}/v2/{repo}/manifests/latest", manifest, {"Content-Type": OCI_MANIFEST})
print(f"{ADDR}/{repo}:latest")

push_image("sparse", [BASE, sparse_layer(["--format=gnu"])])
push_image("sparse-pax", [BASE, sparse_layer(["--format=posix", "--sparse-version=1.0"])])
push_image("liar", [BASE, tar_of([file("data", bytes(range(256)) * 64)])], lie=True)
push_image("bigenv", [BASE], env=["PATH=/bin", "BIG=" + "x" * (1 << 20)])
push_image("thousand", [BASE] + [tar_of([file(f"l{i:04}", str(i).encode())]) for i in range(999)])
