# Egress probes, run the same way from the host (to prove each probe valid) and inside a
# service or a sandbox (`python3 -c THIS CA_PEM SPEC...`). Each SPEC is a JSON object; the
# probes run in parallel (a dropped packet costs its timeout once) and one JSON line per
# SPEC is printed, in order: {"ok": true, ...} when the probe got what it aimed at, else
# {"ok": false, "error": "..."}.
#
#   {"k": "dns", "name": N, "type": "A", "server": ADDR or null (the first nameserver of
#    /etc/resolv.conf), "port": 53}      -> "rcode" (null: no answer), "answers" (A addresses),
#                                           "count" (answer records of any type)
#   {"k": "resolve", "name": N}          -> "addrs" (getaddrinfo, IPv4)
#   {"k": "tls", "host": H, "port": P, "sni": S, "path": "/"}
#        a TLS handshake verified against CA_PEM for S, then GET PATH with Host: S
#                                        -> "status", "body" (the world server's JSON: what it saw)
#   {"k": "http", "host": H, "port": P, "hosthdr": X, "path": "/"} -> "status", "body"
#   {"k": "tcp", "host": H, "port": P}   -> "banner" (what the server said first)
#   {"k": "udp", "host": H, "port": P, "data": HEX} -> sent (delivery is the receiver's to prove)
#   {"k": "dnsudp", "name": N, "host": H, "port": 53} -> a DNS query sent to H, never waited on
#
# `python3 -c THIS CA_PEM stream HOST PORT SNI`: a TLS GET /stream, printing "ok N" per tick
# and "cut:WHY" when it ends before the server's last tick.
import json
import random
import socket
import ssl
import struct
import sys
import threading

TIMEOUT = 3


def resolver():
    try:
        for l in open("/etc/resolv.conf"):
            w = l.split()
            if len(w) >= 2 and w[0] == "nameserver":
                return w[1]
    except OSError:
        pass
    return "127.0.0.1"


QTYPES = {"A": 1, "AAAA": 28, "HTTPS": 65, "SVCB": 64, "TXT": 16}


def dns_packet(name, qtype):
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", QTYPES[qtype], 1)
    return qid, q


def skip_name(d, i):
    while True:
        n = d[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n


def dns(spec):
    qid, q = dns_packet(spec["name"], spec.get("type", "A"))
    server = spec.get("server") or resolver()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(spec.get("timeout", TIMEOUT))
    s.sendto(q, (server, spec.get("port", 53)))
    try:
        while True:
            d, _ = s.recvfrom(65535)
            if len(d) >= 12 and struct.unpack(">H", d[:2])[0] == qid:
                break
    except socket.timeout:
        return {"ok": False, "rcode": None, "error": "timeout", "server": server}
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", d[:12])
    i = 12
    for _ in range(qd):
        i = skip_name(d, i) + 4
    answers = []
    for _ in range(an):
        i = skip_name(d, i)
        t, _, _, rdlen = struct.unpack(">HHIH", d[i:i + 10])
        i += 10
        if t == 1 and rdlen == 4:
            answers.append(socket.inet_ntoa(d[i:i + 4]))
        i += rdlen
    rcode = flags & 0xF
    return {"ok": rcode == 0 and an > 0, "rcode": rcode, "answers": answers, "count": an, "server": server}


def dnsudp(spec):
    _, q = dns_packet(spec["name"], "A")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(q, (spec["host"], spec.get("port", 53)))
    return {"ok": True, "sent": len(q)}


def resolve(spec):
    try:
        infos = socket.getaddrinfo(spec["name"], 443, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as e:
        return {"ok": False, "error": "gaierror:%s" % e.args[0]}
    return {"ok": True, "addrs": sorted({i[4][0] for i in infos})}


def http_exchange(c, hosthdr, path):
    c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, hosthdr)).encode())
    data = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        data += d
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else None
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = body.decode("latin-1")
    return status, parsed


def tls(spec, ca):
    ctx = ssl.create_default_context(cadata=ca)
    raw = socket.create_connection((spec["host"], spec["port"]), timeout=TIMEOUT)
    c = ctx.wrap_socket(raw, server_hostname=spec["sni"])
    status, body = http_exchange(c, spec["sni"], spec.get("path", "/"))
    ok = status == 200 and isinstance(body, dict) and body.get("sni") == spec["sni"]
    return {"ok": ok, "status": status, "body": body}


def http(spec):
    c = socket.create_connection((spec["host"], spec["port"]), timeout=TIMEOUT)
    status, body = http_exchange(c, spec["hosthdr"], spec.get("path", "/"))
    return {"ok": status == 200, "status": status, "body": body}


def tcp(spec):
    c = socket.create_connection((spec["host"], spec["port"]), timeout=TIMEOUT)
    c.settimeout(TIMEOUT)
    banner = c.recv(64).decode("latin-1")
    return {"ok": bool(banner), "banner": banner}


def udp(spec):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(bytes.fromhex(spec.get("data", "00")), (spec["host"], spec["port"]))
    return {"ok": True}


def run(spec, ca):
    try:
        k = spec["k"]
        if k == "dns":
            return dns(spec)
        if k == "dnsudp":
            return dnsudp(spec)
        if k == "resolve":
            return resolve(spec)
        if k == "tls":
            return tls(spec, ca)
        if k == "http":
            return http(spec)
        if k == "tcp":
            return tcp(spec)
        if k == "udp":
            return udp(spec)
        return {"ok": False, "error": "unknown probe %s" % k}
    except Exception as e:
        return {"ok": False, "error": "%s:%s" % (type(e).__name__, e)}


def stream(ca, host, port, sni):
    ctx = ssl.create_default_context(cadata=ca)
    try:
        raw = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        c = ctx.wrap_socket(raw, server_hostname=sni)
        c.settimeout(5)
        c.sendall(("GET /stream HTTP/1.1\r\nHost: %s\r\n\r\n" % sni).encode())
        buf = b""
        last = -1
        while True:
            d = c.recv(4096)
            if not d:
                print("cut:eof after %d" % last, flush=True)
                return
            buf += d
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                if line.startswith(b"tick "):
                    last = int(line[5:])
                    print("ok %d" % last, flush=True)
                    if last >= 599:
                        print("done", flush=True)
                        return
    except Exception as e:
        print("cut:%s" % type(e).__name__, flush=True)


def main():
    ca = sys.argv[1] or None
    if len(sys.argv) > 2 and sys.argv[2] == "stream":
        stream(ca, *sys.argv[3:6])
        return
    specs = [json.loads(a) for a in sys.argv[2:]]
    out = [None] * len(specs)

    def one(i):
        out[i] = run(specs[i], ca)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(specs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for o in out:
        print(json.dumps(o), flush=True)


main()
