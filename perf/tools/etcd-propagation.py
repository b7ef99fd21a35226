#!/usr/bin/env python3
"""Time from an etcd write to the first request served by the route it wrote.

etcd-propagation.py ETCD_URL PREFIX PROXY_ADDR UPSTREAM_ADDR CHANGES

Each change rewrites one route (<PREFIX>/routes/prop) with a new uri, /prop/<i>, through etcd's
v3 JSON gateway, then asks the proxy for that uri on one keep-alive connection, again and again,
until it answers 200 with the upstream's body. Times are taken from just before the write is
sent (write included) and from its acknowledgement. Prints a Markdown section; exits non-zero if
a change is not served within 5 s or the proxy answers anything but 404 before it is.
"""
import base64
import http.client
import json
import statistics
import sys
import time
import urllib.request

DEADLINE = 5.0


def put(etcd, key, value):
    body = json.dumps({
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value.encode()).decode(),
    }).encode()
    req = urllib.request.Request(etcd + "/v3/kv/put", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


def main():
    etcd, prefix, proxy, upstream, changes = sys.argv[1:6]
    changes = int(changes)
    host, port = proxy.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    from_write, from_ack, polls = [], [], 0
    for i in range(changes):
        uri = f"/prop/{i}"
        route = json.dumps({"id": "prop", "uri": uri,
                            "upstream": {"type": "roundrobin", "nodes": {upstream: 1}},
                            "create_time": 1700000000, "update_time": 1700000000 + i})
        t0 = time.perf_counter()
        put(etcd, f"{prefix}/routes/prop", route)
        t1 = time.perf_counter()
        while True:
            conn.request("GET", uri)
            r = conn.getresponse()
            body = r.read()
            polls += 1
            now = time.perf_counter()
            if r.status == 200 and b"hello world" in body:
                break
            if r.status != 404:
                sys.exit(f"change {i}: {uri} answered {r.status} before its route was served")
            if now - t0 > DEADLINE:
                sys.exit(f"change {i}: {uri} not served within {DEADLINE} s of its write")
        from_write.append((now - t0) * 1000)
        from_ack.append((now - t1) * 1000)

    def q(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    print("## etcd write to first request served\n")
    print(f"{changes} changes, each a new uri for one route written into etcd; the proxy polled "
          f"on one keep-alive connection ({polls} requests in all).\n")
    print("| from | median ms | p90 ms | min ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for name, xs in (("the write sent", from_write), ("the write acknowledged", from_ack)):
        print(f"| {name} | {statistics.median(xs):.2f} | {q(xs, 0.9):.2f} | "
              f"{min(xs):.2f} | {max(xs):.2f} |")


if __name__ == "__main__":
    main()
