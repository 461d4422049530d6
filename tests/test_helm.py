"""The Helm chart helm/budgetd, rendered by Helm's own Go SDK (helm-python-sdk)
and checked against the Kubernetes schemas (kubernetes-validate): lint,
render with the default values and the realistic values files under
tests/helm-values/, the fields a deployment relies on, and the values that
must fail with a message naming what to change."""

from __future__ import annotations

import base64
import io
import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the test extra")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extra")

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "helm" / "budgetd"
VALUES_DIR = ROOT / "tests" / "helm-values"
RELEASE = "acme-prod"
NAMESPACE = "llm-platform"
FULLNAME = f"{RELEASE}-budgetd"
# The newest Kubernetes whose schemas kubernetes-validate ships.
KUBE_VERSION = kv.latest_version()

SCENARIOS = ["default", "production", "embedded", "existing-secret", "tls"]

Obj = dict[str, Any]


def load_values(scenario: str) -> Obj:
    if scenario == "default":
        return {}
    data = yaml.safe_load((VALUES_DIR / f"{scenario}.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(str(CHART_DIR)) as c:
        yield c


def render_raw(chart: Any, values: Obj) -> dict[str, str]:
    out: dict[str, str] = chart.render(values, name=RELEASE, namespace=NAMESPACE,
                                       is_install=True)
    return out


def render(chart: Any, values: Obj) -> list[Obj]:
    objs: list[Obj] = []
    for path, text in sorted(render_raw(chart, values).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                objs.append(doc)
    return objs


@pytest.fixture(scope="module", params=SCENARIOS)
def scenario(request: pytest.FixtureRequest, chart: Any) -> tuple[str, Obj, list[Obj]]:
    values = load_values(request.param)
    merged = chart.merge_values(values)
    return request.param, merged, render(chart, values)


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def kinds(objs: list[Obj]) -> list[str]:
    return sorted(o["kind"] for o in objs)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def container(pod_spec: Obj, name: str) -> Obj:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def env_of(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


# ---- the chart as a package ----

def test_app_version_equals_package_version(chart: Any) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'^\[project\]$[^\[]*?^version = "([^"]+)"$', pyproject, re.M | re.S)
    assert m, "no [project] version in pyproject.toml"
    assert chart.metadata["appVersion"] == m.group(1)
    import budgetd
    assert chart.metadata["appVersion"] == budgetd.__version__


@pytest.mark.parametrize("scenario_name", SCENARIOS)
def test_lint_is_clean(scenario_name: str) -> None:
    report = helm.lint(str(CHART_DIR), load_values(scenario_name), strict=True,
                       namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_every_value_is_documented(chart: Any) -> None:
    """Every key the schema names has a comment right above it in values.yaml
    (keys inside free-form objects such as resources are documented by their
    parent)."""
    schema = chart.schema
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented: list[str] = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z0-9_]+):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        node: Obj | None = schema
        for part in path:
            props = (node or {}).get("properties")
            node = props.get(part) if props else None
            if node is None:
                break
        if node is None:
            continue  # inside a free-form object
        prev = next((p for p in reversed(lines[:i]) if p.strip()), "")
        if not prev.strip().startswith("#") and "properties" not in node:
            undocumented.append(".".join(path))
    assert undocumented == []


def test_schema_closes_every_section(chart: Any) -> None:
    """Unknown keys are rejected at the top level and in every section that
    the chart reads key by key."""
    def walk(node: Obj, path: str) -> Iterator[str]:
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                yield path or "<root>"
            for k, sub in node["properties"].items():
                yield from walk(sub, f"{path}.{k}" if path else k)
    assert list(walk(chart.schema, "")) == []


# ---- every rendered object ----

def test_objects_validate_against_kubernetes(scenario: tuple[str, Obj, list[Obj]]) -> None:
    _, _, objs = scenario
    for o in objs:
        if o["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: test_service_monitor_shape
        kv.validate(o, KUBE_VERSION, strict=True)


def test_expected_objects(scenario: tuple[str, Obj, list[Obj]]) -> None:
    name, _, objs = scenario
    expected = {
        "default": ["ConfigMap", "Deployment", "NetworkPolicy", "NetworkPolicy", "Service",
                    "Service", "ServiceAccount", "StatefulSet"],
        "production": ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                       "PodDisruptionBudget", "Secret", "Service", "ServiceAccount",
                       "ServiceMonitor"],
        "embedded": ["ConfigMap", "ConfigMap", "Deployment", "Job", "NetworkPolicy",
                     "NetworkPolicy", "Service", "Service", "ServiceAccount", "StatefulSet"],
        "existing-secret": ["ConfigMap", "ConfigMap", "Deployment", "Job", "NetworkPolicy",
                            "PodDisruptionBudget", "Service", "ServiceAccount"],
        "tls": ["ConfigMap", "ConfigMap", "Deployment", "Job", "Secret", "Service",
                "ServiceAccount"],
    }[name]
    assert kinds(objs) == expected
    for o in objs:
        assert o["metadata"]["namespace"] == NAMESPACE


def test_standard_labels_everywhere(scenario: tuple[str, Obj, list[Obj]], chart: Any) -> None:
    _, _, objs = scenario
    version = chart.metadata["appVersion"]
    for o in objs:
        labels = o["metadata"]["labels"]
        where = f"{o['kind']}/{o['metadata']['name']}"
        assert labels["app.kubernetes.io/name"] == "budgetd", where
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/version"] == version, where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert labels["helm.sh/chart"] == f"budgetd-{chart.metadata['version']}", where
        assert o["metadata"]["name"].startswith(FULLNAME), where
        pod = o.get("spec", {}).get("template", {}).get("metadata")
        if pod is not None:
            for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                      "app.kubernetes.io/component"):
                assert pod["labels"][k] == labels[k], where


def test_selectors_match_the_right_pods(scenario: tuple[str, Obj, list[Obj]]) -> None:
    _, _, objs = scenario
    dep = one(objs, "Deployment")
    server_labels = dep["spec"]["template"]["metadata"]["labels"]
    sel = dep["spec"]["selector"]["matchLabels"]
    assert matches(sel, server_labels)
    svc = one(objs, "Service", FULLNAME)
    assert matches(svc["spec"]["selector"], server_labels)
    pods = [o["spec"]["template"]["metadata"]["labels"] for o in objs
            if o["kind"] in ("StatefulSet", "Job")]
    for other in pods:
        # Neither the Redis pod nor the hook job may receive gRPC traffic.
        assert not matches(svc["spec"]["selector"], other)
        assert not matches(sel, other)
    for o in objs:
        if o["kind"] == "PodDisruptionBudget":
            assert o["spec"]["selector"]["matchLabels"] == sel
        if o["kind"] == "HorizontalPodAutoscaler":
            assert o["spec"]["scaleTargetRef"] == {
                "apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
            assert "replicas" not in dep["spec"]
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == FULLNAME:
            assert o["spec"]["podSelector"]["matchLabels"] == sel
        if o["kind"] == "StatefulSet":
            assert matches(o["spec"]["selector"]["matchLabels"],
                           o["spec"]["template"]["metadata"]["labels"])
    for tsc in dep["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        assert tsc["labelSelector"]["matchLabels"] == sel
    port_names = {p["name"] for p in container(dep["spec"]["template"]["spec"],
                                                "budgetd")["ports"]}
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in port_names


def test_probes_use_the_grpc_health_service(scenario: tuple[str, Obj, list[Obj]]) -> None:
    _, values, objs = scenario
    dep = one(objs, "Deployment")
    c = container(dep["spec"]["template"]["spec"], "budgetd")
    grpc_port = values["server"]["grpcPort"]
    assert {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"} in c["ports"]
    cm = one(objs, "ConfigMap", FULLNAME)
    assert cm["data"]["BUDGETD_LISTEN"] == f"0.0.0.0:{grpc_port}"
    svc_ports = {p["name"] for p in one(objs, "Service", FULLNAME)["spec"]["ports"]}
    probe_port = grpc_port
    if values["tls"]["enabled"]:
        # The kubelet's gRPC probe cannot do TLS: it asks the plaintext
        # health-only listener, which the server opens on BUDGETD_HEALTH_LISTEN.
        probe_port = values["server"]["healthPort"]
        assert probe_port != grpc_port
        assert cm["data"]["BUDGETD_HEALTH_LISTEN"] == f"0.0.0.0:{probe_port}"
        assert {"name": "health", "containerPort": probe_port, "protocol": "TCP"} in c["ports"]
        # Probes only: callers never reach it through the Service.
        assert "health" not in svc_ports
    else:
        assert "BUDGETD_HEALTH_LISTEN" not in cm["data"]
        assert "health" not in {p["name"] for p in c["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "tcpSocket" not in c[probe]
    assert c["livenessProbe"]["grpc"] == {"port": probe_port, "service": "liveness"}
    assert c["startupProbe"]["grpc"] == {"port": probe_port, "service": "liveness"}
    # Readiness asks service "": SERVING only while Redis answers.
    assert c["readinessProbe"]["grpc"] == {"port": probe_port, "service": ""}


def test_restricted_security_context(scenario: tuple[str, Obj, list[Obj]]) -> None:
    _, _, objs = scenario
    for o in objs:
        if o["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        pod = o["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["runAsNonRoot"] is True
            assert sc["runAsUser"] != 0
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert "privileged" not in sc
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
            # A read-only root needs somewhere writable for temp files.
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
        assert not pod.get("hostNetwork") and not pod.get("hostPID")


def test_termination_outlasts_the_drain(scenario: tuple[str, Obj, list[Obj]]) -> None:
    _, values, objs = scenario
    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    drain_s = float(one(objs, "ConfigMap", FULLNAME)["data"]["BUDGETD_DRAIN_S"])
    assert drain_s == values["server"]["drainSeconds"]
    c = container(pod, "budgetd")
    pre_stop_s = float(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pre_stop_s == values["preStopSleepSeconds"] > 0
    assert pod["terminationGracePeriodSeconds"] > drain_s + pre_stop_s
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_workers_reach_the_server(scenario: tuple[str, Obj, list[Obj]], chart: Any) -> None:
    _, values, objs = scenario
    data = one(objs, "ConfigMap", FULLNAME)["data"]
    assert data["BUDGETD_WORKERS"] == str(values["server"]["workers"]) == "1"
    two = render(chart, {**values, "server": {**values["server"], "workers": 2}})
    assert one(two, "ConfigMap", FULLNAME)["data"]["BUDGETD_WORKERS"] == "2"


def _secret_strings(values: Obj) -> list[str]:
    out = [values["redis"]["url"], values["webhook"]["url"]]
    out += [t["sha256"] for t in values["auth"]["tokens"]]
    out += re.findall(r"s3cr3t[\w-]*", values["redis"]["url"])
    return [s for s in out if s]


def test_secrets_never_in_a_configmap(scenario: tuple[str, Obj, list[Obj]]) -> None:
    _, values, objs = scenario
    secret_values = _secret_strings(values)
    for o in objs:
        if o["kind"] == "ConfigMap":
            text = yaml.safe_dump(o)
            for s in secret_values:
                assert s not in text, f"secret in ConfigMap {o['metadata']['name']}"
            assert not set(o["data"]) & {"BUDGETD_REDIS_URL", "BUDGETD_WEBHOOK_URL",
                                         "BUDGETD_TOKEN"}
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            text = yaml.safe_dump(o)
            for s in secret_values:
                assert s not in text, f"secret in plain text in {o['kind']}"
    dep = one(objs, "Deployment")
    env = env_of(container(dep["spec"]["template"]["spec"], "budgetd"))
    if values["redis"]["embedded"]["enabled"]:
        assert env["BUDGETD_REDIS_URL"]["value"] == (
            f"redis://{FULLNAME}-redis.{NAMESPACE}.svc:6379/0")
    else:
        ref = env["BUDGETD_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": values["secret"]["existingSecret"] or FULLNAME,
                       "key": "redis-url"}


def test_secret_holds_what_the_server_reads(scenario: tuple[str, Obj, list[Obj]]) -> None:
    _, values, objs = scenario
    secrets = [o for o in objs if o["kind"] == "Secret"]
    if values["secret"]["existingSecret"] or not _secret_strings(values):
        assert secrets == []
        return
    data = {k: base64.b64decode(v).decode() for k, v in one(objs, "Secret")["data"].items()}
    if values["redis"]["url"]:
        assert data["redis-url"] == values["redis"]["url"]
    if values["webhook"]["url"]:
        assert data["webhook-url"] == values["webhook"]["url"]
        env = env_of(container(one(objs, "Deployment")["spec"]["template"]["spec"], "budgetd"))
        assert env["BUDGETD_WEBHOOK_URL"]["valueFrom"]["secretKeyRef"]["key"] == "webhook-url"
    if values["auth"]["tokens"]:
        tokens = yaml.safe_load(data["auth-tokens.yaml"])["tokens"]
        assert tokens == values["auth"]["tokens"]


@pytest.mark.parametrize("scenario_name", ["production", "tls"])
def test_server_loads_the_tokens_file_the_chart_writes(chart: Any, scenario_name: str,
                                                       tmp_path: pathlib.Path) -> None:
    """The rendered auth-tokens.yaml goes through the server's own loader,
    as the pod reads it from BUDGETD_AUTH_TOKENS_FILE."""
    from budgetd.auth import load_tokens

    values = load_values(scenario_name)
    objs = render(chart, values)
    secret = one(objs, "Secret", FULLNAME)
    cm = one(objs, "ConfigMap", FULLNAME)["data"]
    path = tmp_path / pathlib.PurePosixPath(cm["BUDGETD_AUTH_TOKENS_FILE"]).name
    path.write_bytes(base64.b64decode(secret["data"]["auth-tokens.yaml"]))
    principals = load_tokens(str(path))
    want = {t["sha256"]: t for t in values["auth"]["tokens"]}
    assert set(principals) == set(want)
    for digest, p in principals.items():
        t = want[digest]
        assert (p.name, p.role) == (t["name"], t["role"])
        assert p.orgs == (None if t["orgs"] == "*" else frozenset(t["orgs"]))
    if scenario_name == "production":
        by_name = {p.name: p for p in principals.values()}
        assert by_name["checkout"].holds("acme") and not by_name["checkout"].holds("globex")
        assert by_name["finance"].orgs is None  # "*": every org


def test_auth_and_tls_wiring(scenario: tuple[str, Obj, list[Obj]]) -> None:
    _, values, objs = scenario
    cm = one(objs, "ConfigMap", FULLNAME)["data"]
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    c = container(pod, "budgetd")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    if values["auth"]["enabled"]:
        assert "BUDGETD_INSECURE_NO_AUTH" not in cm
        path = pathlib.PurePosixPath(cm["BUDGETD_AUTH_TOKENS_FILE"])
        assert str(path.parent) == mounts["auth"]["mountPath"]
        assert volumes["auth"]["secret"]["secretName"] == (
            values["secret"]["existingSecret"] or FULLNAME)
        assert volumes["auth"]["secret"]["items"] == [{"key": "auth-tokens.yaml",
                                                       "path": path.name}]
    else:
        assert cm["BUDGETD_INSECURE_NO_AUTH"] == "1"
        assert "auth" not in volumes
    if values["tls"]["enabled"]:
        assert volumes["tls"]["secret"]["secretName"] == values["tls"]["secretName"]
        tls_dir = mounts["tls"]["mountPath"]
        assert cm["BUDGETD_TLS_CERT_FILE"] == f"{tls_dir}/tls.crt"
        assert cm["BUDGETD_TLS_KEY_FILE"] == f"{tls_dir}/tls.key"
        if values["tls"]["clientAuth"]:
            assert cm["BUDGETD_TLS_CLIENT_CA_FILE"] == f"{tls_dir}/ca.crt"
    else:
        assert not any(k.startswith("BUDGETD_TLS_") for k in cm)
    if values["metrics"]["enabled"]:
        port = values["metrics"]["port"]
        assert cm["BUDGETD_METRICS_LISTEN"] == f"0.0.0.0:{port}"
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in c["ports"]


def test_embedded_redis_is_persistent_and_single(scenario: tuple[str, Obj, list[Obj]]) -> None:
    _, values, objs = scenario
    if not values["redis"]["embedded"]["enabled"]:
        assert not [o for o in objs if o["kind"] == "StatefulSet"]
        return
    sts = one(objs, "StatefulSet", f"{FULLNAME}-redis")
    svc = one(objs, "Service", f"{FULLNAME}-redis")
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"
    assert matches(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    assert svc["spec"]["ports"][0]["port"] == 6379
    c = container(sts["spec"]["template"]["spec"], "redis")
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--dir") + 1] == "/data"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert c["image"].startswith("redis:")
    data_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/data")
    claims = sts["spec"]["volumeClaimTemplates"]
    persistence = values["redis"]["embedded"]["persistence"]
    assert [t["metadata"]["name"] for t in claims] == [data_mount["name"]]
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == persistence["size"]
    if persistence["storageClass"]:
        assert claims[0]["spec"]["storageClassName"] == persistence["storageClass"]
    # Only budgetd pods may reach the embedded Redis.
    if values["networkPolicy"]["enabled"]:
        np = one(objs, "NetworkPolicy", f"{FULLNAME}-redis")
        dep_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        (rule,) = np["spec"]["ingress"]
        assert matches(rule["from"][0]["podSelector"]["matchLabels"], dep_labels)


def test_network_policy_admits_only_labelled_callers(
        scenario: tuple[str, Obj, list[Obj]]) -> None:
    _, values, objs = scenario
    nps = [o for o in objs if o["kind"] == "NetworkPolicy"
           and o["metadata"]["name"] == FULLNAME]
    if not values["networkPolicy"]["enabled"]:
        assert nps == []
        return
    (np,) = nps
    assert np["spec"]["policyTypes"] == ["Ingress"]
    grpc_rule = next(r for r in np["spec"]["ingress"] if r["ports"][0]["port"] == "grpc")
    peer = grpc_rule["from"][0]
    assert peer["podSelector"]["matchLabels"] == values["networkPolicy"]["clientLabels"]
    ns_labels = values["networkPolicy"]["clientNamespaceLabels"]
    if ns_labels:
        assert peer["namespaceSelector"]["matchLabels"] == ns_labels
    else:
        assert "namespaceSelector" not in peer  # the release namespace only
    for rule in np["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        assert "health" not in ports  # the kubelet's probes bypass NetworkPolicy
        if "grpc" in ports:
            # A rule without peers would admit every pod of the cluster.
            assert rule["from"], rule
        else:
            assert ports == {"metrics"}
            metrics_ns = values["networkPolicy"]["metricsNamespaceLabels"]
            if metrics_ns:
                assert rule["from"] == [{"namespaceSelector": {"matchLabels": metrics_ns}}]


def test_service_monitor_shape(scenario: tuple[str, Obj, list[Obj]]) -> None:
    """ServiceMonitor is a CRD kubernetes-validate has no schema for: check the
    fields the Prometheus operator needs."""
    _, values, objs = scenario
    sms = [o for o in objs if o["kind"] == "ServiceMonitor"]
    if not values["serviceMonitor"]["enabled"]:
        assert sms == []
        return
    (sm,) = sms
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    svc = one(objs, "Service", FULLNAME)
    assert matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["scheme"] == "http"
    for key in ("interval", "scrapeTimeout"):
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", ep[key])
    for k, v in values["serviceMonitor"]["labels"].items():
        assert sm["metadata"]["labels"][k] == v


def test_budgets_job_hook(scenario: tuple[str, Obj, list[Obj]]) -> None:
    _, values, objs = scenario
    check_budgets_job(values, objs)


@pytest.mark.parametrize("variant", [
    # TLS without client certificates, CA bundle from a Secret of its own.
    {"tls": {"clientAuth": False}, "budgetsJob": {"tls": {
        "caSecret": "corp-ca", "caKey": "bundle.pem", "clientCertSecret": ""}}},
    # TLS without client certificates, CA from the server's Secret.
    {"tls": {"clientAuth": False}, "budgetsJob": {"tls": {"clientCertSecret": ""}}},
], ids=["own-ca-secret", "server-ca"])
def test_budgets_job_over_tls_variants(chart: Any, variant: Obj) -> None:
    values = merge(load_values("tls"), variant)
    check_budgets_job(chart.merge_values(values), render(chart, values))


def check_budgets_job(values: Obj, objs: list[Obj]) -> None:
    jobs = [o for o in objs if o["kind"] == "Job"]
    if not values["budgetsJob"]["enabled"]:
        assert jobs == []
        return
    (job,) = jobs
    cm = one(objs, "ConfigMap", f"{FULLNAME}-budgets")
    for o in (job, cm):
        hooks = o["metadata"]["annotations"]["helm.sh/hook"].split(",")
        assert hooks == ["post-install", "post-upgrade"]
    # The file exists before the job runs.
    assert int(cm["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"])
    budgets = yaml.safe_load(cm["data"]["budgets.yaml"])
    assert budgets == values["budgetsJob"]["budgets"]
    # budgetctl's own parser accepts what the job will read.
    from budgetd_client.cli import apply as budgetctl_apply

    assert budgetctl_apply.parse(budgets, "budgets.yaml")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    c = container(pod, "budgetctl")
    assert c["command"][:3] == ["budgetctl", "apply", "-f"]
    path = pathlib.PurePosixPath(c["command"][3])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent))
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    env = env_of(c)
    assert env["BUDGETD_SERVER"]["value"] == (
        f"{FULLNAME}.{NAMESPACE}.svc:{values['server']['grpcPort']}")
    if values["auth"]["enabled"]:
        assert env["BUDGETD_TOKEN"]["valueFrom"]["secretKeyRef"] == values["budgetsJob"][
            "tokenSecret"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def secret_behind(file_path: str) -> tuple[str, str]:
        """(Secret name, key) that the file at file_path in the job comes from."""
        f = pathlib.PurePosixPath(file_path)
        vol = volumes[mounts[str(f.parent)]]["secret"]
        (item,) = [i for i in vol["items"] if i["path"] == f.name]
        return vol["secretName"], item["key"]

    tls = values["tls"]
    if not tls["enabled"]:
        assert not {"BUDGETD_TLS", "BUDGETD_CA_FILE", "BUDGETD_CERT_FILE",
                    "BUDGETD_KEY_FILE"} & set(env)
    else:
        assert env["BUDGETD_TLS"]["value"] == "1"
        ca_secret = values["budgetsJob"]["tls"]["caSecret"] or tls["secretName"]
        assert secret_behind(env["BUDGETD_CA_FILE"]["value"]) == (
            ca_secret, values["budgetsJob"]["tls"]["caKey"])
        # The job never mounts the server's private key.
        for v in volumes.values():
            if v.get("secret", {}).get("secretName") == tls["secretName"]:
                assert [i["key"] for i in v["secret"]["items"]] == ["ca.crt"]
        if tls["clientAuth"]:
            client = values["budgetsJob"]["tls"]["clientCertSecret"]
            assert secret_behind(env["BUDGETD_CERT_FILE"]["value"]) == (client, "tls.crt")
            assert secret_behind(env["BUDGETD_KEY_FILE"]["value"]) == (client, "tls.key")
        else:
            assert "BUDGETD_CERT_FILE" not in env and "BUDGETD_KEY_FILE" not in env
    # The job passes the gRPC NetworkPolicy.
    if values["networkPolicy"]["enabled"]:
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert matches(values["networkPolicy"]["clientLabels"], labels)


def test_notes_tell_how_to_reach_the_service(chart: Any) -> None:
    notes = render_raw(chart, load_values("production"))["budgetd/templates/NOTES.txt"]
    assert f"{FULLNAME}.{NAMESPACE}.svc:50051" in notes
    assert "budgetctl apply -f" in notes and "BUDGETD_TOKEN" in notes
    assert "budgetd.example.com/client=true" in notes
    tls = render_raw(chart, load_values("tls"))["budgetd/templates/NOTES.txt"]
    assert f"BUDGETD_SERVER={FULLNAME}.{NAMESPACE}.svc:8443" in tls
    assert "BUDGETD_CA_FILE=" in tls and "BUDGETD_CERT_FILE=" in tls
    assert "health-only\nport 8444" in tls
    assert "budgetd-budgets-job-client-tls" in tls
    dev = render_raw(chart, {})["budgetd/templates/NOTES.txt"]
    assert "BUDGETD_CA_FILE" not in dev and "health-only" not in dev
    assert "development only" in dev and "auth is off" in dev


# ---- values that must not render ----

EXTERNAL = {"redis": {"url": "redis://redis:6379/0", "embedded": {"enabled": False}}}
BUDGETS = {"orgs": {"acme": {"limits": [{"window": "day", "unit": "tokens", "limit": 1000}]}}}
TOKEN = {"name": "a", "sha256": "0" * 64, "role": "admin", "orgs": "*"}


def merge(*parts: Obj) -> Obj:
    out: Obj = {}
    for p in parts:
        for k, v in p.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k),
                                                                             dict) else v
    return out


INVALID: list[tuple[str, Obj, str]] = [
    ("both redis modes", {"redis": {"url": "redis://r:6379"}},
     "set either redis.url (external Redis) or redis.embedded.enabled=true"),
    ("no redis at all", {"redis": {"embedded": {"enabled": False}}},
     "no Redis configured"),
    ("existing secret with embedded redis", {"secret": {"existingSecret": "s"}},
     "set redis.embedded.enabled=false"),
    ("embedded redis replicas 2", {"redis": {"embedded": {"replicas": 2}}},
     "/redis/embedded/replicas"),
    ("embedded redis replicas 0", {"redis": {"embedded": {"replicas": 0}}},
     "the embedded Redis is a single unreplicated server"),
    ("replicaCount a string", {"replicaCount": "3"}, "/replicaCount': got string, want integer"),
    ("grpc port a string", {"server": {"grpcPort": "50051"}}, "/server/grpcPort"),
    ("port out of range", {"server": {"grpcPort": 70000}}, "/server/grpcPort"),
    ("log format", {"server": {"logFormat": "xml"}}, "/server/logFormat"),
    ("no workers", {"server": {"workers": 0}}, "/server/workers"),
    ("too many workers", {"server": {"workers": 65}}, "/server/workers"),
    ("enabled a string", {"autoscaling": {"enabled": "yes"}}, "/autoscaling/enabled"),
    ("unknown top-level key", {"replicas": 3}, "additional properties 'replicas' not allowed"),
    ("typo in a section", {"redis": {"embeded": {"enabled": True}}},
     "additional properties 'embeded' not allowed"),
    ("typo in networkPolicy", {"networkPolicy": {"clientLabel": {"a": "b"}}},
     "additional properties 'clientLabel' not allowed"),
    ("redis url scheme", merge(EXTERNAL, {"redis": {"url": "http://r:6379"}}), "/redis/url"),
    ("token not a hash", merge(EXTERNAL, {"auth": {"enabled": True, "tokens": [
        {**TOKEN, "sha256": "my-plain-token"}]}}), "/auth/tokens/0/sha256"),
    ("token role", merge(EXTERNAL, {"auth": {"enabled": True, "tokens": [
        {**TOKEN, "role": "root"}]}}), "/auth/tokens/0/role"),
    ("token orgs empty", merge(EXTERNAL, {"auth": {"enabled": True, "tokens": [
        {**TOKEN, "orgs": []}]}}), "/auth/tokens/0/orgs': minItems: got 0, want 1"),
    ("token orgs missing", merge(EXTERNAL, {"auth": {"enabled": True, "tokens": [
        {k: v for k, v in TOKEN.items() if k != "orgs"}]}}), "missing property 'orgs'"),
    ("token orgs a bad id", merge(EXTERNAL, {"auth": {"enabled": True, "tokens": [
        {**TOKEN, "orgs": ["acme", "no spaces"]}]}}), "/auth/tokens/0/orgs/1"),
    ("token orgs another string", merge(EXTERNAL, {"auth": {"enabled": True, "tokens": [
        {**TOKEN, "orgs": "all"}]}}), "/auth/tokens/0/orgs"),
    ("token name missing", merge(EXTERNAL, {"auth": {"enabled": True, "tokens": [
        {k: v for k, v in TOKEN.items() if k != "name"}]}}), "missing property 'name'"),
    ("token name with spaces", merge(EXTERNAL, {"auth": {"enabled": True, "tokens": [
        {**TOKEN, "name": "my token"}]}}), "/auth/tokens/0/name"),
    ("token names repeated", merge(EXTERNAL, {"auth": {"enabled": True, "tokens": [
        TOKEN, {**TOKEN, "sha256": "1" * 64}]}}),
     "auth.tokens[1].name: \"a\" appears twice"),
    ("token hashes repeated", merge(EXTERNAL, {"auth": {"enabled": True, "tokens": [
        TOKEN, {**TOKEN, "name": "b"}]}}), "auth.tokens[1].sha256: same hash as token \"a\""),
    ("auth without tokens", merge(EXTERNAL, {"auth": {"enabled": True}}),
     "auth.enabled=true needs auth.tokens"),
    ("tls without secret", merge(EXTERNAL, {"tls": {"enabled": True}}),
     "tls.enabled=true needs tls.secretName"),
    ("client auth without tls", merge(EXTERNAL, {"tls": {"clientAuth": True}}),
     "tls.clientAuth=true needs tls.enabled=true"),
    ("health port on the grpc port", merge(EXTERNAL, {
        "tls": {"enabled": True, "secretName": "t"}, "server": {"healthPort": 50051}}),
     "server.healthPort=50051 equals server.grpcPort"),
    ("health port on the metrics port", merge(EXTERNAL, {
        "tls": {"enabled": True, "secretName": "t"}, "server": {"healthPort": 9464}}),
     "server.healthPort=9464 equals metrics.port"),
    ("job over mTLS without a client certificate", merge(EXTERNAL, {
        "tls": {"enabled": True, "secretName": "t", "clientAuth": True},
        "budgetsJob": {"enabled": True, "budgets": BUDGETS}}),
     "needs budgetsJob.tls.clientCertSecret"),
    ("grace shorter than drain", {"server": {"drainSeconds": 30}},
     "terminationGracePeriodSeconds=30 must exceed server.drainSeconds + preStopSleepSeconds"),
    ("existing secret plus inline url", merge(EXTERNAL, {"secret": {"existingSecret": "s"}}),
     "leave redis.url, auth.tokens and webhook.url empty"),
    ("hpa min above max", {"autoscaling": {"enabled": True, "minReplicas": 5,
                                           "maxReplicas": 3}},
     "autoscaling.minReplicas=5 exceeds autoscaling.maxReplicas=3"),
    ("job without budgets", {"budgetsJob": {"enabled": True}}, "needs budgetsJob.budgets"),
    ("job budgets in another format", {"budgetsJob": {"enabled": True, "budgets": {
        "orgs": [{"org": "acme", "budgets": []}]}}}, "/budgetsJob/budgets/orgs"),
    ("job budgets with no org", {"budgetsJob": {"enabled": True, "budgets": {"orgs": {}}}},
     "/budgetsJob/budgets/orgs"),
    ("job with auth but no token", merge(EXTERNAL, {
        "auth": {"enabled": True, "tokens": [TOKEN]},
        "budgetsJob": {"enabled": True, "budgets": BUDGETS}}),
     "needs budgetsJob.tokenSecret.name"),
    ("service monitor without metrics", {"serviceMonitor": {"enabled": True},
                                         "metrics": {"enabled": False}},
     "serviceMonitor.enabled=true needs metrics.enabled=true"),
]


@pytest.mark.parametrize(("values", "message"), [(v, m) for _, v, m in INVALID],
                         ids=[i for i, _, _ in INVALID])
def test_invalid_values_fail_with_a_readable_message(chart: Any, values: Obj,
                                                     message: str) -> None:
    with pytest.raises(helm.HelmError) as info:
        render_raw(chart, values)
    assert message in str(info.value)


def test_each_invalid_case_is_one_change_from_valid(chart: Any) -> None:
    """The invalid cases fail for the reason named, not another: the same
    values with the offending part fixed render."""
    fixed = [
        {"redis": {"url": "redis://r:6379", "embedded": {"enabled": False}}},
        merge(EXTERNAL, {"auth": {"enabled": True, "tokens": [TOKEN]}}),
        merge(EXTERNAL, {"tls": {"enabled": True, "secretName": "t"}}),
        # orgs as a list, names and hashes distinct.
        merge(EXTERNAL, {"auth": {"enabled": True, "tokens": [
            TOKEN, {**TOKEN, "name": "b", "sha256": "1" * 64, "orgs": ["acme", "globex"]}]}}),
        merge(EXTERNAL, {"tls": {"enabled": True, "secretName": "t"},
                         "server": {"healthPort": 9090}}),
        # The health port is only opened with TLS: it may then be anything.
        {"server": {"healthPort": 50051}},
        merge(EXTERNAL, {"tls": {"enabled": True, "secretName": "t", "clientAuth": True},
                         "budgetsJob": {"enabled": True, "budgets": BUDGETS,
                                        "tls": {"clientCertSecret": "c"}}}),
        {"server": {"drainSeconds": 20}},
        {"budgetsJob": {"enabled": True, "budgets": BUDGETS}},
    ]
    for values in fixed:
        assert render(chart, values)


# ---- the rendered pods, run for real ----

class PodFiles:
    """Lays out what a rendered container would see under its volume mounts,
    below a local root, from rendered ConfigMaps and given Secret contents."""

    def __init__(self, root: pathlib.Path, objs: list[Obj],
                 secrets: dict[str, dict[str, bytes]]) -> None:
        self.root = root
        self.configmaps = {o["metadata"]["name"]: o["data"] for o in objs
                           if o["kind"] == "ConfigMap"}
        self.secrets = secrets
        self.mounts: list[str] = []

    def mount(self, pod: Obj, c: Obj) -> None:
        volumes = {v["name"]: v for v in pod["volumes"]}
        for m in c["volumeMounts"]:
            vol = volumes[m["name"]]
            target = self.root / m["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            self.mounts.append(m["mountPath"])
            if "secret" in vol:
                data = self.secrets[vol["secret"]["secretName"]]
                items = vol["secret"].get("items") or [{"key": k, "path": k} for k in data]
                for i in items:
                    (target / i["path"]).write_bytes(data[i["key"]])
            elif "configMap" in vol:
                for k, v in self.configmaps[vol["configMap"]["name"]].items():
                    (target / k).write_text(v)

    def path(self, value: str) -> str:
        """A path inside the container, as a local path."""
        for mp in self.mounts:
            if value.startswith(mp.rstrip("/") + "/"):
                return str(self.root / value.lstrip("/"))
        return value

    def env(self, c: Obj) -> dict[str, str]:
        out: dict[str, str] = {}
        for ref in c.get("envFrom", []):
            out.update(self.configmaps[ref["configMapRef"]["name"]])
        for e in c.get("env", []):
            if "value" in e:
                out[e["name"]] = e["value"]
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                out[e["name"]] = self.secrets[ref["name"]][ref["key"]].decode()
        return {k: self.path(v) for k, v in out.items()}


def test_tls_release_runs_the_budgets_job_against_its_server(
        chart: Any, redis_server: Any, r: Any, tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/helm-values/tls.yaml: the budgetd container started with the
    settings the Deployment gives it (mTLS, auth from the chart's Secret, the
    health port), the probes' health checks answered in plaintext, and the
    hook Job's `budgetctl apply` run with the env and files the Job gives it,
    over mTLS with its admin token, twice (install, then an upgrade)."""
    import argparse

    import grpc
    from budgetd.clock import SystemClock
    from budgetd.config import add_arguments, from_args
    from budgetd.server import ServerThread
    from budgetd_client import AdminClient
    from budgetd_client.cli import main as budgetctl
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from test_tls import Pki

    values = load_values("tls")
    objs = render(chart, values)
    (tmp_path / "pki").mkdir()
    pki = Pki(tmp_path / "pki")
    secret = one(objs, "Secret", FULLNAME)
    secrets = {
        FULLNAME: {k: base64.b64decode(v) for k, v in secret["data"].items()},
        values["tls"]["secretName"]: {"tls.crt": pki.read("server.crt"),
                                      "tls.key": pki.read("server.key"),
                                      "ca.crt": pki.read("ca")},
        values["budgetsJob"]["tls"]["clientCertSecret"]: {"tls.crt": pki.read("client.crt"),
                                                          "tls.key": pki.read("client.key")},
        # The budgets-job token whose SHA-256 tls.yaml lists (sha256("bar")).
        values["budgetsJob"]["tokenSecret"]["name"]: {"token": b"bar"},
    }

    def set_env(env: dict[str, str]) -> None:
        for k in [k for k in os.environ if k.startswith("BUDGETD_")]:
            monkeypatch.delenv(k)
        for k, v in env.items():
            monkeypatch.setenv(k, v)

    # The server, as the Deployment runs it. Only addresses change: loopback
    # ports of its own, and the test's Redis instead of the example URL.
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    server_files = PodFiles(tmp_path / "server", objs, secrets)
    c = container(pod, "budgetd")
    server_files.mount(pod, c)
    env = server_files.env(c)
    assert env["BUDGETD_HEALTH_LISTEN"].endswith(f":{values['server']['healthPort']}")
    env.update(BUDGETD_LISTEN="127.0.0.1:0", BUDGETD_HEALTH_LISTEN="127.0.0.1:0",
               BUDGETD_METRICS_LISTEN="", BUDGETD_REDIS_URL=redis_server.url,
               BUDGETD_DATA_DIR=str(tmp_path / "data"))
    set_env(env)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings = from_args(parser.parse_args([]))
    assert settings.tls_client_ca_file and settings.auth_tokens_file
    server = ServerThread(settings, SystemClock()).start()
    try:
        app = server.app
        # What the kubelet's probes ask, on the probe port, in plaintext.
        with grpc.insecure_channel(f"127.0.0.1:{app.health_port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                service = c[probe]["grpc"]["service"]
                resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert resp.status == health_pb2.HealthCheckResponse.SERVING, probe

        # The hook Job, as rendered: its env, its files, its command.
        job_pod = one(objs, "Job")["spec"]["template"]["spec"]
        job_files = PodFiles(tmp_path / "job", objs, secrets)
        jc = container(job_pod, "budgetctl")
        job_files.mount(job_pod, jc)
        job_env = job_files.env(jc)
        # The Service address, here the loopback name the test certificate has.
        job_env["BUDGETD_SERVER"] = f"localhost:{app.port}"

        def run_job(env: dict[str, str]) -> tuple[int, str, str]:
            set_env(env)
            out, err = io.StringIO(), io.StringIO()
            argv = [job_files.path(a) for a in jc["command"][1:]]
            return budgetctl(argv, out=out, err=err), out.getvalue(), err.getvalue()

        code, out, err = run_job(job_env)
        assert code == 0, err
        assert out.splitlines()[-1] == "Applied."
        with AdminClient(f"localhost:{app.port}", token="bar",
                         root_certificates=pki.read("ca"), private_key=pki.read("client.key"),
                         certificate_chain=pki.read("client.crt")) as admin:
            (rule,) = admin.list_budgets("acme")
        assert (str(rule.scope), rule.window, rule.unit, rule.limit) == (
            "acme", "month", "cost_micros", 100_000_000)
        # The upgrade hook runs it again: nothing to change.
        code, out, err = run_job(job_env)
        assert code == 0, err
        assert "No changes." in out.splitlines()
        # mTLS is really in force: without the client certificate it cannot connect.
        no_cert = {k: v for k, v in job_env.items()
                   if k not in ("BUDGETD_CERT_FILE", "BUDGETD_KEY_FILE")}
        code, _, err = run_job(no_cert)
        assert code == 3, err
    finally:
        server.stop()
