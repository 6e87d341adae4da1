"""Offline checks of the Kubernetes manifests in deploy/kubernetes.

    python3 -m pytest -q tests/deploy

Every manifest is validated against the Kubernetes API schemas bundled in the
PyPI package kubernetes-validate (the newest version it knows, strict: an
unknown or misspelt field fails), and the manifests are checked against each
other and against the gateway config they ship: ports, probe paths, selectors,
the config's mount path, the Secret, the drain timing. The config itself goes
through `wsgate check-config` (the binary from $WSGATE_BIN, else
.build/debug/wsgate); that one check is skipped when there is no binary, or
when the binary predates the `control` / `cluster` keys.

No cluster, no network, no Docker: it runs in a second or two.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

try:
    import kubernetes_validate
except ImportError:  # reported by the schema tests, the others still run
    kubernetes_validate = None

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
KUSTOMIZATION = "kustomization.yaml"
# A manifest to copy and fill in by hand, deliberately not applied by `kubectl apply -k`.
NOT_IN_KUSTOMIZATION = {"secret.example.yaml"}
CONFIG_KEY = "wsgate.yaml"

# After drain_timeout_ms the gateway drops what is left and exits "within the
# budget plus about a second" (README, "Limits and bounds"); the manifests keep
# this margin on top of preStop + drain_timeout_ms before the kubelet's SIGKILL.
GRACE_MARGIN_S = 5
# The README's default for timeouts.close_handshake_ms.
DEFAULT_CLOSE_HANDSHAKE_MS = 2000
# What the Deployment's env gives the gateway inside a pod, for check-config.
SAMPLE_POD_NAME = "wsgate-7c9d5b8f6d-x2x7k"


# --------------------------------------------------------------------------
# Loading


def manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != KUSTOMIZATION)


def load_one(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected exactly one resource, found {len(docs)}"
    return docs[0]


@pytest.fixture(scope="module")
def resources() -> dict[tuple[str, str], dict]:
    """(kind, name) -> resource, for every manifest file."""
    out = {}
    for path in manifest_files():
        doc = load_one(path)
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in out, f"{path.name}: {key} defined twice"
        out[key] = doc
    return out


def find(resources, kind, name=None) -> dict:
    matches = [r for (k, n), r in resources.items() if k == kind and (name is None or n == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def deployment(resources):
    return find(resources, "Deployment", "wsgate")


@pytest.fixture(scope="module")
def pod_spec(deployment):
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod_spec):
    containers = pod_spec["containers"]
    assert [c["name"] for c in containers] == ["wsgate"]
    return containers[0]


@pytest.fixture(scope="module")
def configmap(resources, pod_spec):
    volume = config_volume(pod_spec)
    return find(resources, "ConfigMap", volume["configMap"]["name"])


@pytest.fixture(scope="module")
def config_text(configmap) -> str:
    return configmap["data"][CONFIG_KEY]


@pytest.fixture(scope="module")
def config(config_text) -> dict:
    cfg = yaml.safe_load(config_text)
    assert isinstance(cfg, dict)
    return cfg


def config_volume(pod_spec) -> dict:
    volumes = [v for v in pod_spec["volumes"] if "configMap" in v]
    assert len(volumes) == 1, "expected one ConfigMap volume (the gateway config)"
    return volumes[0]


def container_port(container, ref) -> int:
    """A probe's or Service's port (a number or a container port's name) as a number."""
    if isinstance(ref, int):
        return ref
    named = [p["containerPort"] for p in container["ports"] if p.get("name") == ref]
    assert named, f"no container port named {ref!r}"
    return named[0]


def pod_labels(deployment) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def env_var(container, name) -> dict:
    found = [e for e in container.get("env", []) if e["name"] == name]
    assert len(found) == 1, f"env {name}: expected once, found {len(found)}"
    return found[0]


def prestop_seconds(container) -> int:
    pre = container["lifecycle"]["preStop"]
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    command = pre["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"], command
    m = re.fullmatch(r"sleep (\d+)", command[2].strip())
    assert m, f"preStop: expected `sleep N`, found {command[2]!r}"
    return int(m.group(1))


# --------------------------------------------------------------------------
# The Dockerfile's final stage: what the pod spec assumes about the image


def dockerfile_final_stage() -> list[str]:
    # Join continuation lines, drop comments, keep the lines after the last FROM.
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    last_from = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
    return lines[last_from:]


def dockerfile_arg_default(name) -> str | None:
    m = re.search(rf"^ARG {name}=(\S+)", DOCKERFILE.read_text(), re.M)
    return m.group(1) if m else None


def instruction(stage, name) -> list[str]:
    return [l[len(name) + 1:].strip() for l in stage if l.upper().startswith(name + " ")]


def test_run_as_user_is_the_images_user(pod_spec, container):
    stage = dockerfile_final_stage()
    (user,) = instruction(stage, "USER")
    user_name = user.split(":")[0]
    uid = None
    for run in instruction(stage, "RUN"):
        m = re.search(r"useradd\b[^;&]*?--uid (\d+)[^;&]*?\s" + re.escape(user_name) + r"\b", run)
        if m:
            uid = int(m.group(1))
    assert uid is not None, f"the Dockerfile's final stage does not create user {user_name} with --uid"
    assert pod_spec["securityContext"]["runAsUser"] == uid
    assert container["securityContext"]["runAsUser"] == uid
    # useradd --user-group: the group has the same id (the Debian default for a fresh system user group).
    assert pod_spec["securityContext"].get("runAsGroup", uid) == uid


def test_args_fit_the_images_entrypoint(container):
    stage = dockerfile_final_stage()
    (entrypoint,) = instruction(stage, "ENTRYPOINT")
    assert yaml.safe_load(entrypoint) == ["wsgate"], "the manifests pass args to an ENTRYPOINT of [\"wsgate\"]"
    # No `command`: that would replace the ENTRYPOINT. `args` replaces the CMD
    # (["serve"]); serve is wsgate's default subcommand.
    assert "command" not in container
    assert container["args"][0] == "--config"


def test_prestop_exec_needs_a_shell_in_the_image(container):
    pre = container["lifecycle"]["preStop"]
    assert set(pre) in ({"exec"}, {"sleep"})
    if "exec" not in pre:
        return
    stage = dockerfile_final_stage()
    base = stage[0].split()[1]
    if base.startswith("${"):
        base = dockerfile_arg_default(base.strip("${}")) or base
    assert not re.search(r"distroless|scratch|chainguard|static", base), (
        f"preStop runs /bin/sh but the runtime image is {base}: use `preStop: {{sleep: {{seconds: N}}}}`")
    # A shell-form RUN in the final stage only works on an image with /bin/sh.
    assert any(not r.startswith("[") for r in instruction(stage, "RUN")), (
        "cannot tell that the runtime image has /bin/sh")


# --------------------------------------------------------------------------
# Schemas


def k8s_version() -> str:
    if kubernetes_validate is None:
        pytest.fail("the PyPI package kubernetes-validate is missing: "
                    "python3 -m pip install -r tests/blackbox/requirements.txt")
    return kubernetes_validate.latest_version()


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path):
    version = k8s_version()
    try:
        kubernetes_validate.validate(load_one(path), version, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{path.name} against Kubernetes {version}: {e.message} at {'.'.join(map(str, e.path))}")


def test_schema_validation_is_strict(deployment):
    """A misspelt field must fail: strict mode is really on."""
    import copy

    version = k8s_version()
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


def test_validated_version_is_current():
    major, minor = map(int, k8s_version().split(".")[:2])
    assert (major, minor) >= (1, 30), f"kubernetes-validate only knows up to {major}.{minor}: upgrade it"


# --------------------------------------------------------------------------
# Kustomization and layout


def test_kustomization_lists_exactly_the_resource_files():
    kustomization = load_one(MANIFESTS / KUSTOMIZATION)
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    present = {p.name for p in manifest_files()} - NOT_IN_KUSTOMIZATION
    assert set(listed) == present
    for name in NOT_IN_KUSTOMIZATION:
        assert (MANIFESTS / name).exists(), name
    assert "namespace" not in kustomization, "the manifests are namespace-agnostic"


def test_no_manifest_names_a_namespace(resources):
    for (kind, name), doc in resources.items():
        assert "namespace" not in doc["metadata"], f"{kind}/{name} names a namespace"


# --------------------------------------------------------------------------
# Deployment against the config it mounts


def test_args_config_path_is_the_mounted_configmap_key(container, pod_spec, configmap):
    args = container["args"]
    assert args == ["--config", args[1]]
    config_path = Path(args[1])
    volume = config_volume(pod_spec)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount.get("readOnly") is True
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    items = volume["configMap"].get("items")
    if items:
        (item,) = [i for i in items if i["key"] == CONFIG_KEY]
        file_name = item["path"]
    else:
        file_name = CONFIG_KEY
    assert config_path == Path(mount["mountPath"]) / file_name
    assert CONFIG_KEY in configmap["data"]


def test_container_ports_are_the_configs_ports(container, config):
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "ws": config["listen"]["port"],
        "admin": config["admin"]["port"],
        "control": config["control"]["port"],
    }
    assert all(p.get("protocol", "TCP") == "TCP" for p in container["ports"])


def test_listeners_are_reachable_from_outside_the_pod(config):
    # The kubelet probes the pod IP, and Services and peers connect to it.
    for section in ("listen", "admin", "control"):
        host = config[section].get("host", "0.0.0.0" if section == "listen" else "127.0.0.1")
        assert host in ("0.0.0.0", "::"), f"{section}.host is {host}: unreachable from outside the pod"


def test_probes_hit_healthz_and_readyz_on_the_admin_port(container, config):
    liveness = container["livenessProbe"]["httpGet"]
    readiness = container["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz"
    assert readiness["path"] == "/readyz"
    for probe in (liveness, readiness):
        assert container_port(container, probe["port"]) == config["admin"]["port"]
        assert probe.get("scheme", "HTTP") == "HTTP"


def test_readiness_reacts_within_the_prestop_sleep(container):
    readiness = container["readinessProbe"]
    period = readiness.get("periodSeconds", 10)
    failures = readiness.get("failureThreshold", 3)
    assert period * failures <= prestop_seconds(container)


def test_env_instance_id_and_control_token(container, config):
    instance = env_var(container, "WSGATE_INSTANCE_ID")
    assert instance["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "instance_id" not in config.get("cluster", {}), "instance_id comes from WSGATE_INSTANCE_ID"

    token_env = config["control"]["token_env"]
    token = env_var(container, token_env)
    ref = token["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("wsgate-control", "token")
    assert not ref.get("optional", False), "the control API must not start without its token"
    example = load_one(MANIFESTS / "secret.example.yaml")
    assert (example["kind"], example["metadata"]["name"]) == ("Secret", ref["name"])
    assert ref["key"] in example.get("stringData", {}) or ref["key"] in example.get("data", {})


def test_image_and_pull_policy(container):
    assert container["image"] == "wsgate:latest"
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_security_context(pod_spec, container):
    pod = pod_spec["securityContext"]
    ctr = container["securityContext"]
    assert pod["runAsNonRoot"] is True and ctr["runAsNonRoot"] is True
    assert ctr["readOnlyRootFilesystem"] is True
    assert ctr["allowPrivilegeEscalation"] is False
    assert ctr["capabilities"] == {"drop": ["ALL"]}
    assert ctr.get("privileged", False) is False
    for ctx in (pod, ctr):
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    # Unprivileged ports only: with every capability dropped, < 1024 cannot be bound.
    assert all(p["containerPort"] >= 1024 for p in container["ports"])


def test_resources_requests_and_limits(container):
    res = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res[kind]), f"resources.{kind}"


def test_no_service_links_in_the_environment(pod_spec):
    # Service "wsgate" would give WSGATE_SERVICE_HOST, WSGATE_PORT, ...: names
    # in the gateway's own WSGATE_* space.
    assert pod_spec.get("enableServiceLinks") is False


def test_spread_over_nodes(pod_spec, deployment):
    labels = pod_labels(deployment)
    terms = pod_spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    hostname = [t for t in terms if t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"]
    assert hostname
    for t in hostname:
        assert t["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    for c in pod_spec.get("topologySpreadConstraints", []):
        assert c["labelSelector"]["matchLabels"].items() <= labels.items()


def test_rolling_update_keeps_capacity(deployment):
    assert deployment["spec"]["replicas"] == 3
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0, "a draining pod's clients need the others to be there"


# --------------------------------------------------------------------------
# Drain timing


def test_grace_period_covers_prestop_and_the_drain(pod_spec, container, config):
    grace = pod_spec["terminationGracePeriodSeconds"]
    shutdown = config["shutdown"]
    drain_s = shutdown["drain_timeout_ms"] / 1000
    spread_ms = shutdown.get("spread_ms", 0)
    pre = prestop_seconds(container)
    # spread_ms runs inside drain_timeout_ms, which bounds the whole drain.
    assert spread_ms < shutdown["drain_timeout_ms"]
    assert grace > drain_s
    assert grace >= pre + math.ceil(drain_s) + GRACE_MARGIN_S, (
        f"terminationGracePeriodSeconds {grace} < preStop {pre} + drain {drain_s} + margin {GRACE_MARGIN_S}")
    # The README's rule (Operations, "Graceful drain"): preStop + spread +
    # close handshake + a second, and the spread's last close still has its
    # close handshake inside the drain budget.
    close_handshake_ms = config.get("timeouts", {}).get("close_handshake_ms", DEFAULT_CLOSE_HANDSHAKE_MS)
    assert grace >= pre + (spread_ms + close_handshake_ms) / 1000 + 1
    assert spread_ms + close_handshake_ms <= shutdown["drain_timeout_ms"]


def test_clients_are_told_to_reconnect(config):
    assert config["shutdown"]["close_code"] == 1012
    assert config["shutdown"]["spread_ms"] > 0


# --------------------------------------------------------------------------
# Services, PDB, HPA


def test_selectors_match_the_pod_labels(resources, deployment):
    labels = pod_labels(deployment)
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= labels.items()
    assert "matchExpressions" not in deployment["spec"]["selector"]
    for (kind, name), doc in resources.items():
        if kind == "Service":
            sel = doc["spec"]["selector"]
        elif kind == "PodDisruptionBudget":
            sel = doc["spec"]["selector"]["matchLabels"]
        else:
            continue
        assert sel and sel.items() <= labels.items(), f"{kind}/{name} selects no wsgate pod"


def test_service_targets_the_ws_port(resources, container, config):
    svc = find(resources, "Service", "wsgate")
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    (port,) = svc["spec"]["ports"]
    assert (port["name"], port["port"]) == ("ws", 80)
    assert container_port(container, port["targetPort"]) == config["listen"]["port"]


def test_headless_peers_service_is_the_control_port(resources, container, config):
    svc = find(resources, "Service", "wsgate-peers")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is False
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "control"
    assert port["port"] == config["control"]["port"]
    assert container_port(container, port["targetPort"]) == config["control"]["port"]
    # The config finds its peers through this Service.
    assert config["cluster"]["peers"] == f"dns:{svc['metadata']['name']}:{port['port']}"


def test_pdb_lets_one_pod_go_at_a_time(resources, deployment):
    pdb = find(resources, "PodDisruptionBudget")
    spec = pdb["spec"]
    assert spec.get("maxUnavailable") == 1 or spec.get("minAvailable") == deployment["spec"]["replicas"] - 1


def test_hpa_scales_the_deployment_and_scales_down_slowly(resources, deployment, container):
    hpa = find(resources, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert "cpu" in container["resources"]["requests"], "CPU utilization is relative to the request"
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert down["policies"], "a policy must bound how fast pods (and their clients) go away"
    for policy in down["policies"]:
        if policy["type"] == "Pods":
            assert policy["value"] <= 2
        else:
            assert policy["type"] == "Percent" and policy["value"] <= 25
    if len(down["policies"]) > 1:
        assert down.get("selectPolicy") == "Min"


# --------------------------------------------------------------------------
# check-config on the shipped config


def wsgate_binary() -> Path | None:
    path = Path(os.environ.get("WSGATE_BIN") or ROOT / ".build" / "debug" / "wsgate")
    return path if path.is_file() and os.access(path, os.X_OK) else None


def run_check_config(binary: Path, config_file: Path, extra_env: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    env.update(extra_env)
    return subprocess.run([str(binary), "check-config", "--config", str(config_file)],
                          env=env, capture_output=True, text=True, timeout=30)


def test_config_passes_check_config(config_text, config, container, tmp_path):
    binary = wsgate_binary()
    if binary is None:
        pytest.skip("no wsgate binary (set WSGATE_BIN or build .build/debug/wsgate): check-config not run")

    # Does this binary know the keys the manifests need?
    for key, snippet in (("control", "control: {port: 9091}\n"), ("cluster", "cluster: {refresh_ms: 5000}\n")):
        probe = tmp_path / f"probe-{key}.yaml"
        probe.write_text(snippet + "routes:\n  - {path: /echo, upstream: 'builtin:echo'}\n")
        result = run_check_config(binary, probe, {})
        if result.returncode != 0:
            output = result.stdout + result.stderr
            if re.search(rf"\b{key}: unknown key", output):
                pytest.skip(f"{binary} predates the `{key}` config key (check-config says: "
                            f"{output.strip().splitlines()[-1]}): rebuild it to check the shipped config")
            pytest.fail(f"check-config on a minimal `{key}` config failed:\n{output}")

    # The pod's environment, as the Deployment sets it.
    env = {"WSGATE_INSTANCE_ID": SAMPLE_POD_NAME, config["control"]["token_env"]: "test-token-not-a-secret"}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    path = tmp_path / CONFIG_KEY
    path.write_text(config_text)
    result = run_check_config(binary, path, env)
    assert result.returncode == 0, (
        f"{shlex.join([str(binary), 'check-config', '--config', str(path)])} exited {result.returncode}:\n"
        f"{result.stdout}{result.stderr}")
