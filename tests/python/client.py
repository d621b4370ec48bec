"""The official Python `kubernetes` client against the agent's API, with
the admin kubeconfig the agent wrote: version, list, create, get, patch
(strategic merge and JSON patch), dry runs, chunked list, watch and
delete.
Usage: client.py <kubeconfig>. Prints one line per step; exits non-zero
on the first failure."""
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()

print("version", client.VersionApi().get_code().git_version)
names = [n.metadata.name for n in core.list_namespace().items]
assert "default" in names, names

# A watch from now on sees what follows.
seen = []
started = threading.Event()


def watcher():
    w = watch.Watch()
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    started.set()
    for ev in w.stream(core.list_namespaced_config_map, "default",
                       resource_version=rv, timeout_seconds=60):
        if ev["object"].metadata.name == "py":
            seen.append(ev["type"])
        if ev["type"] == "DELETED" and ev["object"].metadata.name == "py":
            w.stop()


t = threading.Thread(target=watcher)
t.start()
started.wait(30)

cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}),
                        data={"a": "1"})
core.create_namespaced_config_map("default", cm)
try:
    core.create_namespaced_config_map("default", cm)
    sys.exit("a second create succeeded")
except ApiException as e:
    assert e.status == 409, e
    print("create twice: 409", e.reason)

got = core.read_namespaced_config_map("py", "default")
assert got.data == {"a": "1"}, got.data

# A server-side dry run answers as the write would and keeps nothing.
dry = core.create_namespaced_config_map("default", client.V1ConfigMap(
    metadata=client.V1ObjectMeta(name="py-dry")), dry_run="All")
assert dry.metadata.name == "py-dry" and dry.metadata.uid, dry.metadata
try:
    core.read_namespaced_config_map("py-dry", "default")
    sys.exit("a dry-run create was kept")
except ApiException as e:
    assert e.status == 404, e
core.patch_namespaced_config_map("py", "default", {"data": {"a": "dry"}}, dry_run="All")
core.delete_namespaced_config_map("py", "default", dry_run="All")
assert core.read_namespaced_config_map("py", "default").data == {"a": "1"}
print("dry run: nothing kept")
core.patch_namespaced_config_map("py", "default", {"data": {"b": "2"}})
core.patch_namespaced_config_map(
    "py", "default", [{"op": "add", "path": "/metadata/labels/x", "value": "y"}])
got = core.read_namespaced_config_map("py", "default")
assert got.data == {"a": "1", "b": "2"}, got.data
assert got.metadata.labels == {"from": "python", "x": "y"}, got.metadata.labels
sel = core.list_namespaced_config_map("default", label_selector="from=python")
assert [c.metadata.name for c in sel.items] == ["py"], sel.items
print("patched", got.metadata.resource_version)

# Chunked list: every page, then the end.
for i in range(3):
    core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=f"chunk-{i}")))
pages, token, total = 0, None, 0
while True:
    page = core.list_namespaced_config_map("default", limit=2, _continue=token)
    pages += 1
    total += len(page.items)
    token = page.metadata._continue
    if not token:
        break
assert pages >= 2 and total >= 4, (pages, total)
print("chunked", pages, "pages", total, "items")

d = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="py-web"),
    spec=client.V1DeploymentSpec(
        replicas=0,
        selector=client.V1LabelSelector(match_labels={"app": "py-web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "py-web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]))))
apps.create_namespaced_deployment("default", d)
assert apps.read_namespaced_deployment("py-web", "default").spec.replicas == 0
apps.delete_namespaced_deployment("py-web", "default")

core.delete_namespaced_config_map("py", "default")
t.join(60)
# Two patches, one delete: the dry runs made no events.
assert seen == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"], seen
print("watched", seen)
try:
    core.read_namespaced_config_map("py", "default")
    sys.exit("read after delete succeeded")
except ApiException as e:
    assert e.status == 404, e
print("ok")
