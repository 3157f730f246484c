# The egress tests' servers inside the world namespace (tests/support/world.rs starts it with
# `nsenter -t WORLD_PID -n`): TLS on 443 and plain HTTP on 80 that answer with what they saw
# (the SNI, the Host header, the path, the peer), and a UDP recorder on 443 (QUIC's port) and
# the other UDP ports given. Every connection and datagram is written to EVENTS, one line
# each, flushed at once, so a test can prove what reached the world and what never did.
#
# Paths: /bytes/N sends N zero bytes (the benchmark's download); /stream sends "tick N\n"
# every 100 ms for a minute (a live connection a test can watch being cut); anything else
# answers a JSON object {"sni", "host", "path", "port", "peer"}.
#
# Usage: python3 egress_world.py ADDR CERT KEY EVENTS [UDP_PORT...]; prints "ready" and runs
# until its stdin closes (or, with EGRESS_WORLD_DETACHED=1, until killed).
import json
import os
import socket
import ssl
import sys
import threading
import time

addr, cert, key, events_path = sys.argv[1:5]
udp_ports = [443] + [int(p) for p in sys.argv[5:]]
lock = threading.Lock()
events = open(events_path, "a", buffering=1)


def event(*words):
    with lock:
        events.write(" ".join(str(w) for w in words) + "\n")
        events.flush()


def read_request(c):
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        d = c.recv(4096)
        if not d:
            break
        data += d
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ") if lines and lines[0] else []
    path = parts[1] if len(parts) > 1 else ""
    host = None
    for l in lines[1:]:
        k, _, v = l.partition(":")
        if k.strip().lower() == "host":
            host = v.strip()
    return path, host


def serve(c, port, peer, sni):
    try:
        c.settimeout(30)
        path, host = read_request(c)
        event("request", port, peer, "sni=%s" % sni, "host=%s" % host, "path=%s" % path)
        if path.startswith("/bytes/"):
            n = int(path[len("/bytes/"):])
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % n)
            chunk = bytes(256 * 1024)
            while n > 0:
                k = min(n, len(chunk))
                c.sendall(chunk[:k] if k < len(chunk) else chunk)
                n -= k
        elif path == "/stream":
            c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            for i in range(600):
                c.sendall(b"tick %d\n" % i)
                time.sleep(0.1)
        else:
            body = json.dumps({"sni": sni, "host": host, "path": path, "port": port, "peer": peer}).encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    except (OSError, ValueError) as e:
        event("error", port, peer, type(e).__name__)
    finally:
        try:
            c.close()
        except OSError:
            pass


def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(128)
    return s


def make_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def sni_cb(sock, name, _ctx):
        # The connection's own object: what this client asked for.
        sock.sni_seen = name

    ctx.sni_callback = sni_cb
    return ctx


CTX = make_ctx()


def tls_one(raw, peer):
    try:
        raw.settimeout(10)
        c = CTX.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        c.do_handshake()
    except (OSError, ssl.SSLError) as e:
        event("handshake-failed", 443, peer, type(e).__name__)
        raw.close()
        return
    sni = getattr(c, "sni_seen", None)
    event("handshake", 443, peer, "sni=%s" % sni)
    serve(c, 443, peer, sni)


def accept_loop(s, port, tls):
    while True:
        raw, (peer, _) = s.accept()
        event("accept", port, peer)
        if tls:
            threading.Thread(target=tls_one, args=(raw, peer), daemon=True).start()
        else:
            threading.Thread(target=serve, args=(raw, port, peer, None), daemon=True).start()


def udp_loop(port):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((addr, port))
    while True:
        d, (peer, pport) = u.recvfrom(65535)
        event("udp", port, peer, len(d), d[:32].hex())


tls, plain = listen(443), listen(80)
threading.Thread(target=accept_loop, args=(tls, 443, True), daemon=True).start()
threading.Thread(target=accept_loop, args=(plain, 80, False), daemon=True).start()
for p in udp_ports:
    threading.Thread(target=udp_loop, args=(p,), daemon=True).start()
print("ready", flush=True)
if os.environ.get("EGRESS_WORLD_DETACHED"):
    # scripts/bench-egress: ended by a signal, not by stdin.
    threading.Event().wait()
sys.stdin.read()
