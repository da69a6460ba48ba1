"""deploy/k8s: every kustomization builds, validates against the Kubernetes and CRD schemas, is
secure by default, and agrees with the fleetloop config it ships."""

import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from k8s_manifests import (
    KUSTOMIZATIONS,
    ManifestError,
    build,
    crd_schemas,
    describe,
    find,
    labels_match,
    network_allows,
    pod_templates,
    replicated_pod_templates,
    scrape_targets,
    service_backends,
    validation_errors,
)

from fleetloop.config import load_config

SECRET = "fleetloop-secrets"
"""The one Secret the manifests use; operators create it (docs/operations.md), git never holds it."""


@pytest.fixture(scope="module")
def crds(shared_dir: Path):
    schemas = crd_schemas(shared_dir / "reference" / "crds")
    assert {kind for _, kind in schemas} >= {"RayJob", "RayCluster", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
    return schemas


@pytest.fixture(scope="module", params=sorted(KUSTOMIZATIONS))
def built(request):
    return request.param, build(KUSTOMIZATIONS[request.param])


def test_every_object_validates(built, crds):
    name, objs = built
    errors = validation_errors(objs, crds)
    assert not errors, f"deploy/k8s {name}:\n" + "\n".join(errors)
    kinds = {o["kind"] for o in objs}
    assert kinds >= {"Namespace", "RayJob", "StatefulSet", "Service", "ConfigMap", "NetworkPolicy",
                     "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule", "PersistentVolumeClaim"}


def test_a_broken_manifest_fails_with_its_file_and_reason(tmp_path, crds):
    base = tmp_path / "base"
    shutil.copytree(KUSTOMIZATIONS["base"], base)
    rayjob = base / "rayjob.yaml"
    rayjob.write_text(rayjob.read_text().replace("replicas: 2 ", "replicas: two ", 1))
    services = base / "services.yaml"
    services.write_text(services.read_text().replace("clusterIP: None", "clusterIp: None", 1))
    errors = validation_errors(build(base), crds)
    assert any(e.startswith("rayjob.yaml: RayJob/fleetloop: spec.rayClusterSpec.workerGroupSpecs.1.replicas: "
                            "'two' is not of type 'integer'") for e in errors), errors
    assert any(e.startswith("services.yaml: Service/fleetloop-learner-metrics: ") and "clusterIp" in e
               for e in errors), errors
    kustomization = base / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("  - namespace.yaml\n", "  - namespace.yaml\n  - missing.yaml\n"))
    with pytest.raises(ManifestError, match="missing.yaml"):
        build(base)


def test_pods_are_secure_by_default(built):
    name, objs = built
    templates = [t for obj in objs for t in pod_templates(obj)]
    assert len(templates) == 7  # replay, robot bridges, Ray head, learner, actors, evaluator, job submitter
    for where, template in templates:
        spec = template["spec"]
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False and spec["serviceAccountName"] == "fleetloop", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        assert not any("hostPath" in v for v in spec.get("volumes", [])), where
        for container in spec["containers"]:
            c = container["securityContext"]
            assert c["allowPrivilegeEscalation"] is False and c["capabilities"]["drop"] == ["ALL"], where
            assert c["readOnlyRootFilesystem"] is True and not c.get("privileged"), where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{where}: {bound}"
            image = container["image"]
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), f"{where}: {image}"


def test_no_secret_material_in_the_manifests(built):
    name, objs = built
    assert not [describe(o) for o in objs if o["kind"] == "Secret"], "Secrets are created out of band, not in git"
    for where, template in (t for obj in objs for t in pod_templates(obj)):
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if re.search(r"(^|_)(PASSWORD|TOKEN|SECRET|AUTH|KEY)(_|$)", env["name"]):
                    assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"] == SECRET, \
                        f"{where}: {env['name']}"
        secrets = [v["secret"]["secretName"] for v in template["spec"].get("volumes", []) if "secret" in v]
        assert set(secrets) <= {SECRET}, where


def test_selectors_and_references_resolve(built):
    name, objs = built
    pods = {where: t["metadata"]["labels"] for obj in objs for where, t in pod_templates(obj)}
    for obj in objs:
        kind, spec = obj["kind"], obj.get("spec", {})
        if kind == "Service":
            assert any(labels_match({"matchLabels": spec["selector"]}, labels) for labels in pods.values()), describe(obj)
        if kind in ("PodDisruptionBudget", "NetworkPolicy") and spec.get("podSelector") != {}:
            selector = spec.get("selector") or spec.get("podSelector")
            assert any(labels_match(selector, labels) for labels in pods.values()), describe(obj)
        if kind == "ServiceMonitor":
            services = [s for s in objs if s["kind"] == "Service"
                        and labels_match(spec["selector"], s["metadata"].get("labels", {}))]
            assert services, describe(obj)
            for service in services:
                assert "metrics" in {p["name"] for p in service["spec"]["ports"]}, describe(service)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for where, template in (t for obj in objs for t in pod_templates(obj)):
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, f"{where}: {volume}"
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names, where


def test_network_policies_deny_by_default_and_open_only_the_needed_paths(built):
    name, objs = built
    policies = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "NetworkPolicy"}
    deny = policies["fleetloop-default-deny"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    replay = policies["fleetloop-replay"]["ingress"]
    assert replay == [{"from": [{"podSelector": {"matchLabels": {"fleetloop.dev/ray-node": "true"}}}],
                       "ports": [{"protocol": "TCP", "port": 6379}]}]
    bridge = policies["fleetloop-robot-bridge"]["ingress"]
    assert bridge[0]["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "actor"}}}]
    for policy in policies.values():  # nothing opened to the whole world
        for rule in policy.get("ingress", []) + policy.get("egress", []):
            peers = rule.get("from", rule.get("to"))
            assert peers, f"a rule without peers opens to everyone: {policy}"
            assert not any("ipBlock" in peer for peer in peers)


def _cluster_config(objs, tmp_path: Path):
    """The shipped fleetloop config (cluster.yaml, then overlay.yaml), secret paths pointed at files here."""
    data = find(objs, "ConfigMap", "fleetloop-config")["data"]
    files = []
    for key in ("cluster.yaml", "overlay.yaml"):
        text = data[key]
        for secret in re.findall(r"/var/run/secrets/fleetloop/[\w-]+", text):
            local = tmp_path / Path(secret).name
            local.write_text("placeholder\n")
            text = text.replace(secret, str(local))
        (tmp_path / key).write_text(text)
        files.append(str(tmp_path / key))
    return load_config(files)


def test_the_shipped_config_agrees_with_the_manifests(built, tmp_path):
    name, objs = built
    cfg = _cluster_config(objs, tmp_path)
    rayjob = find(objs, "RayJob", "fleetloop")
    groups = {g["groupName"]: g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    actors, learner, evaluator = groups["actors"], groups["learner"], groups["evaluator"]
    n = cfg.actors.num_actors
    assert actors["replicas"] == actors["minReplicas"] == actors["maxReplicas"] == n
    assert {k: float(v) for k, v in actors["resources"].items()} == cfg.actors.ray_resources
    assert cfg.evaluator.enabled  # else its group would idle
    assert evaluator["replicas"] == evaluator["minReplicas"] == evaluator["maxReplicas"] == 1
    assert {k: float(v) for k, v in evaluator["resources"].items()} == cfg.evaluator.ray_resources
    ranks = cfg.learner.ranks  # all in one pod: rank 0 serves the weights behind the learner's Service
    assert {k: float(v) for k, v in learner["resources"].items()} == {
        k: ranks * v for k, v in cfg.learner.ray_resources.items()}
    assert learner["replicas"] == 1
    gpus = learner["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", "0")
    assert float(gpus) == ranks * cfg.learner.num_gpus

    bridges = find(objs, "StatefulSet", "fleetloop-robot-bridge")
    service = bridges["spec"]["serviceName"]
    assert bridges["spec"]["replicas"] == n and cfg.bridge.env == cfg.actors.env
    assert cfg.actors.bridge_targets == [f"fleetloop-robot-bridge-{i}.{service}:{cfg.bridge.port}" for i in range(n)]
    ports = {p["name"]: p["containerPort"] for p in bridges["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"grpc-robot": cfg.bridge.port, "metrics": cfg.bridge.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # gRPC health checking
        assert bridges["spec"]["template"]["spec"]["containers"][0][probe]["grpc"] == {"port": cfg.bridge.port}

    weights = find(objs, "Service", "fleetloop-weights")["spec"]["ports"][0]
    assert cfg.weights.advertise_address == f"fleetloop-weights:{weights['port']}"
    learner_ports = {p["name"]: p["containerPort"] for p in learner["template"]["spec"]["containers"][0]["ports"]}
    assert learner_ports == {"grpc-weights": cfg.weights.port, "metrics": cfg.metrics.learner_port}
    actor_ports = {p["name"]: p["containerPort"] for p in actors["template"]["spec"]["containers"][0]["ports"]}
    assert actor_ports == {"metrics": cfg.metrics.actor_base_port} and cfg.metrics.actor_port_stride == 0
    evaluator_ports = {p["name"]: p["containerPort"] for p in evaluator["template"]["spec"]["containers"][0]["ports"]}
    assert evaluator_ports == {"metrics": cfg.metrics.evaluator_port}
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": cfg.metrics.replay_port} in head["ports"]

    replay = find(objs, "Service", "fleetloop-replay")["spec"]["ports"][0]
    assert cfg.replay.url == f"redis://fleetloop-replay:{replay['port']}/0"
    assert cfg.run.ray_address == "auto" and cfg.actors.robot == "bridge"
    for host in (cfg.weights.host, cfg.bridge.host, cfg.metrics.host):
        assert host == "0.0.0.0"  # reachable from other pods; NetworkPolicies decide who may
    entrypoint = rayjob["spec"]["entrypoint"]
    assert "--config /etc/fleetloop/cluster.yaml --config /etc/fleetloop/overlay.yaml" in entrypoint


def _advertised(group: dict) -> dict[str, float]:
    """What a KubeRay group's pods advertise to Ray: CPUs, GPUs (the container's limit) and custom resources."""
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return {"CPU": _cpus(group["rayStartParams"].get("num-cpus", limits["cpu"])),
            "GPU": float(limits.get("nvidia.com/gpu", 0)),
            **{name: float(amount) for name, amount in group.get("resources", {}).items()}}


def test_each_ray_role_runs_only_on_its_own_worker_group(built, tmp_path):
    """Ray places a role on any node with the CPU and custom resources it asks for (`fleetloop up`:
    num_cpus=1 and the role's ray_resources). Each role must fit one group only, one per pod (each
    binds a fixed /metrics port), on as many pods as it has instances: an evaluator without
    resources of its own would take one of the learner's CPUs."""
    name, objs = built
    cfg = _cluster_config(objs, tmp_path)
    cluster = find(objs, "RayJob", "fleetloop")["spec"]["rayClusterSpec"]
    nodes = {"head": (_advertised(cluster["headGroupSpec"]), 1),
             **{g["groupName"]: (_advertised(g), g["replicas"]) for g in cluster["workerGroupSpecs"]}}
    roles = {  # role: (its group, what one instance asks Ray for, instances per pod, pods)
        "learner rank": ("learner", {"CPU": 1, "GPU": cfg.learner.num_gpus, **cfg.learner.ray_resources},
                         cfg.learner.ranks, 1),
        "actor": ("actors", {"CPU": 1, **cfg.actors.ray_resources}, 1, cfg.actors.num_actors),
        "evaluator": ("evaluator", {"CPU": 1, **cfg.evaluator.ray_resources}, 1, int(cfg.evaluator.enabled)),
    }
    for role, (group, demand, instances, pods) in roles.items():
        per_pod = {node: min(supply.get(key, 0) // amount for key, amount in demand.items() if amount)
                   for node, (supply, _) in nodes.items()}
        hosts = sorted(node for node, fit in per_pod.items() if fit)
        assert hosts == [group], f"{name}: Ray may place the {role} ({demand}) on {hosts}, not only on {group}"
        assert per_pod[group] == instances and nodes[group][1] == pods, \
            f"{name}: {pods} pod(s) of {instances} {role}(s); group {group}: {nodes[group][1]} pods, {per_pod[group]} per pod"
    assert not set(nodes) - {"head"} - {group for group, _, _, _ in roles.values()}, f"{name}: a group no role uses"


PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
"""The Prometheus pods' labels (kube-prometheus-stack's), in their own namespace."""
KUBE_DNS = {"k8s-app": "kube-dns"}


def test_prometheus_scrapes_every_role_on_its_configured_port(built, tmp_path):
    name, objs = built
    cfg = _cluster_config(objs, tmp_path)
    scraped: dict[str, set[int]] = {}
    for where, labels, port in scrape_targets(objs):
        scraped.setdefault(labels["app.kubernetes.io/component"], set()).add(port)
        assert network_allows(objs, PROMETHEUS, labels, port, source_in_namespace=False), \
            f"{name}: {where}: the NetworkPolicies keep Prometheus from scraping :{port}"
    assert scraped == {"ray-head": {cfg.metrics.replay_port}, "learner": {cfg.metrics.learner_port},
                       "actor": {cfg.metrics.actor_base_port}, "evaluator": {cfg.metrics.evaluator_port},
                       "robot-bridge": {cfg.bridge.metrics_port}}, name


def _service_address(address: str) -> tuple[str, int]:
    """The Service and port of a ``host:port`` the config dials (a StatefulSet pod's
    ``<pod>.<service>`` included)."""
    host, port = address.rsplit(":", 1)
    return host.split(".")[-1], int(port)


def test_network_policies_open_the_paths_the_config_dials(built, tmp_path):
    name, objs = built
    cfg = _cluster_config(objs, tmp_path)
    pods = {t["metadata"]["labels"]["app.kubernetes.io/component"]: t["metadata"]["labels"]
            for obj in objs for _, t in pod_templates(obj)}
    replay = urlsplit(cfg.replay.url)
    dials = {  # (Service, port) the config names -> the roles that connect to it
        _service_address(cfg.weights.advertise_address): {"actor", "evaluator"},
        (replay.hostname, replay.port): {"ray-head", "learner", "actor"},
        **{_service_address(target): {"actor"} for target in cfg.actors.bridge_targets},
    }
    for (service, port), dialers in dials.items():
        backends = service_backends(objs, service, port)
        assert backends, f"{name}: nothing serves {service}:{port}"
        for component in dialers:
            for protocol in ("UDP", "TCP"):
                assert network_allows(objs, pods[component], KUBE_DNS, 53, protocol, target_in_namespace=False), \
                    f"{name}: {component} may not resolve {service} ({protocol} 53)"
            for where, labels, target_port in backends:
                assert network_allows(objs, pods[component], labels, target_port), \
                    f"{name}: {component} may not reach {service}:{port} ({where} :{target_port})"
    head = find(objs, "RayJob", "fleetloop")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    gcs = {p["name"]: p["containerPort"] for p in head["spec"]["containers"][0]["ports"]}["gcs-server"]
    for component, labels in pods.items():  # every Ray node joins the cluster through the head's GCS
        if labels.get("fleetloop.dev/ray-node") == "true":
            assert network_allows(objs, labels, head["metadata"]["labels"], gcs), f"{name}: {component} -> GCS"


DEV_NODE = {"cpu": 4.0, "memory": 16 * (1 << 30)}
"""The one node the dev overlay is sized for (overlays/dev/kustomization.yaml)."""


def test_dev_requests_fit_its_one_node():
    requested = {"cpu": 0.0, "memory": 0.0}
    for obj in build(KUSTOMIZATIONS["dev"]):
        for where, template, count in replicated_pod_templates(obj):
            for container in template["spec"]["containers"]:
                requests = container["resources"]["requests"]
                requested["cpu"] += count * _cpus(requests["cpu"])
                requested["memory"] += count * _bytes(requests["memory"])
    assert all(requested[key] <= DEV_NODE[key] for key in DEV_NODE), f"dev requests {requested} of {DEV_NODE}"


def test_replay_server_persists_with_a_password_from_the_secret(built):
    name, objs = built
    replay = find(objs, "StatefulSet", "fleetloop-replay")
    container = replay["spec"]["template"]["spec"]["containers"][0]
    conf = find(objs, "ConfigMap", "fleetloop-replay-config")["data"]["valkey.conf"]
    settings = dict(line.split(" ", 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert settings["appendonly"] == "yes" and settings["dir"] == "/data"
    assert settings["maxmemory-policy"] == "noeviction"
    assert container["args"][1:3] == ["--requirepass", "$(REDIS_PASSWORD)"]
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "redis-password"}
    maxmemory = env["VALKEY_MAXMEMORY"]["value"]
    limit = container["resources"]["limits"]["memory"]
    assert _bytes(maxmemory) < _bytes(limit), f"maxmemory {maxmemory} must stay below the memory limit {limit}"
    claim = replay["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data" and {"name": "data", "mountPath": "/data"} in container["volumeMounts"]


def _bytes(quantity: str) -> float:
    units = {"gb": 1 << 30, "mb": 1 << 20, "Gi": 1 << 30, "Mi": 1 << 20}
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]+)", quantity).groups()
    return int(number) * units[unit]


def _cpus(quantity: str) -> float:
    """A CPU quantity ("2", "500m") in CPUs."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_every_workload_has_a_disruption_budget(built):
    name, objs = built
    budgets = [o["spec"]["selector"] for o in objs if o["kind"] == "PodDisruptionBudget"]
    for where, template in (t for obj in objs for t in pod_templates(obj)):
        if "submitter" in where:  # a one-shot Job pod
            continue
        assert any(labels_match(s, template["metadata"]["labels"]) for s in budgets), where


def test_overlays_differ_where_they_should():
    dev, prod = build(KUSTOMIZATIONS["dev"]), build(KUSTOMIZATIONS["prod"])
    runs = {n: find(objs, "PersistentVolumeClaim", "fleetloop-runs")["spec"]["accessModes"]
            for n, objs in (("dev", dev), ("prod", prod))}
    assert runs == {"dev": ["ReadWriteOnce"], "prod": ["ReadWriteMany"]}
    learner = {n: find(objs, "RayJob", "fleetloop")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
               for n, objs in (("dev", dev), ("prod", prod))}
    assert learner["prod"]["template"]["spec"]["containers"][0]["image"].endswith("-cuda")
    assert learner["dev"]["template"]["spec"]["containers"][0]["image"].endswith("-cpu")
    prod_learner = yaml.safe_load(find(prod, "ConfigMap", "fleetloop-config")["data"]["overlay.yaml"])["learner"]
    assert (prod_learner["num_gpus"], prod_learner["ranks"]) == (1, 4)


def _mounted_files(template: dict) -> set[str]:
    """Paths of the files a pod's first container sees from Secret and ConfigMap volumes."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    files = set()
    for mount in template["spec"]["containers"][0].get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        source = volume.get("secret") or volume.get("configMap")
        for item in (source or {}).get("items", []):
            files.add(f"{mount['mountPath']}/{item['path']}")
    return files


def test_each_role_mounts_the_files_its_config_names(built):
    name, objs = built
    data = find(objs, "ConfigMap", "fleetloop-config")["data"]
    text = data["cluster.yaml"] + data["overlay.yaml"]
    secret_files = set(re.findall(r"/var/run/secrets/fleetloop/[\w-]+", text))
    bridge_files = {path for path in secret_files if path.endswith("grpc-token")}
    rayjob = find(objs, "RayJob", "fleetloop")
    for where, template in pod_templates(rayjob):
        if "submitter" not in where:
            assert secret_files <= _mounted_files(template), f"{where}: {secret_files - _mounted_files(template)}"
    bridges = find(objs, "StatefulSet", "fleetloop-robot-bridge")["spec"]["template"]
    assert _mounted_files(bridges) == bridge_files, "a bridge gets the gRPC token and nothing else secret"
