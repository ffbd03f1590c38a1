"""Rendering the Helm chart (helm/livealign) offline, and checking what it renders: the
core objects with kubernetes-validate (strict: an unknown field is an error), Strimzi's and
the Prometheus operator's objects against their CRDs' schemas (helm/validate, npm
packages), KubeRay's RayService against helm/validate/rayservice.schema.json with its pod
templates as core objects and its Serve config against Ray Serve's own schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "livealign"
VALIDATE = ROOT / "helm" / "validate"
PROFILES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.31.0"
# What a cluster with KubeRay, Strimzi and the Prometheus operator offers.
OPERATOR_APIS = (
    "ray.io/v1/RayService",
    "kafka.strimzi.io/v1beta2/Kafka",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)
CRD_GROUPS = ("kafka.strimzi.io", "monitoring.coreos.com")


def helm_binary() -> Path:
    """The Makefile's pinned Helm, next to this interpreter (``make`` puts it in the venv)."""
    beside = Path(sys.executable).parent / "helm"
    found = beside if beside.is_file() else shutil.which("helm")
    if found is None:
        raise FileNotFoundError(f"no Helm at {beside}: run `make` (its helm target)")
    return Path(found)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render_text(
    values: Path | None = None, *sets: str, apis: tuple[str, ...] = OPERATOR_APIS
) -> subprocess.CompletedProcess[str]:
    args = ["template", "lv", str(CHART), "--namespace", "livealign"]
    args += ["--kube-version", KUBE_VERSION]
    for api in apis:
        args += ["--api-versions", api]
    if values is not None:
        args += ["--values", str(values)]
    for s in sets:
        args += ["--set", s]
    return helm(*args)


@cache
def _render(values: Path | None, sets: tuple[str, ...], apis: tuple[str, ...]) -> str:
    done = render_text(values, *sets, apis=apis)
    if done.returncode != 0:
        raise AssertionError(f"helm template failed: {done.stderr}")
    return done.stdout


def render(
    values: Path | None = None, *sets: str, apis: tuple[str, ...] = OPERATOR_APIS
) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_render(values, sets, apis)) if d]


def find(objects: list[dict[str, Any]], kind: str, name_end: str = "") -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_end)]
    assert len(found) == 1, f"{len(found)} {kind} objects named *{name_end}"
    return found[0]


def core_errors(objects: list[dict[str, Any]]) -> list[str]:
    """kubernetes-validate, strict, on every object of a core API group."""
    errors = []
    for obj in objects:
        if obj["apiVersion"].split("/")[0] in (*CRD_GROUPS, "ray.io"):
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    return errors


def crd_errors(objects: list[dict[str, Any]]) -> list[str]:
    """Strimzi's and the Prometheus operator's objects against their CRDs' schemas."""
    custom = [o for o in objects if o["apiVersion"].split("/")[0] in CRD_GROUPS]
    if not custom:
        return []
    node = shutil.which("node")
    if node is None or not (VALIDATE / "node_modules").is_dir():
        raise FileNotFoundError("no node or no helm/validate/node_modules: run `make`")
    done = subprocess.run(
        [node, str(VALIDATE / "validate.mjs")], input=json.dumps(custom), capture_output=True,
        text=True, timeout=120, check=True,
    )  # fmt: skip
    results = json.loads(done.stdout)
    assert len(results) == len(custom)
    return [f"{r['kind']}/{r['name']}: {r['error']}" for r in results if r["error"] is not None]


def _closed(schema: Any) -> Any:
    """A JSON schema whose objects take no property they do not name."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@cache
def _serve_schema() -> dict[str, Any]:
    from ray.serve.schema import ServeDeploySchema

    return dict(_closed(ServeDeploySchema.model_json_schema()))


def rayservice_errors(objects: list[dict[str, Any]]) -> list[str]:
    schema = json.loads((VALIDATE / "rayservice.schema.json").read_text())
    errors = []
    for obj in (o for o in objects if o["kind"] == "RayService"):
        name = f"RayService/{obj['metadata']['name']}"
        validator = jsonschema.Draft202012Validator(schema)
        errors += [f"{name}: {e.json_path}: {e.message}" for e in validator.iter_errors(obj)]
        cluster = obj["spec"]["rayClusterConfig"]
        groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
        for i, group in enumerate(groups):
            pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"g{i}"}}
            try:
                kubernetes_validate.validate(
                    {**pod, "template": group["template"]}, KUBE_VERSION, strict=True
                )
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{name}: group {i} template: {exc.message}")
        serve = yaml.safe_load(obj["spec"]["serveConfigV2"])
        serve_validator = jsonschema.Draft202012Validator(_serve_schema())
        errors += [f"{name}: serveConfigV2 {e.json_path}: {e.message}"
                   for e in serve_validator.iter_errors(serve)]  # fmt: skip
    return errors


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def processor_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(objects, "Deployment", "-processor")
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def ray_containers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Ray pods' containers by group: head, serving, trainer."""
    cluster = find(objects, "RayService")["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]["spec"]["containers"][0]}
    for group in cluster["workerGroupSpecs"]:
        out[group["groupName"]] = group["template"]["spec"]["containers"][0]
    return out


def secret_files(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The secrets folder's files as the chart projects them: file name -> Secret key."""
    deployment = find(objects, "Deployment", "-processor")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    files = {}
    for source in volumes["secrets"]["projected"]["sources"]:
        for item in source["secret"]["items"]:
            files[item["path"]] = item["key"]
    return files
