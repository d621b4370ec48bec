"""The official Python client's `stream` exec (v4.channel.k8s.io) against
the agent's API: output of a command, its exit code, stdin, and a
terminal resized while the command runs.
Usage: exec.py <kubeconfig> <pod> <container>. Prints one line per step;
exits non-zero on the first failure."""
import sys

from kubernetes import client, config
from kubernetes.stream import stream

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
pod, container = sys.argv[2], sys.argv[3]

# The whole output, as most callers use it.
out = stream(core.connect_get_namespaced_pod_exec, pod, "default",
             container=container, command=["sh", "-c", "echo hello"],
             stdin=False, stdout=True, stderr=True, tty=False)
assert out == "hello\n", repr(out)
print("output", out.strip())

# The streams apart and the exit code.
ws = stream(core.connect_get_namespaced_pod_exec, pod, "default",
            container=container,
            command=["sh", "-c", "echo out; echo err >&2; exit 7"],
            stdin=False, stdout=True, stderr=True, tty=False,
            _preload_content=False)
ws.run_forever(timeout=30)
assert ws.read_stdout() == "out\n"
assert ws.read_stderr() == "err\n"
assert ws.returncode == 7, ws.returncode
print("exit code", ws.returncode)

# stdin: a line in, the same line out.
ws = stream(core.connect_get_namespaced_pod_exec, pod, "default",
            container=container, command=["head", "-n", "1"],
            stdin=True, stdout=True, stderr=True, tty=False,
            _preload_content=False)
ws.write_stdin("typed\n")
ws.run_forever(timeout=30)
got = ws.read_stdout()
assert got == "typed\n", repr(got)
assert ws.returncode == 0, ws.returncode
print("stdin", got.strip())

# A terminal resized while the command runs (channel 4).
ws = stream(core.connect_get_namespaced_pod_exec, pod, "default",
            container=container,
            command=["sh", "-c", "echo ready; "
                     "while [ \"$(stty size 2>/dev/null)\" != \"40 120\" ]; "
                     "do sleep 0.1; done; echo resized"],
            stdin=False, stdout=True, stderr=False, tty=True,
            _preload_content=False)
seen = ""
while "ready" not in seen and ws.is_open():
    ws.update(timeout=1)
    seen += ws.read_stdout(timeout=0) or ""
assert "ready" in seen, repr(seen)
ws.write_channel(4, '{"Width": 120, "Height": 40}')
ws.run_forever(timeout=30)
seen += ws.read_stdout() or ""
assert "resized" in seen, repr(seen)
assert ws.returncode == 0, ws.returncode
print("resize", seen.split()[-1])
print("ok")
