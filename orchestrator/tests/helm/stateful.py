"""helm's release lifecycle of tests/helm/stateful (a StatefulSet with a
claim per replica, a CronJob, RBAC, a CRD and one of its objects) on a
node running pods (tests/helm.rs): argv: kubectl, kubeconfig, chart dir.
Install and upgrade wait with helm 4's watcher (kstatus over watches):
the StatefulSet's pods Ready, the claims Bound, the CRD Established."""
import json, os, subprocess, sys
import helm_python as helm

kubectl, kubeconfig, chart = sys.argv[1], sys.argv[2], sys.argv[3]
env = dict(os.environ, KUBECONFIG=kubeconfig)

def k(*args, check=True):
    r = subprocess.run([kubectl, *args], env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {r.stdout}{r.stderr}")
    return r.stdout.strip()

def jp(*args):
    return k("get", *args[:-1], "-o", f"jsonpath={args[-1]}")

cfg = helm.Config(kubeconfig_path=kubeconfig, namespace="default")

r = cfg.install(chart, "rel", wait="watcher", timeout=120)
assert r["revision"] == 1 and r["status"] == "deployed", r
# crds/ first: the CRD is Established before the chart's Backup is created.
assert jp("crd", "backups.demo.plinth.dev", '{.status.conditions[?(@.type=="Established")].status}') == "True"
assert jp("backup", "rel-nightly", "{.spec.retention} {.spec.target}") == "7 db"
# The watcher waited for the StatefulSet: its pod is Ready, its claim Bound.
assert jp("statefulset", "rel-db", "{.status.readyReplicas}") == "1"
assert jp("pod", "rel-db-0", "{.status.phase}") == "Running"
assert jp("pvc", "data-rel-db-0", "{.status.phase}") == "Bound"
assert k("exec", "rel-db-0", "--", "cat", "/data/owner") == "rel-db-0"
assert jp("cronjob", "rel-backup", "{.spec.schedule}") == "0 3 * * *"
# The chart's Role binds its ServiceAccount to pods and backups, nothing else.
sa = "--as=system:serviceaccount:default:rel-db"
assert k("auth", "can-i", "list", "pods", sa) == "yes"
assert k("auth", "can-i", "list", "backups.demo.plinth.dev", sa) == "yes"
assert k("auth", "can-i", "list", "secrets", sa, check=False) == "no"
refused = subprocess.run([kubectl, "get", "secrets", sa], env=env, capture_output=True, text=True)
assert refused.returncode != 0 and "forbidden" in refused.stderr, refused.stderr

r = cfg.upgrade(chart, "rel", {"replicas": 2, "schedule": "30 4 * * *", "retention": 30}, wait="watcher", timeout=120)
assert r["revision"] == 2 and r["status"] == "deployed", r
assert jp("statefulset", "rel-db", "{.status.readyReplicas}") == "2"
assert jp("pvc", "data-rel-db-1", "{.status.phase}") == "Bound"
assert k("exec", "rel-db-1", "--", "cat", "/data/owner") == "rel-db-1"
assert jp("cronjob", "rel-backup", "{.spec.schedule}") == "30 4 * * *"
assert jp("backup", "rel-nightly", "{.spec.retention}") == "30"
# A bad value is refused by the CRD's schema and the release stays as it was.
try:
    cfg.upgrade(chart, "rel", {"replicas": 2, "schedule": "30 4 * * *", "retention": 0})
    raise SystemExit("an upgrade with retention 0 was accepted")
except helm.HelmError as e:
    assert "spec.retention" in str(e), e
assert jp("backup", "rel-nightly", "{.spec.retention}") == "30"

cfg.rollback("rel", version=1, wait="watcher", timeout=120)
assert jp("statefulset", "rel-db", "{.spec.replicas}") == "1"
assert jp("cronjob", "rel-backup", "{.spec.schedule}") == "0 3 * * *"
assert jp("backup", "rel-nightly", "{.spec.retention}") == "7"
history = [(h["revision"], h["status"]) for h in sorted(cfg.history("rel"), key=lambda h: h["revision"])]
assert history[0] == (1, "superseded") and history[-1][1] == "deployed", history

cfg.uninstall("rel", wait="watcher", timeout=120)
left = k("get", "statefulsets,cronjobs,serviceaccounts,roles,rolebindings,services,backups", "-o", "name")
assert "rel-" not in left, left
# As upstream: a StatefulSet's claims and a chart's crds/ outlive the release.
assert jp("pvc", "data-rel-db-0", "{.status.phase}") == "Bound"
assert jp("crd", "backups.demo.plinth.dev", "{.metadata.name}") == "backups.demo.plinth.dev"
print("helm stateful: ok")
