"""Vendors the Kubernetes .proto files the protobuf transcoder
(src/protobuf.rs) compiles: the stable group versions Plinth serves, from
kube-rs/k8s-pb's collected copy of upstream (k8s-pb-codegen/protos, the
upstream files with packages renamed to their paths). Comments are
dropped to keep the files small, but a field whose upstream comment says
`+optional` keeps a trailing `// +optional`: the transcoder omits the zero
value of those (Go's `omitempty`) and writes it for required fields.

usage: python3 vendor.py K8S_PB_CODEGEN_PROTOS_DIR"""
import os, re, sys

FILES = [
    "apimachinery/pkg/apis/meta/v1", "apimachinery/pkg/runtime", "apimachinery/pkg/runtime/schema",
    "apimachinery/pkg/util/intstr", "apimachinery/pkg/api/resource",
    "apiextensions-apiserver/pkg/apis/apiextensions/v1",
] + ["api/" + g for g in [
    "core/v1", "apps/v1", "batch/v1", "discovery/v1", "coordination/v1", "rbac/v1", "storage/v1",
    "certificates/v1", "policy/v1", "autoscaling/v1", "autoscaling/v2", "networking/v1", "scheduling/v1",
    "admissionregistration/v1", "events/v1", "authentication/v1", "authorization/v1",
]]

src = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
for f in FILES:
    text = open(os.path.join(src, f, "generated.proto")).read()
    text = re.sub(r"/\*.*?\*/", "", text, count=1, flags=re.S)  # the licence header, restated below
    out, optional = ["// Copyright The Kubernetes Authors. Apache License 2.0.",
                     "// Vendored by vendor.py from kube-rs/k8s-pb's copy; comments dropped."], False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("//"):
            optional |= s.startswith("// +optional")
            continue
        if not s:
            continue
        if re.match(r"(optional|repeated|map<)", s) and optional:
            line += " // +optional"
        if not s.startswith("//"):
            optional = False
        out.append(line)
    dst = os.path.join(here, f, "generated.proto")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    open(dst, "w").write("\n".join(out) + "\n")
