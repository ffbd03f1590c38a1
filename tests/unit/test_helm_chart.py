"""The Helm chart (helm/livealign): it lints strictly, renders for every CI profile, and
every object it renders is valid (core objects strictly, custom resources against their
CRDs' schemas); a misspelled values key fails; its rules are the alert file itself and its
dashboards the generated JSON; and its settings are ones LiveAlign reads."""

from __future__ import annotations

import base64
import json
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from livealign.config import ENV_PREFIX, Settings
from monitoring import dashboards
from streaming.topics import TOPICS
from tests.unit import chart
from tests.unit.chart import CHART, PROFILES, find, render

PROFILE_IDS = [p.name.removesuffix("-values.yaml") for p in PROFILES]
ALL = [None, *PROFILES]  # the defaults too
ALL_IDS = ["defaults", *PROFILE_IDS]


def test_there_are_the_four_ci_profiles() -> None:
    assert {"cpu-small", "gpu", "external-kafka", "strimzi-monitoring"} <= set(PROFILE_IDS)


@pytest.mark.parametrize("values", ALL, ids=ALL_IDS)
def test_lint_is_clean_in_strict_mode(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version", chart.KUBE_VERSION]
    done = chart.helm(*args, *(["--values", str(values)] if values else []))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


@pytest.mark.parametrize("values", ALL, ids=ALL_IDS)
def test_every_core_object_is_valid_strictly(values: Path | None) -> None:
    objects = render(values)
    assert chart.core_errors(objects) == []


@pytest.mark.parametrize("values", ALL, ids=ALL_IDS)
def test_every_custom_resource_matches_its_crd(values: Path | None) -> None:
    objects = render(values)
    assert chart.crd_errors(objects) == []
    assert chart.rayservice_errors(objects) == []


def test_the_validators_catch_what_they_should() -> None:
    """Each check refuses a broken object: an unknown field in a core object and in a pod
    template, a wrong type in a custom resource, an unknown Serve config key."""
    objects = render()
    deployment = find(objects, "Deployment", "-processor")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    assert chart.core_errors([broken])
    topic = json.loads(json.dumps(find(objects, "KafkaTopic", "-livealign-feedback")))
    topic["spec"]["partitions"] = "four"
    assert chart.crd_errors([topic])
    ray = json.loads(json.dumps(find(objects, "RayService")))
    worker = ray["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    worker["template"]["spec"]["containers"][0]["resource"] = {}
    assert any("template" in e for e in chart.rayservice_errors([ray]))
    ray = json.loads(json.dumps(find(objects, "RayService")))
    serve = yaml.safe_load(ray["spec"]["serveConfigV2"])
    serve["applications"][0]["deployments"][0]["num_replica"] = 2
    ray["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    assert any("serveConfigV2" in e for e in chart.rayservice_errors([ray]))
    ray["spec"]["upgradeStrategy"] = {"type": "BlueGreen"}
    assert any("upgradeStrategy" in e for e in chart.rayservice_errors([ray]))


@pytest.mark.parametrize(
    "bad",
    [
        "serving.replicsa=3",  # a misspelled key
        "kafka.topics.retention=1",  # a key of another name
        "monitoring.dashboards.lable=x",  # nested
        "kafka.mode=kraft",  # not one of the enum
        "serving.replicas=0",  # out of range
    ],
)
def test_a_misspelled_or_invalid_value_fails_the_install(bad: str) -> None:
    done = chart.render_text(None, bad)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert bad.split("=")[0].split(".")[-1] in done.stderr or "kraft" in bad or "=0" in bad


def test_external_kafka_needs_its_address() -> None:
    done = chart.render_text(None, "kafka.mode=external")
    assert done.returncode != 0 and "schema" in done.stderr


def test_more_processors_than_partitions_are_refused() -> None:
    done = chart.render_text(None, "processor.replicas=5", "kafka.topics.partitions=4")
    assert done.returncode != 0
    assert "processor.replicas (5) > kafka.topics.partitions (4)" in done.stderr


def test_a_gpu_needs_the_cuda_image() -> None:
    done = chart.render_text(None, "gpu.enabled=true")
    assert done.returncode != 0 and "image.variant=cuda" in done.stderr


def test_custom_resources_are_rendered_only_where_their_apis_are() -> None:
    objects = render(None, apis=())
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"RayService", "Kafka", "KafkaNodePool", "KafkaTopic", "PodMonitor"}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    assert "Deployment" in kinds


def test_the_prometheus_rule_is_the_alert_file_itself() -> None:
    rule = find(render(), "PrometheusRule")
    source = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"] == source
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_release_label_is_the_values() -> None:
    objects = render(None, "monitoring.release=prom")
    monitors = [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert len(monitors) == 5
    assert {m["metadata"]["labels"]["release"] for m in monitors} == {"prom"}


def test_the_dashboards_are_the_generated_json() -> None:
    maps = [o for o in render() if o["kind"] == "ConfigMap"]
    embedded = {name: text for m in maps for name, text in m["data"].items()}
    assert sorted(embedded) == sorted(p.name for p in dashboards.OUT.glob("*.json"))
    for name, text in embedded.items():
        assert text == (dashboards.OUT / name).read_text()
    assert dashboards.stale() == []  # and the files are what the generator makes now
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)


def test_every_part_has_a_monitor_on_its_metrics_port() -> None:
    objects = render()
    ports = {
        name: {p["name"]: p["containerPort"] for p in c["ports"]}
        for name, c in chart.ray_containers(objects).items()
    }
    serving = find(objects, "PodMonitor", "-serving")["spec"]
    assert serving["selector"]["matchLabels"]["app.kubernetes.io/component"] == "serving"
    assert [e["port"] for e in serving["podMetricsEndpoints"]] == ["metrics"]
    assert ports["serving"]["metrics"] == 9100
    learning = find(objects, "PodMonitor", "-learning")["spec"]
    assert [e["port"] for e in learning["podMetricsEndpoints"]] == [
        "trainer-metrics",
        "canary-metrics",
    ]
    trainer_ports = {"trainer-metrics": 9102, "canary-metrics": 9103, "ray-metrics": 8080}
    assert ports["trainer"] == trainer_ports
    processor = find(objects, "ServiceMonitor", "-processor")["spec"]
    service = find(objects, "Service", "-processor-metrics")["spec"]
    assert processor["endpoints"][0]["port"] == service["ports"][0]["name"] == "metrics"
    container = chart.processor_container(objects)
    assert container["ports"][0]["containerPort"] == service["ports"][0]["port"] == 9101
    # The ports the parts listen on are the ports the monitors scrape.
    env = chart.env_of(container)
    assert env["LIVEALIGN_PROCESSOR_METRICS_PORT"] == "9101"
    assert env["LIVEALIGN_SERVING_METRICS_PORT"] == "9100"
    assert env["LIVEALIGN_TRAINER_METRICS_PORT"] == "9102"
    assert env["LIVEALIGN_CANARY_METRICS_PORT"] == "9103"
    assert env["LIVEALIGN_METRICS_HOST"] == "0.0.0.0"


def test_the_kafka_topics_are_livealigns_with_the_values() -> None:
    profile = CHART / "ci" / "strimzi-monitoring-values.yaml"
    objects = render(profile)
    topics = [o for o in objects if o["kind"] == "KafkaTopic"]
    assert sorted(t["spec"]["topicName"] for t in topics) == sorted(TOPICS)
    values = yaml.safe_load(profile.read_text())["kafka"]["topics"]
    for t in topics:
        assert t["spec"]["partitions"] == values["partitions"]
        assert t["spec"]["replicas"] == values["replication"]
        assert t["spec"]["config"]["retention.ms"] == values["retentionMs"]
    kafka = find(objects, "Kafka")
    pool = find(objects, "KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    bootstrap = chart.env_of(chart.processor_container(objects))["LIVEALIGN_KAFKA"]
    assert bootstrap == f"{kafka['metadata']['name']}-kafka-bootstrap:9092"


def test_external_kafka_renders_no_strimzi_object() -> None:
    profile = CHART / "ci" / "external-kafka-values.yaml"
    objects = render(profile)
    assert not [o for o in objects if o["apiVersion"].startswith("kafka.strimzi.io/")]
    env = chart.env_of(chart.processor_container(objects))
    assert env["LIVEALIGN_KAFKA"] == "my-kafka-bootstrap.kafka.svc:9092"
    # Existing Secrets and claim: the chart makes none of its own.
    assert not [o for o in objects if o["kind"] in ("Secret", "PersistentVolumeClaim")]
    ray = find(objects, "RayService")["spec"]["rayClusterConfig"]
    assert ray["authOptions"] == {"mode": "token", "secretName": "livealign-ray-token"}


def test_the_gpu_profile_requests_gpus_and_runs_the_cuda_image() -> None:
    objects = render(CHART / "ci" / "gpu-values.yaml")
    containers = chart.ray_containers(objects)
    for group in ("serving", "trainer"):
        resources = containers[group]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert resources["requests"]["nvidia.com/gpu"] == 1
        assert containers[group]["image"].endswith("-cuda")
    assert "nvidia.com/gpu" not in json.dumps(containers["head"]["resources"])
    serve = yaml.safe_load(find(objects, "RayService")["spec"]["serveConfigV2"])
    chat, learning = serve["applications"]
    assert chat["deployments"][0]["ray_actor_options"]["num_gpus"] == 1
    assert chat["deployments"][0]["autoscaling_config"]["max_replicas"] == 6
    assert learning["args"]["trainer_gpus"] == 1


def test_the_serve_config_builds_livealigns_applications() -> None:
    """The import paths name the builders of livealign.cluster, and their args are ones
    the learning loop takes."""
    from livealign import cluster

    serve = yaml.safe_load(find(render(), "RayService")["spec"]["serveConfigV2"])
    chat, learning = serve["applications"]
    assert chat["import_path"] == "livealign.cluster:serving" and chat["route_prefix"] == "/"
    assert learning["import_path"] == "livealign.cluster:loop" and learning["route_prefix"] is None
    cluster.LoopArgs.model_validate(learning["args"])  # refuses a key it does not know
    resource = chat["deployments"][0]["ray_actor_options"]["resources"]
    assert resource == {cluster.SERVING_RESOURCE: 1}
    options = cluster.actor_options(cluster.LoopArgs.model_validate(learning["args"]))
    loop_share = learning["deployments"][0]["ray_actor_options"]["resources"]
    used = sum(o["resources"][cluster.TRAINER_RESOURCE] for o in options.values())
    assert used + loop_share[cluster.TRAINER_RESOURCE] <= 1  # all fit on the trainer pod


def test_every_setting_the_chart_sets_is_one_livealign_reads() -> None:
    """Settings() from exactly the processor's environment and its secrets folder: every
    variable is a field (none ignored for a typo), the secrets come from the files."""
    objects = render()
    env = chart.env_of(chart.processor_container(objects))
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert {k for k in env if k.startswith(ENV_PREFIX)} - fields == {"LIVEALIGN_SECRETS_DIR"}
    for containers in chart.ray_containers(objects).values():
        assert chart.env_of(containers) == env  # one set of settings for every part
    files = chart.secret_files(objects)
    assert set(files) == {
        "livealign_feedback_secret",
        "livealign_user_hash_salt",
        "livealign_admin_key",
        "livealign_store_url",
    }
    assert {f.removeprefix("livealign_") for f in files} <= set(Settings.model_fields)


def test_api_keys_are_on_and_follow_their_secret() -> None:
    objects = render()
    env = chart.env_of(chart.processor_container(objects))
    assert env["LIVEALIGN_API_KEYS"] == "true"
    keys_path = Path(env["LIVEALIGN_API_KEYS_PATH"])
    secret = find(objects, "Secret", "-api-keys")
    assert keys_path.name in secret["data"]
    assert json.loads(base64.b64decode(secret["data"][keys_path.name])) == {"keys": []}
    for name, container in chart.ray_containers(objects).items():
        mounts = [m for m in container["volumeMounts"] if m["name"] == "api-keys"]
        # A folder, never a subPath: a subPath mount never sees the Secret's updates.
        assert mounts == [{"name": "api-keys", "mountPath": str(keys_path.parent),
                           "readOnly": True}], name  # fmt: skip


def test_pods_run_unprivileged_with_read_only_roots_and_limits() -> None:
    objects = render()
    pods: list[dict[str, Any]] = [find(objects, "Deployment")["spec"]["template"]["spec"]]
    cluster = find(objects, "RayService")["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    pods += [g["template"]["spec"] for g in groups]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(c["resources"]["limits"])
            assert {"cpu", "memory"} <= set(c["resources"]["requests"])


def test_only_the_serving_port_is_open_to_outside() -> None:
    objects = render()
    policies = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy"]
    outside = []
    for policy in policies:
        for rule in policy["ingress"]:
            for peer in rule["from"]:
                if "podSelector" not in peer:  # another namespace's pods
                    outside.append((peer, rule.get("ports")))
    ingress_ns = {"kubernetes.io/metadata.name": "ingress-nginx"}
    prometheus_ns = {"kubernetes.io/metadata.name": "monitoring"}
    operator_ns = {"kubernetes.io/metadata.name": "kuberay-system"}
    for peer, ports in outside:
        ns = peer["namespaceSelector"]["matchLabels"]
        if ns == ingress_ns:
            assert ports == [{"port": 8000, "protocol": "TCP"}]
        else:
            assert ns in (prometheus_ns, operator_ns)
    pdb = find(objects, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"]["app.kubernetes.io/component"] == "serving"


def test_generated_secrets_are_kept() -> None:
    """Made once: a Secret the chart generates is not deleted with the release, and on an
    upgrade the values in the cluster are rendered again (lookup) rather than new ones."""
    objects = render()
    for secret in (o for o in objects if o["kind"] == "Secret"):
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    template = (CHART / "templates" / "secrets.yaml").read_text()
    assert template.count('lookup "v1" "Secret"') == 2


def test_the_values_schema_is_draft_2020_12_with_every_object_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    open_objects: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(schema, "")
    # Only a conditional branch (kafka's if/then) names properties without closing them:
    # the object it constrains is closed itself.
    assert [w for w in open_objects if not w.endswith(("/if", "/then", "/external"))] == []
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(defaults)) == []


def test_the_packaged_chart_carries_the_rules_and_dashboards(tmp_path: Path) -> None:
    """helm package keeps the files the templates read (no link left to follow), and
    leaves the promtool test and the CI profiles out."""
    done = chart.helm("package", str(CHART), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    [package] = tmp_path.glob("livealign-*.tgz")
    with tarfile.open(package) as tar:
        names = set(tar.getnames())
    assert "livealign/files/alerts.yaml" in names
    assert {f"livealign/files/dashboards/{p.name}" for p in dashboards.OUT.glob("*.json")} <= names
    assert not [n for n in names if n.endswith("alerts.test.yaml") or "/ci/" in n]
