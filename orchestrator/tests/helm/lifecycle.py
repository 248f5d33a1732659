"""helm's release lifecycle against the API server (tests/helm.rs):
argv: kubectl, kubeconfig."""
import json, os, subprocess, sys, tempfile
import helm_python as helm

kubectl, kubeconfig = sys.argv[1], sys.argv[2]
env = dict(os.environ, KUBECONFIG=kubeconfig)

def k(*args):
    return subprocess.run([kubectl, *args], env=env, check=True, capture_output=True, text=True).stdout

def replicas():
    return json.loads(k("get", "deployment", "demo", "-o", "json"))["spec"]["replicas"]

def release_secrets():
    out = k("get", "secrets", "-l", "owner=helm,name=demo", "-o", "jsonpath={.items[*].metadata.name}")
    return sorted(out.split())

work = tempfile.TemporaryDirectory()
# `helm create`: the chart's default templates (Deployment, Service,
# ServiceAccount, test hook); the image need not be pulled: no kubelet.
helm.Chart.create("demo", work.name)
chart = os.path.join(work.name, "demo")
cfg = helm.Config(kubeconfig_path=kubeconfig, namespace="default")
image = {"image": {"repository": "busybox", "tag": "latest"}}

r = cfg.install(chart, "demo", image)
assert r["revision"] == 1 and r["status"] == "deployed", r
assert replicas() == 1
assert k("get", "service", "demo", "-o", "jsonpath={.spec.ports[0].port}") == "80"
assert release_secrets() == ["sh.helm.release.v1.demo.v1"], release_secrets()
# The release record itself moved from pending-install to deployed.
status = k("get", "secret", "sh.helm.release.v1.demo.v1", "-o", "jsonpath={.metadata.labels.status}")
assert status == "deployed", status

r = cfg.upgrade(chart, "demo", dict(image, replicaCount=2))
assert r["revision"] == 2 and r["status"] == "deployed", r
assert replicas() == 2

cfg.rollback("demo", version=1)
assert replicas() == 1
history = sorted((h["revision"], h["status"]) for h in cfg.history("demo"))
assert history == [(1, "superseded"), (2, "superseded"), (3, "deployed")], history

# The chart's optional HorizontalPodAutoscaler (autoscaling/v2) and Ingress.
r = cfg.upgrade(chart, "demo", dict(image, ingress={"enabled": True}, autoscaling={"enabled": True}))
assert r["revision"] == 4 and r["status"] == "deployed", r
hpa = k("get", "hpa", "demo", "-o", "jsonpath={.spec.scaleTargetRef.name} {.spec.maxReplicas}")
assert hpa == "demo 100", hpa
host = k("get", "ingress", "demo", "-o", "jsonpath={.spec.rules[0].host}")
assert host == "chart-example.local", host

cfg.uninstall("demo")
assert release_secrets() == [], release_secrets()
assert k("get", "deployments,services,serviceaccounts,hpa,ingresses", "-l", "app.kubernetes.io/instance=demo", "-o", "name") == ""
print("helm: ok")
