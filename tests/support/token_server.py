#!/usr/bin/env python3
"""A registry token server for tests/registry.rs, as Docker Hub's and ghcr's work.

distribution's `auth: token` sends clients here (WWW-Authenticate: Bearer realm=...,
service=..., scope=repository:NAME:ACTIONS); this answers GET /token?service=S&scope=... with
a JWT (RS256, the signing certificate in the header's x5c, the same certificate as the
registry's rootcertbundle) whose `access` claim grants what the policy below allows:

- public/*   pull for anyone, anonymous included (an anonymous pull token);
- private/*  pull for alice and pusher; anonymous gets a token that grants nothing (as
             Docker Hub does), so the registry answers 401;
- refused/*  alice's credentials are good but grant nothing (the "403-ish" case);
- pusher     may push and pull everywhere (skopeo pushes the test images as pusher).

Wrong credentials get 401 from here. Signing runs the openssl CLI (no Python packages).
Usage: token_server.py DIR PORT ISSUER SERVICE  (writes DIR/token.key, DIR/token.pem).
"""
import base64
import http.server
import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid

DIR, PORT, ISSUER, SERVICE = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
KEY, CERT = os.path.join(DIR, "token.key"), os.path.join(DIR, "token.pem")
USERS = {"alice": "alicepw", "pusher": "pushpw"}

subprocess.run(
    ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", KEY, "-out", CERT,
     "-days", "2", "-subj", "/CN=cagerun test token issuer"],
    check=True, capture_output=True)
DER = subprocess.run(["openssl", "x509", "-in", CERT, "-outform", "DER"],
                     check=True, capture_output=True).stdout


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def allowed(user, repo, wanted):
    if user == "pusher":
        return wanted
    if repo.startswith("public/"):
        return [a for a in wanted if a == "pull"]
    if repo.startswith("private/") and user == "alice":
        return [a for a in wanted if a == "pull"]
    return []


def token(user, scopes):
    access = []
    for scope in scopes:
        parts = scope.split(":")
        if len(parts) != 3 or parts[0] != "repository":
            continue
        access.append({"type": "repository", "name": parts[1],
                       "actions": allowed(user, parts[1], parts[2].split(","))})
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(DER).decode()]}
    claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 600, "nbf": now - 10,
              "iat": now, "jti": uuid.uuid4().hex, "access": access}
    signing_input = (b64url(json.dumps(header).encode()) + "." +
                     b64url(json.dumps(claims).encode())).encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", KEY], input=signing_input,
                         check=True, capture_output=True).stdout
    return signing_input.decode() + "." + b64url(sig)


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path != "/token":
            return self.reply(404, {"details": "not found"})
        query = urllib.parse.parse_qs(url.query)
        user = ""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:
                return self.reply(400, {"details": "bad Authorization header"})
            if USERS.get(name) != password:
                return self.reply(401, {"details": "incorrect username or password"})
            user = name
        t = token(user, query.get("scope", []))
        self.reply(200, {"token": t, "access_token": t, "expires_in": 600})

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
