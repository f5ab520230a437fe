"""infra/: every KubeRay and Kubernetes manifest parses, has what KubeRay requires, runs a
real fiqa verb, and mounts configs that our pydantic models accept; the images install the
project on the bases they name."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser
from jobs.config import ConfigError, config_from_args

INFRA = Path(__file__).parents[2] / "infra"
CONFIG_DIR = "/etc/fiqa"  # where the Ray pods mount the ConfigMap fiqa-config


def documents() -> list[dict]:
    docs = []
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["kind"], path
            assert doc["metadata"].get("name") or doc["metadata"].get("generateName"), path
            docs.append(doc)
    return docs


DOCS = documents()


def of_kind(kind: str) -> list[dict]:
    return [d for d in DOCS if d["kind"] == kind]


def named(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in of_kind(kind)}


def validated(entrypoint: str, tmp_path: Path):
    """The config a `fiqa VERB ...` entrypoint runs with, its --config read from the
    ConfigMap the cluster mounts at CONFIG_DIR."""
    argv = shlex.split(entrypoint)
    assert argv[0] == "fiqa", entrypoint
    args = build_parser().parse_args(argv[1:])  # exits on an unknown verb or flag
    if getattr(args, "config", None):
        directory, _, name = args.config.rpartition("/")
        assert directory == CONFIG_DIR, entrypoint
        local = tmp_path / name
        local.write_text(named("ConfigMap")["fiqa-config"]["data"][name])
        args.config = str(local)
    return config_from_args(args.config_cls, args)


def pods(doc: dict) -> list[dict]:
    """Every pod spec in a manifest."""
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        return [g["template"]["spec"] for g in groups]
    if doc["kind"] == "RayJob":
        return [spec["submitterPodTemplate"]["spec"]]
    if doc["kind"] == "RayCronJob":
        return [spec["jobTemplate"]["submitterPodTemplate"]["spec"]]
    if doc["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def embedded_rayjobs() -> list[dict]:
    """RayJobs that a CronJob creates, kept in ConfigMaps."""
    return [
        yaml.safe_load(text)
        for cm in of_kind("ConfigMap")
        for text in cm["data"].values()
        if "kind: RayJob" in text
    ]


def rayjob_specs() -> list[dict]:
    return [
        *(d["spec"] for d in of_kind("RayJob")),
        *(d["spec"] for d in embedded_rayjobs()),
        *(d["spec"]["jobTemplate"] for d in of_kind("RayCronJob")),
    ]


def test_the_ray_cluster_has_what_kuberay_requires():
    (cluster,) = of_kind("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["name"] and head_container["image"]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]  # a CPU head
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    for group in groups.values():
        assert isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        assert container["name"] and container["image"]
    gpu = [g for g in groups.values() if "nvidia.com/gpu" in container_limits(g)]
    cpu = [g for g in groups.values() if "nvidia.com/gpu" not in container_limits(g)]
    assert len(gpu) == 1 and gpu[0]["minReplicas"] == 0 and gpu[0]["maxReplicas"] > 0
    assert gpu[0]["template"]["spec"]["containers"][0]["image"].endswith(":cuda")
    assert len(cpu) == 1 and cpu[0]["maxReplicas"] > 0


def container_limits(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_every_entrypoint_is_a_fiqa_verb_whose_config_validates(tmp_path):
    verbs = {}
    for spec in rayjob_specs():
        assert spec["clusterSelector"]["ray.io/cluster"] in named("RayCluster")
        config = validated(spec["entrypoint"], tmp_path)
        verbs[shlex.split(spec["entrypoint"])[1]] = config
    assert set(verbs) == {"train", "score", "curate"}
    assert verbs["curate"].export.to == "rec-idx" and verbs["curate"].datasets
    # The configs use the catalog on the head's persistent volume and an s3:// warehouse.
    (cluster,) = of_kind("RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    assert volumes[mounts[CONFIG_DIR]]["configMap"]["name"] == "fiqa-config"
    for verb in ("score", "curate"):
        props = verbs[verb].catalog.properties
        database = props["uri"].removeprefix("sqlite:///")
        home = next(path for path in mounts if database.startswith(path + "/"))
        assert "persistentVolumeClaim" in volumes[mounts[home]]
        assert props["warehouse"].startswith("s3://")


def test_the_validation_refuses_what_the_cluster_would(tmp_path):
    with pytest.raises(SystemExit):
        validated("fiqa curat --config /etc/fiqa/curate.yaml", tmp_path)
    with pytest.raises(KeyError):
        validated("fiqa curate --config /etc/fiqa/missing.yaml", tmp_path)
    with pytest.raises(ConfigError, match="model"):
        validated("fiqa score --config /etc/fiqa/train.yaml", tmp_path)


def test_scheduled_curation_both_ways():
    (cron,) = of_kind("RayCronJob")
    assert cron["apiVersion"] == "ray.io/v1"
    assert len(cron["spec"]["schedule"].split()) == 5
    (plain,) = of_kind("CronJob")
    assert plain["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(plain["spec"]["schedule"].split()) == 5
    (pod,) = pods(plain)
    script = pod["containers"][0]["command"][-1]
    assert "kubectl create -f /rayjob/rayjob.yaml" in script
    assert 'test "$status" = SUCCEEDED' in script  # the pod fails when the job does
    volume = {v["name"]: v for v in pod["volumes"]}[pod["containers"][0]["volumeMounts"][0]["name"]]
    assert "rayjob.yaml" in named("ConfigMap")[volume["configMap"]["name"]]["data"]
    role = named("Role")[pod["serviceAccountName"]]
    (binding,) = of_kind("RoleBinding")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (rule,) = role["rules"]
    assert rule["resources"] == ["rayjobs"] and {"create", "get"} <= set(rule["verbs"])


def test_every_reference_names_something_defined():
    secrets = {n: set(s["stringData"]) for n, s in named("Secret").items()}
    configmaps, claims = named("ConfigMap"), named("PersistentVolumeClaim")
    checked = 0
    for doc in [*DOCS, *embedded_rayjobs()]:
        for pod in pods(doc):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for volume in volumes.values():
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in configmaps
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims
            for container in pod["containers"]:
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes
                for source in container.get("envFrom", []):
                    assert source["secretRef"]["name"] in secrets
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in secrets[ref["name"]]
                        checked += 1
    assert checked >= 5  # the Ray token reaches the head, both worker groups and submitters


def test_the_images_install_the_project_on_their_bases():
    pinned = re.search(r'"torch==([\d.]+)"', (INFRA.parent / "pyproject.toml").read_text())[1]
    cuda = (INFRA / "docker/Dockerfile.cuda").read_text()
    base = re.search(r"ARG BASE=(\S+)", cuda)[1]
    assert base.startswith(f"pytorch/pytorch:{pinned}-cuda")
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (INFRA / "docker" / name).read_text()
        assert re.search(r"^RUN pip install \. ", text, re.M), name
        copied = set(re.findall(r"^COPY (\S+) ", text, re.M))
        assert {"models", "pipeline", "jobs", "pyproject.toml"} <= copied, name
