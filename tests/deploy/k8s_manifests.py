"""Build deploy/k8s with kustomize and validate what it produces, offline.

Built-in kinds are checked against the Kubernetes OpenAPI schemas (``kubernetes-validate``,
strict: unknown fields are errors, as ``kubectl apply`` rejects them); custom resources against
the ``openAPIV3Schema`` of their CRDs (KubeRay, prometheus-operator) made strict the same way.
Every error names the source file (kustomize's origin annotation), the object and the reason.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from tests.tools import require_tool

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
KUBERNETES_VERSION = "1.32.0"
ORIGIN = "config.kubernetes.io/origin"


class ManifestError(AssertionError):
    """A kustomization that does not build, or objects that do not validate; the message says where and why."""


def build(kustomization: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` builds from ``kustomization``."""
    kubectl = require_tool("kubectl", "install kubectl (it bundles kustomize)")
    done = subprocess.run([kubectl, "kustomize", str(kustomization)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise ManifestError(f"{kustomization}: kustomize build failed: {done.stderr.strip()}")
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def origin(obj: dict[str, Any]) -> str:
    """The file an object was built from (kustomize's origin annotation), or '?'."""
    text = obj.get("metadata", {}).get("annotations", {}).get(ORIGIN)
    return yaml.safe_load(text).get("path", "?") if text else "?"


def describe(obj: dict[str, Any]) -> str:
    return f"{origin(obj)}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def _strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists its properties
    and does not preserve unknown fields (the API server's strict field validation)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def crd_schemas(crd_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, from every CRD file under ``crd_dir``."""
    schemas = {}
    for path in sorted(crd_dir.rglob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            schemas[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return schemas


def validation_errors(objs: list[dict[str, Any]], crds: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """One line per problem: ``file: Kind/name: field.path: reason``; empty when all is valid."""
    errors = []
    for obj in objs:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in crds:
            validator = jsonschema.Draft7Validator(crds[key])
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
                errors.append(f"{describe(obj)}: {_path(error.path)}: {error.message}")
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{describe(obj)}: no schema for {key[0]} {key[1]} (neither Kubernetes "
                          f"{KUBERNETES_VERSION} nor a CRD under the reference CRDs)")
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{describe(obj)}: {_path(error.path)}: {error.message}")
    return errors


def _path(path) -> str:
    return ".".join(str(part) for part in path) or "(object)"


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod an object creates: workloads and the RayJob's groups."""
    for where, template, _ in replicated_pod_templates(obj):
        yield where, template


def replicated_pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(where, pod template, how many pods of it run) for every pod an object creates."""
    spec = obj.get("spec", {})
    if obj["kind"] in ("StatefulSet", "Deployment"):
        yield describe(obj), spec["template"], spec.get("replicas", 1)
    elif obj["kind"] in ("DaemonSet", "Job"):
        yield describe(obj), spec["template"], 1
    elif obj["kind"] == "RayJob":
        cluster = spec["rayClusterSpec"]
        yield f"{describe(obj)} head", cluster["headGroupSpec"]["template"], 1
        for group in cluster["workerGroupSpecs"]:
            yield f"{describe(obj)} group {group['groupName']}", group["template"], group["replicas"]
        if "submitterPodTemplate" in spec:
            yield f"{describe(obj)} submitter", spec["submitterPodTemplate"], 1


def labels_match(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions with In) selects ``labels``."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def service_backends(objs: list[dict[str, Any]], service: str, port: int | str) -> list[tuple[str, dict, int]]:
    """(where, pod labels, container port) of every pod template a Service's ``port`` (its number
    or name) reaches, through the Service's selector and targetPort."""
    svc = find(objs, "Service", service)
    [entry] = [p for p in svc["spec"]["ports"] if port in (p["port"], p.get("name"))]
    target = entry.get("targetPort", entry["port"])
    backends = []
    for obj in objs:
        for where, template in pod_templates(obj):
            if not labels_match({"matchLabels": svc["spec"]["selector"]}, template["metadata"]["labels"]):
                continue
            for container in template["spec"]["containers"]:
                for p in container.get("ports", []):
                    if target in (p["containerPort"], p.get("name")):
                        backends.append((where, template["metadata"]["labels"], p["containerPort"]))
    return backends


def scrape_targets(objs: list[dict[str, Any]]) -> list[tuple[str, dict, int]]:
    """(where, pod labels, container port) of every pod port a ServiceMonitor has Prometheus scrape."""
    targets = []
    for monitor in (o for o in objs if o["kind"] == "ServiceMonitor"):
        for svc in (o for o in objs if o["kind"] == "Service"
                    and labels_match(monitor["spec"]["selector"], o["metadata"].get("labels", {}))):
            for endpoint in monitor["spec"]["endpoints"]:
                targets += service_backends(objs, svc["metadata"]["name"], endpoint["port"])
    return targets


def network_allows(objs: list[dict[str, Any]], source: dict, target: dict, port: int, protocol: str = "TCP",
                   source_in_namespace: bool = True, target_in_namespace: bool = True) -> bool:
    """Whether the NetworkPolicies let a pod labelled ``source`` open a connection to a pod labelled
    ``target`` on ``port``: egress from the one and ingress to the other, each allowed when no policy
    of that direction selects the pod or one of them has a rule for the peer and port. A pod outside
    the manifests' namespace (``*_in_namespace=False``) is governed by none of them."""
    policies = [o["spec"] for o in objs if o["kind"] == "NetworkPolicy"]

    def allowed(direction: str, pod: dict, peer: dict, peer_in_namespace: bool) -> bool:
        selecting = [p for p in policies if direction.capitalize() in p.get("policyTypes", ["Ingress"])
                     and labels_match(p["podSelector"], pod)]
        return not selecting or any(
            _peer_matches(rule_peer, peer, peer_in_namespace) and _port_matches(rule, port, protocol)
            for policy in selecting for rule in policy.get(direction, [])
            for rule_peer in rule.get("from" if direction == "ingress" else "to", []))

    return ((not source_in_namespace or allowed("egress", source, target, target_in_namespace))
            and (not target_in_namespace or allowed("ingress", target, source, source_in_namespace)))


def _peer_matches(rule_peer: dict, labels: dict, in_namespace: bool) -> bool:
    if "ipBlock" in rule_peer:
        return False
    namespaces = rule_peer.get("namespaceSelector")
    if namespaces is None and not in_namespace:
        return False  # a podSelector alone means pods of the policy's own namespace
    if namespaces not in (None, {}):
        return False  # namespace labels are not modelled; no policy here selects by them
    return labels_match(rule_peer.get("podSelector", {}), labels)


def _port_matches(rule: dict, port: int, protocol: str) -> bool:
    return "ports" not in rule or any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port)
                                      for p in rule["ports"])


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` whose name is ``name`` (or, for generated ConfigMaps, starts with it)."""
    hits = [o for o in objs if o["kind"] == kind and (o["metadata"]["name"] == name
                                                      or o["metadata"]["name"].startswith(name + "-"))]
    assert len(hits) == 1, f"expected one {kind} {name}, found {[o['metadata']['name'] for o in hits]}"
    return hits[0]
