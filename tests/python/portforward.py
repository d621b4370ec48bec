"""The official Python client's `portforward` (WebSocket channels,
v4.channel.k8s.io) against the agent's API: bytes both ways through an
echo server, an HTTP response read to its end, and a port nothing
listens on (the error channel's message).
Usage: portforward.py <kubeconfig> <pod>. Prints one line per step;
exits non-zero on the first failure."""
import hashlib
import http.client
import sys
import threading

from kubernetes import client, config
from kubernetes.stream import portforward

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
pod = sys.argv[2]


def forward(ports):
    return portforward(core.connect_get_namespaced_pod_portforward, pod,
                       "default", ports=ports)


# Echo: 256 KiB out and the same back, checked.
pf = forward("8080")
sock = pf.socket(8080)
sock.setblocking(True)
payload = bytes((i * 7 + i // 251) % 256 for i in range(256 * 1024))
sender = threading.Thread(target=sock.sendall, args=(payload,))
sender.start()
got = b""
while len(got) < len(payload):
    chunk = sock.recv(65536)
    assert chunk, "the echo ended after %d bytes" % len(got)
    got += chunk
sender.join()
assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
assert pf.error(8080) is None, pf.error(8080)
pf.close()
print("echo", len(got))

# HTTP through a server on the pod's own loopback, read to its end.
pf = forward("8081")
conn = http.client.HTTPConnection("pf", 8081)
conn.sock = pf.socket(8081)
conn.request("GET", "/big")
resp = conn.getresponse()
body = resp.read()
assert resp.status == 200, resp.status
want = "".join("%d\n" % i for i in range(1, 200001)).encode()
assert body == want, len(body)
pf.close()
print("http", len(body))

# Nothing listens on 9999: the error channel says so.
pf = forward("9999")
sock = pf.socket(9999)
sock.setblocking(True)
assert sock.recv(1) == b""
err = pf.error(9999)
assert err and "error forwarding port 9999" in err, err
print("refused", err)
print("ok")
