"""Push a model in Ollama's registry format (a docker v2 manifest whose layers are
application/vnd.ollama.image.* blobs) to a registry on 127.0.0.1, with the plain
distribution API. Test helper only. Usage: push_model.py HOST:PORT REPO TAG MODEL_FILE"""
import hashlib
import http.client
import json
import sys
from urllib.parse import urlparse

hostport, repo, tag, model_file = sys.argv[1:5]
host, port = hostport.rsplit(":", 1)


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def push_blob(b):
    c = http.client.HTTPConnection(host, int(port))
    c.request("POST", f"/v2/{repo}/blobs/uploads/")
    r = c.getresponse()
    r.read()
    assert r.status == 202, r.status
    u = urlparse(r.getheader("Location"))
    path = u.path + ("?" + u.query if u.query else "")
    sep = "&" if "?" in path else "?"
    c.request("PUT", f"{path}{sep}digest={digest(b)}", body=b, headers={"Content-Type": "application/octet-stream"})
    r = c.getresponse()
    r.read()
    assert r.status == 201, r.status
    return {"digest": digest(b), "size": len(b)}


model = open(model_file, "rb").read()
template = b"{{ .Prompt }}"
params = json.dumps({"stop": ["<|im_end|>"]}).encode()
config = json.dumps({"model_format": "gguf", "model_family": "llama", "file_type": "Q4_1"}).encode()
layers = []
for media, blob in [("model", model), ("template", template), ("params", params)]:
    d = push_blob(blob)
    d["mediaType"] = f"application/vnd.ollama.image.{media}"
    layers.append(d)
cfg = push_blob(config)
cfg["mediaType"] = "application/vnd.docker.container.image.v1+json"
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": cfg,
    "layers": layers,
}).encode()
c = http.client.HTTPConnection(host, int(port))
c.request("PUT", f"/v2/{repo}/manifests/{tag}", body=manifest,
          headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
r = c.getresponse()
body = r.read()
assert r.status == 201, (r.status, body)
sys.stdout.write(manifest.decode())
