#!/usr/bin/env python3
"""Writes apiserver/src/protobuf/schema.txt: the protobuf shape of the kinds
the API serves, read from Kubernetes' own sources, so request bodies in
application/vnd.kubernetes.protobuf can be decoded without generated code.

Usage: scripts/gen-protobuf-schema.py <kubernetes/api git dir> <kubernetes/apimachinery git dir> [tag]
Files are read with `git show <tag>:<path>`; the tag (default v0.33.9)
matches the Kubernetes version of the object model (k8s-openapi's v1_33).

From each package's generated.proto: messages, field numbers, types. From
its types.go: for each field, whether Go would write a zero value to JSON
(a pointer, or a field without omitempty). Go's protobuf encoder writes
every non-pointer scalar, even when zero; JSON with omitempty would not, so
the decoder drops zero scalars unless this says to keep them.

Output, one message per block:
    M <package>.<Name>
    <number> <jsonName> <o|r> <type> [z]      singular (o) or repeated (r)
    <number> <jsonName> m <keyType> <valueType>  a map
`z` marks a field whose zero value is kept.
"""
import os
import re
import subprocess
import sys

PACKAGES = [
    ("api", "core/v1", "k8s.io.api.core.v1"),
    ("api", "apps/v1", "k8s.io.api.apps.v1"),
    ("api", "batch/v1", "k8s.io.api.batch.v1"),
    ("api", "coordination/v1", "k8s.io.api.coordination.v1"),
    ("api", "discovery/v1", "k8s.io.api.discovery.v1"),
    ("api", "networking/v1", "k8s.io.api.networking.v1"),
    ("api", "policy/v1", "k8s.io.api.policy.v1"),
    ("api", "autoscaling/v1", "k8s.io.api.autoscaling.v1"),
    ("api", "authorization/v1", "k8s.io.api.authorization.v1"),
    ("machinery", "pkg/apis/meta/v1", "k8s.io.apimachinery.pkg.apis.meta.v1"),
    ("machinery", "pkg/api/resource", "k8s.io.apimachinery.pkg.api.resource"),
    ("machinery", "pkg/util/intstr", "k8s.io.apimachinery.pkg.util.intstr"),
    ("machinery", "pkg/runtime", "k8s.io.apimachinery.pkg.runtime"),
]

# What a client may send as a body: the served kinds, and what rides along.
ROOTS = [
    "k8s.io.api.core.v1." + k
    for k in ["Pod", "Service", "ConfigMap", "Secret", "Namespace", "Node", "Event", "Endpoints"]
] + [
    "k8s.io.api.apps.v1." + k
    for k in ["Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "ControllerRevision"]
] + [
    "k8s.io.api.batch.v1.Job",
    "k8s.io.api.batch.v1.CronJob",
    "k8s.io.api.coordination.v1.Lease",
    "k8s.io.api.discovery.v1.EndpointSlice",
    "k8s.io.api.networking.v1.NetworkPolicy",
    "k8s.io.api.policy.v1.PodDisruptionBudget",
    "k8s.io.api.policy.v1.Eviction",
    "k8s.io.api.autoscaling.v1.Scale",
    "k8s.io.api.authorization.v1.SelfSubjectAccessReview",
    "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    "k8s.io.apimachinery.pkg.runtime.Unknown",
]

TAG = "v0.33.9"
SCALARS = {"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "double", "float", "fixed32", "fixed64", "sint32", "sint64"}


def read(repo, path):
    return subprocess.run(["git", "--git-dir", repo, "show", TAG + ":" + path], check=True, capture_output=True, text=True).stdout


def parse_proto(text, pkg):
    msgs = {}
    cur = None
    for line in text.splitlines():
        line = line.split("//")[0].strip()
        m = re.match(r"message (\w+) \{", line)
        if m:
            cur = pkg + "." + m.group(1)
            msgs[cur] = []
            continue
        if line == "}":
            cur = None
            continue
        if cur is None:
            continue
        m = re.match(r"map<\s*([\w.]+)\s*,\s*([\w.]+)\s*>\s+(\w+)\s*=\s*(\d+);", line)
        if m:
            msgs[cur].append((int(m.group(4)), m.group(3), "m", qualify(m.group(1), pkg), qualify(m.group(2), pkg)))
            continue
        m = re.match(r"(optional|repeated)\s+([\w.]+)\s+(\w+)\s*=\s*(\d+);", line)
        if m:
            msgs[cur].append((int(m.group(4)), m.group(3), "o" if m.group(1) == "optional" else "r", qualify(m.group(2), pkg), None))
    return msgs


def qualify(t, pkg):
    if t in SCALARS:
        return t
    if t.startswith("."):
        return t[1:]
    return pkg + "." + t


def parse_go(text, pkg):
    """(message, number) -> (jsonName, keepZero)."""
    out = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"type (\w+) struct \{", line)
        if m:
            cur = pkg + "." + m.group(1)
            continue
        if line.startswith("}"):
            cur = None
            continue
        if cur is None:
            continue
        m = re.match(r"\s*(\w+)\s+(\S+)\s+`(.*)`", line)
        if not m:
            continue
        gotype, tags = m.group(2), m.group(3)
        pt = re.search(r'protobuf:"[a-z0-9]+,(\d+),', tags)
        jt = re.search(r'json:"([^"]*)"', tags)
        if not pt or not jt:
            continue
        jparts = jt.group(1).split(",")
        keep = gotype.startswith("*") or "omitempty" not in jparts[1:]
        out[(cur, int(pt.group(1)))] = (jparts[0], keep)
    return out


def main():
    global TAG
    api, machinery = sys.argv[1], sys.argv[2]
    TAG = sys.argv[3] if len(sys.argv) > 3 else "v0.33.9"
    msgs, go = {}, {}
    for repo, path, pkg in PACKAGES:
        root = api if repo == "api" else machinery
        msgs.update(parse_proto(read(root, path + "/generated.proto"), pkg))
        try:
            go.update(parse_go(read(root, path + "/types.go"), pkg))
        except subprocess.CalledProcessError:
            pass  # resource and intstr: special-cased by the decoder
    seen, todo = set(), list(ROOTS)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        if m not in msgs:
            sys.exit("unknown message " + m)
        seen.add(m)
        for (_, _, _, t, v) in msgs[m]:
            for x in (t, v):
                if x and x not in SCALARS:
                    todo.append(x)
    lines = ["# generated by scripts/gen-protobuf-schema.py; do not edit"]
    for m in sorted(seen):
        lines.append("M " + m)
        for (num, name, card, t, v) in sorted(msgs[m]):
            jname, keep = go.get((m, num), (name, False))
            if card == "m":
                lines.append(f"{num} {jname} m {t} {v}")
            else:
                lines.append(f"{num} {jname} {card} {t}" + (" z" if keep else ""))
    out = os.path.join(os.path.dirname(__file__), "..", "apiserver", "src", "protobuf", "schema.txt")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    open(out, "w").write("\n".join(lines) + "\n")
    print(f"{len(seen)} messages -> {out}")


if __name__ == "__main__":
    main()
