"""Checks of the Helm chart in charts/ragpool with the real Helm engine (helm-python-sdk).

Run by scripts/chart-check.sh, which provides helm-python-sdk, kubernetes-validate,
jsonschema and PyYAML in a virtualenv. Each check prints one line; the script exits 1 if any
failed. What is checked:

- the chart's CRD is byte-identical to crds/ragworkerpool.yaml, and is itself a valid
  CustomResourceDefinition;
- `helm lint` reports no warnings or errors;
- the default values and every charts/ragpool/ci/*-values.yaml render; every rendered object
  is valid for Kubernetes (kubernetes-validate, strict: unknown fields are errors), pools are
  valid against the CRD's own openAPIV3Schema, Prometheus monitors against the fields used;
- every pod runs as non-root with a read-only root filesystem, no capabilities,
  seccomp RuntimeDefault, resources, and liveness/readiness probes on a declared port;
  Services, probes and NetworkPolicies name ports that exist;
- the rendered RBAC grants exactly the rules of operator/rbac.yaml;
- what each value set is about is really rendered (ingress, HPA, TLS URL from a Secret, ...);
- bad values are refused by values.schema.json, each case on its own;
- examples/*.yaml are valid RagWorkerPools.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import sys
from collections import Counter
from typing import Any, Callable

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "charts", "ragpool")
CRD = os.path.join(ROOT, "crds", "ragworkerpool.yaml")
RBAC = os.path.join(ROOT, "operator", "rbac.yaml")
# The oldest Kubernetes the operator is built for (k8s-openapi's v1_33) and the newest.
KUBERNETES = os.environ.get("KUBERNETES_VERSIONS", "1.33.0,1.37.0").split(",")
RELEASE, NAMESPACE = "ragpool", "ragpool"
IMAGE = "ragpool:0.1.0"

failures: list[str] = []


def check(name: str, fn: Callable[[], str | None]) -> None:
    """Runs one check; prints `ok` or `FAIL` with the reason."""
    try:
        detail = fn()
    except AssertionError as e:
        failures.append(f"{name}: {e}")
        print(f"FAIL {name}: {e}")
        return
    except helm.HelmError as e:
        failures.append(f"{name}: {type(e).__name__}: {e}")
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        return
    print(f"ok   {name}" + (f": {detail}" if detail else ""))


def load_yaml_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# ----- schemas -------------------------------------------------------------------------


def closed(schema: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation: an object
    with `properties` accepts no other field unless it preserves unknown fields."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def pool_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(open(CRD))
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema = closed(version["schema"]["openAPIV3Schema"])
    # The API server checks these itself; the CRD's schema leaves them out.
    schema["properties"] |= {
        "apiVersion": {"const": f"{crd['spec']['group']}/{version['name']}"},
        "kind": {"const": crd["spec"]["names"]["kind"]},
        "metadata": {"type": "object"},
    }
    return jsonschema.Draft7Validator(schema)


POOL_SCHEMA = pool_validator()

# The fields of the Prometheus Operator's ServiceMonitor and PodMonitor the chart uses (their
# CRDs are not in kubernetes-validate's schemas).
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
    },
}
MONITOR_SCHEMAS = {
    kind: jsonschema.Draft7Validator(
        {
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                "apiVersion": {"const": "monitoring.coreos.com/v1"},
                "metadata": {"type": "object"},
                "spec": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["selector", endpoints],
                    "properties": {
                        "selector": _SELECTOR,
                        endpoints: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                    },
                },
            },
        }
    )
    for kind, endpoints in [("ServiceMonitor", "endpoints"), ("PodMonitor", "podMetricsEndpoints")]
}

# The PrometheusRule fields the chart uses.
MONITOR_SCHEMAS["PrometheusRule"] = jsonschema.Draft7Validator(
    {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["alert", "expr", "labels", "annotations"],
                                        "properties": {
                                            "alert": {"type": "string", "pattern": "^Ragpool[A-Za-z]+$"},
                                            "expr": {"type": "string"},
                                            "for": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                            "annotations": {
                                                "type": "object",
                                                "required": ["summary", "description", "runbook_url"],
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    }
)


def schema_errors(validator: jsonschema.Validator, obj: Any) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


def validate_object(obj: dict[str, Any]) -> list[str]:
    """Errors of one rendered object against its schema."""
    kind = obj.get("kind")
    if kind == "RagWorkerPool":
        return schema_errors(POOL_SCHEMA, obj)
    if kind in MONITOR_SCHEMAS:
        return schema_errors(MONITOR_SCHEMAS[kind], obj)
    errors = []
    for version in KUBERNETES:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(root)"
            errors.append(f"Kubernetes {version}: {path}: {e.message}")
    return errors


# ----- rendering -----------------------------------------------------------------------


def render(values: dict[str, Any], release: str = RELEASE) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            assert "docs/deploy.md" in text, "NOTES.txt does not point to docs/deploy.md"
            continue
        objects.extend(load_yaml_docs(text))
    return objects


def value_sets() -> dict[str, dict[str, Any]]:
    sets = {"default": {}}
    for path in sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml"))):
        name = os.path.basename(path)[: -len("-values.yaml")]
        sets[name] = yaml.safe_load(open(path)) or {}
    return sets


def ident(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o
        for o in objects
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# ----- invariants of every value set ---------------------------------------------------

# What the API server checks beyond the OpenAPI schemas (apimachinery's validation).
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def check_names(objects: list[dict[str, Any]]) -> None:
    """Names, label values, port and variable names as the API server would check them."""
    for o in objects:
        name = o["metadata"]["name"]
        if o["kind"] == "Service":
            assert len(name) <= 63 and DNS_LABEL_1035.match(name), f"Service name {name!r}"
        else:
            assert len(name) <= 253 and DNS_SUBDOMAIN.match(name), f"{o['kind']} name {name!r}"
        if o["kind"] == "StatefulSet":
            # Its pods get a controller-revision-hash label of the name plus 11 characters.
            assert len(name) <= 52, f"StatefulSet name {name!r} too long for its pods' labels"
        labels = dict(o["metadata"].get("labels", {}))
        for w in [o] if o["kind"] in ("Deployment", "StatefulSet") else []:
            labels |= w["spec"]["template"]["metadata"].get("labels", {})
        for key, value in labels.items():
            assert len(value) <= 63 and LABEL_VALUE.match(value), f"{ident(o)}: label {key}={value!r}"
        for w in [o] if o["kind"] in ("Deployment", "StatefulSet") else []:
            for c in w["spec"]["template"]["spec"]["containers"]:
                for port in c.get("ports", []):
                    pn = port.get("name", "")
                    assert len(pn) <= 15 and PORT_NAME.match(pn) and re.search("[a-z]", pn), f"{ident(o)}: port {pn!r}"
                for e in c.get("env", []):
                    assert ENV_NAME.match(e["name"]), f"{ident(o)}: env {e['name']!r}"
        for port in o.get("spec", {}).get("ports", []) if o["kind"] == "Service" else []:
            assert len(port["name"]) <= 15 and PORT_NAME.match(port["name"]), f"{ident(o)}: port {port['name']!r}"



def check_pods(objects: list[dict[str, Any]]) -> None:
    """Every pod: the security settings, resources, and probes on a declared port."""
    for w in workloads(objects):
        pod = w["spec"]["template"]["spec"]
        where = ident(w)
        psc = pod.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot"
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp"
        for c in pod["containers"] + pod.get("initContainers", []):
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem"
            assert sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cw}: capabilities"
            res = c.get("resources", {})
            assert res.get("requests") and res.get("limits"), f"{cw}: resources"
            ports = {p.get("name") for p in c.get("ports", [])} | {
                p["containerPort"] for p in c.get("ports", [])
            }
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in c, f"{cw}: no {probe}"
                action = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                if action:
                    assert action["port"] in ports, f"{cw}: {probe} port {action['port']} undeclared"
                else:
                    assert c[probe].get("exec"), f"{cw}: {probe} has no action"


def check_wiring(objects: list[dict[str, Any]]) -> None:
    """Services select a pod template and target its named port; NetworkPolicies and the
    HPA point at what exists."""
    templates = [
        (w["spec"]["template"]["metadata"].get("labels", {}), w["spec"]["template"]["spec"])
        for w in workloads(objects)
    ]

    def matching(selector: dict[str, str]) -> list[dict[str, Any]]:
        return [
            spec
            for labels, spec in templates
            if all(labels.get(k) == v for k, v in selector.items())
        ]

    def port_names(spec: dict[str, Any]) -> set[str]:
        return {p.get("name") for c in spec["containers"] for p in c.get("ports", [])}

    for svc in find(objects, "Service"):
        pods = matching(svc["spec"]["selector"])
        assert len(pods) == 1, f"{ident(svc)} selects {len(pods)} workloads"
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names(pods[0]), f"{ident(svc)}: {port['targetPort']}"
    for w in workloads(objects):
        selector = w["spec"]["selector"]["matchLabels"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items()), f"{ident(w)}: selector"
    for np in find(objects, "NetworkPolicy"):
        pods = matching(np["spec"]["podSelector"].get("matchLabels", {}))
        executors = np["spec"]["podSelector"].get("matchLabels") == {
            "app.kubernetes.io/name": "ragpool-executor"
        }
        assert pods or executors, f"{ident(np)} selects no pod"
        for rule in np["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if isinstance(port["port"], str) and pods:
                    assert port["port"] in port_names(pods[0]), f"{ident(np)}: {port['port']}"
    for hpa in find(objects, "HorizontalPodAutoscaler"):
        target = one(objects, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], f"{ident(target)} sets replicas beside an HPA"
        cpu = target["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert "cpu" in cpu, f"{ident(target)}: an HPA on CPU needs a CPU request"


def rule_set(rules: list[dict[str, Any]]) -> list[tuple]:
    return sorted(
        (tuple(sorted(r.get("apiGroups", []))), tuple(sorted(r.get("resources", []))), tuple(sorted(r.get("verbs", []))))
        for r in rules
    )


SECRET_RULE = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]


def check_rbac(objects: list[dict[str, Any]], values: dict[str, Any]) -> str:
    """The rendered RBAC has exactly operator/rbac.yaml's rules; only the Secret rule may move
    into per-namespace Roles (or go) as operator.secrets.access says."""
    reference = load_yaml_docs(open(RBAC).read())
    (ref_cluster,) = [o for o in reference if o["kind"] == "ClusterRole"]
    (ref_lease,) = [o for o in reference if o["kind"] == "Role"]
    ref_secret = rule_set(SECRET_RULE)
    assert set(ref_secret) <= set(rule_set(ref_cluster["rules"])), "rbac.yaml lost its Secret rule"
    ref_rest = [r for r in rule_set(ref_cluster["rules"]) if r not in ref_secret]

    prefix = f"{RELEASE}-operator"
    cluster = one(objects, "ClusterRole", prefix)
    lease = one(objects, "Role", f"{prefix}-leader-election")
    secret_roles = find(objects, "Role", f"{prefix}-secrets")
    secrets = values.get("operator", {}).get("secrets", {})
    access = secrets.get("access", "cluster")
    assert rule_set(lease["rules"]) == rule_set(ref_lease["rules"]), "leader election Role differs"
    if access == "cluster":
        assert rule_set(cluster["rules"]) == rule_set(ref_cluster["rules"]), (
            f"ClusterRole differs from operator/rbac.yaml: {rule_set(cluster['rules'])}"
        )
        assert not secret_roles, "Secret Roles beside a cluster-wide Secret rule"
    else:
        assert rule_set(cluster["rules"]) == ref_rest, "ClusterRole differs beyond the Secret rule"
        expected = sorted({NAMESPACE, *secrets.get("namespaces", [])}) if access == "namespaces" else []
        assert sorted(r["metadata"]["namespace"] for r in secret_roles) == expected, (
            f"Secret Roles in {[r['metadata']['namespace'] for r in secret_roles]}, expected {expected}"
        )
        for role in secret_roles:
            assert rule_set(role["rules"]) == ref_secret, f"{ident(role)} rules"
    subjects = [
        (b["kind"], s["name"], s["namespace"])
        for b in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding")
        for s in b["subjects"]
    ]
    assert subjects and all(s[1:] == (prefix, NAMESPACE) for s in subjects), f"bindings: {subjects}"
    assert len(find(objects, "RoleBinding")) == 1 + len(secret_roles), "a Role without binding"
    return f"secrets access {access}"


# ----- what each value set is about ----------------------------------------------------


def api_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment", f"{RELEASE}-api")["spec"]["template"]["spec"]["containers"][0]


def the_pool(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (pool,) = find(objects, "RagWorkerPool")
    return pool


def traced(env: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The OpenTelemetry variables of a container's env (name -> value)."""
    return {k: v.get("value") for k, v in env.items() if k.startswith("OTEL_")}


def traced_values(env: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in env.items() if k.startswith("OTEL_")}


def expect_default(objects: list[dict[str, Any]]) -> None:
    assert not find(objects, "PrometheusRule") and not find(objects, "ConfigMap", f"{RELEASE}-dashboard")
    redis = one(objects, "StatefulSet", f"{RELEASE}-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes", "bundled Redis without appendonly"
    assert args[args.index("--appendfsync") + 1] == "everysec", args
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction", args
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    one(objects, "Secret", f"{RELEASE}-redis")
    env = env_of(api_container(objects))
    url = f"redis://:$(RAGPOOL_REDIS_PASSWORD)@{RELEASE}-redis.{NAMESPACE}.svc:6379"
    assert env["RAGPOOL_REDIS_URL"]["value"] == url, env["RAGPOOL_REDIS_URL"]
    assert list(env).index("RAGPOOL_REDIS_PASSWORD") < list(env).index("RAGPOOL_REDIS_URL"), (
        "$(RAGPOOL_REDIS_PASSWORD) must be defined before the URL that expands it"
    )
    pool = the_pool(objects)
    assert pool["spec"]["executor"]["image"] == IMAGE, pool["spec"]["executor"]["image"]
    assert pool["spec"]["redis"] == {
        "url": f"redis://{RELEASE}-redis.{NAMESPACE}.svc:6379",
        "passwordSecretRef": {"name": f"{RELEASE}-redis", "key": "password"},
        "tls": False,
    }, pool["spec"]["redis"]
    op = one(objects, "Deployment", f"{RELEASE}-operator")
    assert op["spec"]["replicas"] == 1
    op_env = env_of(op["spec"]["template"]["spec"]["containers"][0])
    assert op_env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    for kind in ("Ingress", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget", "ServiceMonitor"):
        assert not find(objects, kind), f"{kind} rendered without being asked for"
    assert "RAGPOOL_API_KEYS_FILE" not in env, "auth on by default"
    assert not {"RAGPOOL_KEY_PREFIX", "RAGPOOL_NAMESPACE"} & env.keys() and "keyPrefix" not in pool["spec"]["redis"], (
        "the default key prefix is every process's default: nothing to set"
    )
    # docs/operations.md, "Sizing the API": the memory limit holds the budget and a baseline.
    budget = int(env["RAGPOOL_MAX_RESERVED_SUBMISSION_BYTES"]["value"])
    assert "RAGPOOL_MAX_INFLIGHT_SUBMISSION_BYTES" not in env, "the budget's older variable is set"
    limit = api_container(objects)["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    assert int(limit[:-2]) * 2**20 >= budget + 64 * 2**20, (limit, budget)
    c = api_container(objects)
    assert env["RAGPOOL_HEALTH_LISTEN"]["value"] == "0.0.0.0:8081", env["RAGPOOL_HEALTH_LISTEN"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "health", c[probe]
    svc = f"{RELEASE}-api"
    assert env["RAGPOOL_ALLOWED_HOSTS"]["value"] == ",".join(
        [svc, f"{svc}.{NAMESPACE}", f"{svc}.{NAMESPACE}.svc", f"{svc}.{NAMESPACE}.svc.cluster.local"]
    ), env["RAGPOOL_ALLOWED_HOSTS"]
    assert "RAGPOOL_ALLOWED_ORIGINS" not in env
    pool_env = {e["name"] for e in pool["spec"]["executor"]["env"]}
    assert not traced(env) and not {n for n in pool_env if n.startswith("OTEL_")}, "traces on by default"
    assert "RAGPOOL_PARTITIONS" not in env and "RAGPOOL_PARTITIONS" not in op_env, (
        "one partition is every process's default: nothing to set"
    )


def expect_bundled_redis(objects: list[dict[str, Any]]) -> None:
    redis = one(objects, "StatefulSet", f"{RELEASE}-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendfsync") + 1] == "always", args
    assert args[args.index("--maxmemory") + 1] == "768mb", args
    claim = redis["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast-ssd" and claim["resources"]["requests"]["storage"] == "20Gi"
    assert {p["metadata"]["name"] for p in find(objects, "PodDisruptionBudget")} == {f"{RELEASE}-api"}
    assert find(objects, "ServiceMonitor") and find(objects, "PodMonitor")
    expect_alerts_and_dashboard(objects)


def expect_alerts_and_dashboard(objects: list[dict[str, Any]]) -> None:
    """The PrometheusRule holds files/alerts.yaml unchanged (its Prometheus templates not taken
    for Helm's), each runbook names a section of docs/operations.md, and the dashboard
    ConfigMap holds valid dashboard JSON whose queries use only ragpool's metrics."""
    rule = one(objects, "PrometheusRule", RELEASE)
    assert rule["metadata"]["labels"]["release"] == "prometheus", rule["metadata"]
    with open(os.path.join(CHART, "files", "alerts.yaml")) as f:
        assert rule["spec"]["groups"] == yaml.safe_load(f)["groups"], "the rules differ from files/alerts.yaml"
    with open(os.path.join(ROOT, "docs", "operations.md")) as f:
        anchors = {
            re.sub(r"[^a-z0-9 -]", "", line[4:].strip().lower()).replace(" ", "-")
            for line in f
            if line.startswith("### ")
        }
    for r in rule["spec"]["groups"][0]["rules"]:
        assert "{{ $labels." in r["annotations"]["summary"], r["alert"]
        anchor = r["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"{r['alert']}: no section #{anchor} in docs/operations.md"
    dashboard = one(objects, "ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1", dashboard["metadata"]
    board = json.loads(dashboard["data"]["ragpool.json"])
    assert board["uid"] == "ragpool-overview" and board["panels"], board.keys()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert re.search(r"\bragpool_[a-z_]+", target["expr"]), target["expr"]


def expect_external_secret_tls(objects: list[dict[str, Any]]) -> None:
    assert not find(objects, "StatefulSet"), "bundled Redis rendered"
    assert not [s for s in find(objects, "Secret") if "redis" in s["metadata"]["name"]]
    env = env_of(api_container(objects))
    assert env["RAGPOOL_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "ragpool-redis", "key": "url"}
    assert "RAGPOOL_REDIS_PASSWORD" not in env
    pool = the_pool(objects)
    assert pool["metadata"]["name"] == "vision"
    assert pool["spec"]["redis"] == {"urlSecretRef": {"name": "ragpool-redis", "key": "url"}, "tls": True}
    assert pool["spec"]["executor"]["image"] == "registry.example.com/ragpool/ragpool:0.1.0"
    assert pool["spec"]["executor"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pool["spec"]["executor"]["terminationGracePeriodSeconds"] == 90
    assert pool["spec"]["executor"]["backend"]["type"] == "openai"
    assert pool["spec"]["executor"]["docs"] == {"configMap": "handbook"}
    assert pool["spec"]["scaling"]["mode"] == "targetWait"


def expect_auth(objects: list[dict[str, Any]]) -> None:
    import base64

    c = api_container(objects)
    env = env_of(c)
    assert env["RAGPOOL_API_KEYS_FILE"]["value"] == "/etc/ragpool/api-keys/api-keys"
    assert env["RAGPOOL_API_KEY_SETTINGS"]["value"] == "alice:weight=3:maxQueued=1000000:maxInFlight=4,ops:maxQueued=50", env["RAGPOOL_API_KEY_SETTINGS"]
    assert "RAGPOOL_ALLOWED_HOSTS" not in env, "with keys any name may reach the API"
    assert env["RAGPOOL_ALLOW_IMAGE_URLS"]["value"] == "true"
    assert env["RAGPOOL_MAX_IMAGE_BYTES"]["value"] == "20971520"
    assert env["RAGPOOL_REDIS_URL"]["value"] == "redis://:$(RAGPOOL_REDIS_PASSWORD)@redis-master.data.svc:6379/0"
    assert env["RAGPOOL_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "redis-password"}
    keys = base64.b64decode(one(objects, "Secret", f"{RELEASE}-api-keys")["data"]["api-keys"]).decode()
    lines = keys.splitlines()
    assert [line.split(":")[0] for line in lines] == ["alice", "ops"], lines
    assert lines[1].endswith(":admin") and not lines[0].endswith(":admin")
    assert all(len(line.split(":")[1]) == 48 for line in lines), "generated keys are 48 characters"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["api-keys"] == "/etc/ragpool/api-keys"
    pool = the_pool(objects)
    assert pool["spec"]["redis"]["passwordSecretRef"] == {"name": "redis-auth", "key": "redis-password"}


def expect_ingress_hpa_netpol(objects: list[dict[str, Any]]) -> None:
    ingress = one(objects, "Ingress", f"{RELEASE}-api")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["secretName"] == "rag-example-com-tls"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RELEASE}-api", "port": {"name": "http"}}, backend
    hpa = one(objects, "HorizontalPodAutoscaler", f"{RELEASE}-api")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    op = one(objects, "Deployment", f"{RELEASE}-operator")
    assert op["spec"]["replicas"] == 2
    op_env = env_of(op["spec"]["template"]["spec"]["containers"][0])
    assert op_env["RAGPOOL_OPERATOR_LEADERSHIP"]["value"] == "true"
    assert op["spec"]["template"]["spec"]["topologySpreadConstraints"]
    policies = {p["metadata"]["name"]: p for p in find(objects, "NetworkPolicy")}
    assert set(policies) == {f"{RELEASE}-{n}" for n in ("api", "operator", "executors", "redis")}, set(policies)
    redis_from = policies[f"{RELEASE}-redis"]["spec"]["ingress"][0]["from"]
    components = {
        p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        or p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
        for p in redis_from
    }
    assert components == {"api", "operator", "ragpool-executor"}, components
    api_rule = policies[f"{RELEASE}-api"]["spec"]["ingress"]
    assert api_rule == [
        {"ports": [{"port": "http", "protocol": "TCP"}, {"port": "health", "protocol": "TCP"}]}
    ], api_rule
    for name in ("operator", "executors"):
        peers = policies[f"{RELEASE}-{name}"]["spec"]["ingress"][0]["from"]
        assert peers[0] == {"podSelector": {}} and len(peers) == 2, peers
    pdbs = {p["metadata"]["name"] for p in find(objects, "PodDisruptionBudget")}
    assert pdbs == {f"{RELEASE}-api", f"{RELEASE}-operator"}, pdbs
    assert not find(objects, "Secret", f"{RELEASE}-api-keys"), "generated keys beside existingSecret"
    volumes = api_container(objects)  # the keys come from the user's Secret
    assert env_of(volumes)["RAGPOOL_API_KEYS_FILE"]
    # Traces: the API and the pool's executors export to the collector, each under its name.
    executor_env = {e["name"]: e.get("value") for e in the_pool(objects)["spec"]["executor"]["env"]}
    for env, service in ((traced(env_of(api_container(objects))), "ragpool-api"), (traced_values(executor_env), "rag-executor")):
        assert env == {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        }, env


def expect_sentinel(objects: list[dict[str, Any]]) -> None:
    assert not find(objects, "StatefulSet"), "bundled Redis rendered"
    env = env_of(api_container(objects))
    assert env["RAGPOOL_REDIS_URL"]["value"] == (
        "redis+sentinel://:$(RAGPOOL_REDIS_PASSWORD)@redis.redis.svc:26379/mymaster/0"
    ), env["RAGPOOL_REDIS_URL"]
    assert env["RAGPOOL_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "redis-password"}
    assert "RAGPOOL_REDIS_SENTINEL_PASSWORD" not in env, "the sentinels share the data nodes' password"
    assert env["RAGPOOL_DURABILITY"]["value"] == "replicated"
    pool = the_pool(objects)
    assert pool["spec"]["redis"] == {
        "sentinel": {"masterName": "mymaster", "addresses": ["redis.redis.svc:26379"], "noPassword": False, "db": 0},
        "passwordSecretRef": {"name": "redis", "key": "redis-password"},
        "tls": False,
        "durability": "replicated",
    }, pool["spec"]["redis"]


def expect_cluster(objects: list[dict[str, Any]]) -> None:
    assert not find(objects, "StatefulSet"), "bundled Redis rendered"
    env = env_of(api_container(objects))
    assert env["RAGPOOL_REDIS_URL"]["value"] == (
        "redis+cluster://:$(RAGPOOL_REDIS_PASSWORD)@redis-cluster.redis.svc:6379"
    ), env["RAGPOOL_REDIS_URL"]
    # Every process of the namespace gets the same count: the API, the pool, the operator.
    assert env["RAGPOOL_PARTITIONS"]["value"] == "6", env.get("RAGPOOL_PARTITIONS")
    pool = the_pool(objects)
    assert pool["spec"]["redis"]["partitions"] == 6, pool["spec"]["redis"]
    op = one(objects, "Deployment", f"{RELEASE}-operator")
    op_env = env_of(op["spec"]["template"]["spec"]["containers"][0])
    assert op_env["RAGPOOL_PARTITIONS"]["value"] == "6", op_env.get("RAGPOOL_PARTITIONS")
    # The key prefix: the API's and the pool's are one value.
    assert env["RAGPOOL_KEY_PREFIX"]["value"] == "rag-prod", env.get("RAGPOOL_KEY_PREFIX")
    assert "RAGPOOL_NAMESPACE" not in env, "the old variable is read only when the new one is unset"
    assert pool["spec"]["redis"]["keyPrefix"] == "rag-prod", pool["spec"]["redis"]


def expect_no_secrets(objects: list[dict[str, Any]]) -> None:
    assert not find(objects, "RagWorkerPool")
    assert not find(objects, "Secret")


EXPECTATIONS: dict[str, Callable[[list[dict[str, Any]]], None]] = {
    "default": expect_default,
    "bundled-redis": expect_bundled_redis,
    "external-secret-tls": expect_external_secret_tls,
    "auth": expect_auth,
    "ingress-hpa-netpol": expect_ingress_hpa_netpol,
    "no-secrets": expect_no_secrets,
    "sentinel": expect_sentinel,
    "cluster": expect_cluster,
}


def check_value_set(name: str, values: dict[str, Any]) -> str:
    objects = render(values)
    errors = [f"{ident(o)}: {e}" for o in objects for e in validate_object(o)]
    assert not errors, "invalid objects:\n    " + "\n    ".join(errors)
    names = Counter(ident(o) + "@" + o["metadata"].get("namespace", "") for o in objects)
    assert max(names.values()) == 1, f"duplicate objects: {[n for n, c in names.items() if c > 1]}"
    check_pods(objects)
    check_names(objects)
    check_wiring(objects)
    rbac = check_rbac(objects, values)
    assert name in EXPECTATIONS, f"no expectations written for value set {name}"
    EXPECTATIONS[name](objects)
    kinds = Counter(o["kind"] for o in objects)
    return f"{len(objects)} objects ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}); {rbac}"


# ----- refused values ------------------------------------------------------------------

BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    # (case, values, the place the refusal must name)
    ("negative operator replicas", {"operator": {"replicas": -1}}, "/operator/replicas"),
    ("negative API replicas", {"api": {"replicas": -2}}, "/api/replicas"),
    ("unknown top-level key", {"operatr": {"replicas": 2}}, "'operatr' not allowed"),
    ("unknown nested key", {"api": {"ingress": {"enable": True}}}, "'enable' not allowed"),
    ("a key's weight of 0", {"api": {"auth": {"keySettings": {"batch": {"weight": 0}}}}}, "/api/auth/keySettings/batch/weight"),
    ("an unknown key setting", {"api": {"auth": {"keySettings": {"batch": {"maxinflight": 2}}}}}, "'maxinflight' not allowed"),
    ("wrong type: replicas as a string", {"operator": {"replicas": "two"}}, "/operator/replicas"),
    ("wrong type: auth.enabled as a string", {"api": {"auth": {"enabled": "yes"}}}, "/api/auth/enabled"),
    ("wrong type: image.tag as a number", {"image": {"tag": 1.5}}, "/image/tag"),
    ("two operator replicas without leadership", {"operator": {"replicas": 2, "leadership": False}}, "/operator/leadership"),
    ("two operator replicas without leadership, older name", {"operator": {"replicas": 2, "leaderElection": False}}, "/operator/leaderElection"),
    ("redis.url beside the bundled Redis", {"redis": {"url": "redis://r:6379"}}, "/redis/url"),
    ("no Redis at all", {"redis": {"bundled": {"enabled": False}}}, "/redis/existingSecret"),
    ("both redis.url and redis.existingSecret", {"redis": {"bundled": {"enabled": False}, "url": "redis://r:6379", "existingSecret": "s"}}, "'not' failed"),
    ("a URL that is no Redis URL", {"redis": {"bundled": {"enabled": False}, "url": "http://r:6379"}}, "/redis/url"),
    ("appendfsync no", {"redis": {"bundled": {"appendfsync": "no"}}}, "/redis/bundled/appendfsync"),
    ("redis.sentinel beside the bundled Redis", {"redis": {"sentinel": {"enabled": True, "addresses": ["s:26379"]}}}, "/redis/sentinel/enabled"),
    ("redis.sentinel without addresses", {"redis": {"bundled": {"enabled": False}, "sentinel": {"enabled": True}}}, "/redis/sentinel/addresses"),
    ("redis.sentinel beside redis.url", {"redis": {"bundled": {"enabled": False}, "url": "redis://r:6379", "sentinel": {"enabled": True, "addresses": ["s:26379"]}}}, "/redis/url"),
    ("an unknown durability", {"redis": {"durability": "quorum"}}, "/redis/durability"),
    ("zero partitions", {"redis": {"partitions": 0}}, "/redis/partitions"),
    ("more partitions than 64", {"redis": {"partitions": 65}}, "/redis/partitions"),
    ("a key prefix with a hash-tag brace", {"redis": {"keyPrefix": "a{b}"}}, "/redis/keyPrefix"),
    ("unknown secrets access", {"operator": {"secrets": {"access": "some"}}}, "/operator/secrets/access"),
    ("pool without queues", {"defaultPool": {"queues": {"names": []}}}, "/defaultPool/queues/names"),
    ("a trace endpoint that is no URL", {"traces": {"endpoint": "otel-collector:4318"}}, "/traces/endpoint"),
    ("a sampler ratio above 1", {"traces": {"samplerArg": "1.5"}}, "/traces/samplerArg"),
]

# Values the schema cannot judge (they depend on two settings' meaning); the templates fail
# with a message instead.
FAILING_TEMPLATES: list[tuple[str, dict[str, Any], str]] = [
    (
        "a pool needing a Secret the operator may not read",
        {"operator": {"secrets": {"access": "none"}}},
        "operator.secrets.access=none",
    ),
    (
        "grace period not above the drain",
        {"defaultPool": {"executor": {"drainSeconds": 60, "terminationGracePeriodSeconds": 30}}},
        "terminationGracePeriodSeconds",
    ),
    (
        "a password Secret beside credentials in the URL",
        {"redis": {"bundled": {"enabled": False}, "url": "redis://u:p@r:6379", "passwordSecret": "s"}},
        "already holds credentials",
    ),
]


def refused_by_schema(values: dict[str, Any], needle: str) -> Callable[[], str]:
    def run() -> str:
        with helm.Chart.load(CHART) as chart:
            try:
                chart.validate_schema(values)
            except helm.HelmValuesError as e:
                message = str(e)
            else:
                raise AssertionError("values.schema.json accepted it")
        assert needle in message, f"refused, but the message does not name {needle!r}: {message}"
        # An install validates the same way: rendering must refuse it too.
        try:
            render(values)
        except helm.HelmError:
            pass
        else:
            raise AssertionError("the schema refused it but rendering accepted it")
        return message.replace("\n", " ")[:160]

    return run


def refused_by_template(values: dict[str, Any], needle: str, release: str = RELEASE) -> Callable[[], str]:
    def run() -> str:
        try:
            render(values, release)
        except helm.HelmRenderError as e:
            assert needle in str(e), f"refused, but not for the reason expected: {e}"
            return needle
        raise AssertionError("rendered without complaint")

    return run


# ----- the rest ------------------------------------------------------------------------


def check_crd_copy() -> str:
    source, copy_ = open(CRD, "rb").read(), open(os.path.join(CHART, "crds", "ragworkerpool.yaml"), "rb").read()
    assert source == copy_, "charts/ragpool/crds/ragworkerpool.yaml differs from crds/ragworkerpool.yaml: cp crds/ragworkerpool.yaml charts/ragpool/crds/"
    with helm.Chart.load(CHART) as chart:
        assert [c["name"] for c in chart.crds] == ["crds/ragworkerpool.yaml"], chart.crds
    (crd,) = load_yaml_docs(source.decode())
    errors = validate_object(crd)
    assert not errors, errors
    return f"{len(source)} bytes, identical; a valid CustomResourceDefinition"


def check_lint() -> str:
    report = helm.lint(CHART, strict=True, kube_version=f"v{KUBERNETES[-1]}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
    return f"{len(report['messages'])} informational message(s)"


def check_examples() -> str:
    paths = sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml")))
    assert paths, "no examples"
    for path in paths:
        for doc in load_yaml_docs(open(path).read()):
            errors = validate_object(doc)
            assert not errors, f"{os.path.basename(path)}: {errors}"
            assert doc["spec"]["executor"]["image"] == IMAGE, f"{path}: image {doc['spec']['executor']['image']}"
    return ", ".join(os.path.basename(p) for p in paths)


def check_long_release_name() -> str:
    """Helm allows release names of 53 characters; every name must still be valid."""
    release = "a-very-long-release-name-for-ragpool-on-a-big-cluster"
    assert len(release) == 53
    objects = render({"networkPolicy": {"enabled": True}, "api": {"auth": {"enabled": True}}}, release)
    check_names(objects)
    errors = [f"{ident(o)}: {e}" for o in objects for e in validate_object(o)]
    assert not errors, errors
    longest = max((o["metadata"]["name"] for o in objects), key=len)
    return f"longest name {longest} ({len(longest)})"


def check_older_leadership_names() -> str:
    """`operator.leaderElection` and `operator.leaseSeconds`, the older names of
    `leadership` and `leadershipSeconds`, still reach the operator, and win when set."""
    def operator_env(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
        op = one(render(values), "Deployment", f"{RELEASE}-operator")
        return env_of(op["spec"]["template"]["spec"]["containers"][0])
    new = operator_env({"operator": {"leadership": False, "leadershipSeconds": 20}})
    assert new["RAGPOOL_OPERATOR_LEADERSHIP"]["value"] == "false", new
    assert new["RAGPOOL_OPERATOR_LEADERSHIP_SECONDS"]["value"] == "20", new
    old = operator_env({"operator": {"leaderElection": False, "leaseSeconds": 40}})
    assert old["RAGPOOL_OPERATOR_LEADERSHIP"]["value"] == "false", old
    assert old["RAGPOOL_OPERATOR_LEADERSHIP_SECONDS"]["value"] == "40", old
    return "leaderElection and leaseSeconds still read"


def check_older_budget_name() -> str:
    """`api.maxInflightSubmissionBytes`, the older name of `maxReservedSubmissionBytes`, still
    reaches the API, and wins when set."""
    def budget(values: dict[str, Any]) -> str:
        return env_of(api_container(render(values)))["RAGPOOL_MAX_RESERVED_SUBMISSION_BYTES"]["value"]
    assert budget({"api": {"maxReservedSubmissionBytes": 100 * 2**20}}) == str(100 * 2**20)
    old = {"api": {"maxReservedSubmissionBytes": 100 * 2**20, "maxInflightSubmissionBytes": 50 * 2**20}}
    assert budget(old) == str(50 * 2**20), budget(old)
    return "maxInflightSubmissionBytes still read"


def check_validators_catch_mistakes() -> str:
    """The validators above must be able to fail: a misspelt field, a wrong type and a value
    out of range each give an error."""
    objects = render({})
    deployment = copy.deepcopy(find(objects, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    service = copy.deepcopy(find(objects, "Service")[0])
    service["spec"]["ports"][0]["port"] = "http"
    pool = copy.deepcopy(the_pool(objects))
    pool["spec"]["scaling"]["maxReplica"] = 3
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {},
               "spec": {"selector": {}, "endpoints": [{"port": "http", "scrapeEvery": "1s"}]}}
    for broken in (deployment, service, pool, monitor):
        assert validate_object(broken), f"{ident(broken)} with a mistake passed validation"
    pool = copy.deepcopy(the_pool(objects))
    pool["spec"]["executor"]["concurrency"] = 0
    assert validate_object(pool), "concurrency 0 passed the CRD schema"
    return "unknown field, wrong type, out of range: all caught"


def main() -> int:
    helm.disable_logging() if hasattr(helm, "disable_logging") else None
    print(f"helm SDK {helm.helm_sdk_version()}, Kubernetes schemas {' and '.join(KUBERNETES)} (strict)")
    check("CRD copy", check_crd_copy)
    check("helm lint --strict", check_lint)
    check("validators catch mistakes", check_validators_catch_mistakes)
    check("53-character release name", check_long_release_name)
    check("older leadership value names", check_older_leadership_names)
    check("older budget value name", check_older_budget_name)
    for name, values in value_sets().items():
        check(f"render {name}", lambda v=values, n=name: check_value_set(n, copy.deepcopy(v)))
    for name, values, needle in BAD_VALUES:
        check(f"refused: {name}", refused_by_schema(values, needle))
    for name, values, needle in FAILING_TEMPLATES:
        check(f"refused: {name}", refused_by_template(values, needle))
    # Helm accepts release names starting with a digit; Service names may not.
    check("refused: a release name starting with a digit", refused_by_template({}, "must start with a letter", "7rag"))
    check("examples are valid RagWorkerPools", check_examples)
    if failures:
        print(f"\n{len(failures)} chart check(s) failed")
        return 1
    print("\nall chart checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
