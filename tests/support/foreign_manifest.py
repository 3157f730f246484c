#!/usr/bin/env python3
"""Give a pushed Docker schema 2 image a foreign layer, as Windows base images have.

Reads REPO:SRC from the registry at HOST, puts in front of its layers a
`application/vnd.docker.image.rootfs.foreign.diff.tar.gzip` layer whose blob the registry does
not hold (it names URL, which nothing should fetch), adds the layer's diff_id to the config,
uploads the new config and PUTs the manifest as REPO:DST. Credentials: a push token from
TOKEN_URL for pusher:pushpw (tests/support/token_server.py).
Usage: foreign_manifest.py HOST REPO SRC DST TOKEN_URL SERVICE URL
"""
import base64
import hashlib
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

HOST, REPO, SRC, DST, TOKEN_URL, SERVICE, URL = sys.argv[1:8]
V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

query = urllib.parse.urlencode({"service": SERVICE, "scope": f"repository:{REPO}:pull,push"})
req = urllib.request.Request(f"{TOKEN_URL}?{query}")
req.add_header("Authorization", "Basic " + base64.b64encode(b"pusher:pushpw").decode())
TOKEN = json.load(urllib.request.urlopen(req))["token"]


def call(method, url, body=None, headers=None):
    if not url.startswith("http"):
        url = f"http://{HOST}{url}"
    r = urllib.request.Request(url, data=body, method=method)
    r.add_header("Authorization", f"Bearer {TOKEN}")
    for k, v in (headers or {}).items():
        r.add_header(k, v)
    try:
        return urllib.request.urlopen(r)
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {url}: {e.code} {e.read().decode(errors='replace')}")


manifest = json.load(call("GET", f"/v2/{REPO}/manifests/{SRC}", headers={"Accept": V2S2}))
assert manifest["mediaType"] == V2S2, manifest
config = json.load(call("GET", f"/v2/{REPO}/blobs/{manifest['config']['digest']}"))

foreign_tar = b"a foreign layer nobody may redistribute"
foreign_digest = "sha256:" + hashlib.sha256(foreign_tar).hexdigest()
config["rootfs"]["diff_ids"].insert(0, foreign_digest)
config_bytes = json.dumps(config).encode()
config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()

upload = call("POST", f"/v2/{REPO}/blobs/uploads/").headers["Location"]
sep = "&" if "?" in upload else "?"
call("PUT", f"{upload}{sep}digest={config_digest}", body=config_bytes,
     headers={"Content-Type": "application/octet-stream"})

manifest["config"]["digest"] = config_digest
manifest["config"]["size"] = len(config_bytes)
manifest["layers"].insert(0, {"mediaType": FOREIGN, "size": len(foreign_tar),
                              "digest": foreign_digest, "urls": [URL]})
call("PUT", f"/v2/{REPO}/manifests/{DST}", body=json.dumps(manifest).encode(),
     headers={"Content-Type": V2S2})
print(foreign_digest)
