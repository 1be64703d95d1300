#!/usr/bin/env python3
"""The two cluster add-ons scripts/cluster.sh's one-node cluster has no image for, in one poll loop.

Once a second it lists Services, Endpoints, PersistentVolumeClaims and PersistentVolumes with
kubectl ($KUBECONFIG) and:

* cluster DNS: keeps one hosts file per Service in --state/dns, which dnsmasq (--hostsdir) re-reads
  by itself: `<svc>.<ns>.svc.cluster.local` → the ClusterIP, or for a headless Service → every
  endpoint address, plus `<hostname>.<svc>.<ns>.svc.cluster.local` for endpoints with a hostname
  (StatefulSet pods);
* volumes: a dynamic provisioner for the StorageClass whose provisioner is --provisioner. For a
  claim the scheduler has placed (annotation volume.kubernetes.io/selected-node) it creates a
  directory under --state/pv and a `local` PersistentVolume bound to that claim with node affinity
  to --node (local volumes honour fsGroup; hostPath ones do not). Released volumes it provisioned
  are deleted with their directories (reclaim policy Delete).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

SELECTED_NODE = "volume.kubernetes.io/selected-node"
PROVISIONER_ANN = ("volume.beta.kubernetes.io/storage-provisioner", "volume.kubernetes.io/storage-provisioner")
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


def log(msg):
    print(f"agent: {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def kubectl(*args, stdin=None):
    return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=30)


def dns_files(items):
    services = {}
    endpoints = {}
    for o in items:
        if o["kind"] not in ("Service", "Endpoints"):
            continue
        key = (o["metadata"]["namespace"], o["metadata"]["name"])
        (services if o["kind"] == "Service" else endpoints)[key] = o
    files = {}
    for (ns, name), svc in services.items():
        fqdn = f"{name}.{ns}.svc.cluster.local"
        ip = svc["spec"].get("clusterIP")
        lines = []
        if ip and ip != "None":
            lines.append(f"{ip} {fqdn}")
        elif ip == "None":
            for subset in (endpoints.get((ns, name)) or {}).get("subsets") or []:
                for addr in subset.get("addresses") or []:
                    lines.append(f"{addr['ip']} {fqdn}")
                    if addr.get("hostname"):
                        lines.append(f"{addr['ip']} {addr['hostname']}.{fqdn}")
        if lines:
            files[f"{ns}_{name}"] = "\n".join(sorted(set(lines))) + "\n"
    return files


def sync_dns(dns_dir, files):
    present = set(os.listdir(dns_dir))
    for fname, content in files.items():
        path = os.path.join(dns_dir, fname)
        try:
            with open(path) as f:
                if f.read() == content:
                    continue
        except FileNotFoundError:
            pass
        tmp = os.path.join(dns_dir, "." + fname)
        with open(tmp, "w") as f:
            f.write(content)
        os.rename(tmp, path)
        log(f"dns: {fname}: {content.strip()!r}")
    for fname in present - set(files) - {f for f in present if f.startswith(".")}:
        os.unlink(os.path.join(dns_dir, fname))
        log(f"dns: removed {fname}")


def provision(items, args):
    pvs = {o["metadata"]["name"]: o for o in items if o["kind"] == "PersistentVolume"}
    for pvc in (o for o in items if o["kind"] == "PersistentVolumeClaim"):
        meta = pvc["metadata"]
        ann = meta.get("annotations") or {}
        if pvc.get("status", {}).get("phase") != "Pending" or pvc["spec"].get("volumeName"):
            continue
        if args.provisioner not in (ann.get(a) for a in PROVISIONER_ANN):
            continue
        if ann.get(SELECTED_NODE) != args.node:
            continue
        name = f"pvc-{meta['uid']}"
        if name in pvs:
            continue
        path = os.path.join(args.state, "pv", name)
        os.makedirs(path, exist_ok=True)
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: args.provisioner}},
            "spec": {
                "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]},
                "accessModes": pvc["spec"].get("accessModes") or ["ReadWriteOnce"],
                "volumeMode": pvc["spec"].get("volumeMode", "Filesystem"),
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": pvc["spec"].get("storageClassName"),
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                "local": {"path": path},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [args.node]}]}]}},
            },
        }
        r = kubectl("create", "-f", "-", stdin=json.dumps(pv))
        log(f"pv: {name} for {meta['namespace']}/{meta['name']}: {(r.stdout or r.stderr).strip()}")
    for name, pv in pvs.items():
        ann = pv["metadata"].get("annotations") or {}
        if ann.get(PROVISIONED_BY) != args.provisioner:
            continue
        if pv.get("status", {}).get("phase") not in ("Released", "Failed"):
            continue
        if pv["spec"].get("persistentVolumeReclaimPolicy") != "Delete":
            continue
        shutil.rmtree(os.path.join(args.state, "pv", name), ignore_errors=True)
        r = kubectl("delete", "pv", name, "--wait=false")
        log(f"pv: deleted {name}: {(r.stdout or r.stderr).strip()}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--state", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--provisioner", required=True)
    args = p.parse_args()
    os.environ.setdefault("KUBECONFIG", os.path.join(args.state, "kubeconfig"))
    dns_dir = os.path.join(args.state, "dns")
    os.makedirs(dns_dir, exist_ok=True)
    while True:
        try:
            r = kubectl("get", "services,endpoints,persistentvolumeclaims,persistentvolumes",
                        "--all-namespaces", "-o", "json")
            if r.returncode == 0:
                items = json.loads(r.stdout)["items"]
                sync_dns(dns_dir, dns_files(items))
                provision(items, args)
            else:
                log(f"kubectl: {r.stderr.strip()}")
        except Exception as e:  # keep going: the API may be restarting
            log(f"error: {e!r}")
        time.sleep(1)


if __name__ == "__main__":
    main()
