#!/usr/bin/env python3
"""Offline validator of flashmall's Kubernetes manifests (k8s/overlays/*, k8s/bench).

Run from the repository root:

    python3 k8s/check.py --flashmall target/release/flashmall [--overlay NAME]...

Without --overlay (which can be repeated) every directory under k8s/overlays/
is checked, and k8s/bench. For each overlay the script renders
`kustomize build k8s/overlays/NAME` and then:

1. validates every document without a cluster, the way the API server's strict
   field validation would (unknown fields are errors):
   * built-in kinds against the Kubernetes JSON schemas bundled with the
     kubernetes-validate package, for Kubernetes 1.30.0 and 1.34.0;
   * ServiceMonitor, TidbCluster, ScyllaCluster, Certificate and Issuer
     against the openAPIV3Schema of their CustomResourceDefinition;
   * any other kind is an error;
2. runs `flashmall check-config` on the config file of every flashmall
   container (the ConfigMap mounted where its --config points), with the
   container's environment rebuilt from its env/envFrom;
3. runs consistency_checks() on the rendered documents and effective configs.

It prints a one-line summary and exits 0 only when everything passed.

Tools and schemas are installed on first use into
${FLASHMALL_K8S_TOOLS:-~/.cache/flashmall/k8s-tools}, and reused after:
* bin/kustomize: `go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.2`;
* venv/: a virtualenv with kubernetes-validate (which brings PyYAML and
  jsonschema) from PyPI; the script re-executes itself inside it, so the
  third-party imports are local to the functions that need them;
* crds/: the CRD files, cut out of their Go module's zip downloaded from the
  Go module proxy (proxy.golang.org) and checked against a pinned sha256.
Nothing downloaded is ever written into the repository.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

K8S_DIR = Path(__file__).resolve().parent
KUSTOMIZE_VERSION = "v5.8.2"
KUBERNETES_VALIDATE_VERSION = "1.37.0"
# The oldest Kubernetes we support and a current one.
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")
GO_PROXY = "https://proxy.golang.org"


@dataclass(frozen=True)
class CrdSource:
    """A CRD file inside a Go module, as served by the Go module proxy."""

    module: str
    version: str
    zip_sha256: str
    path: str

    def cache_path(self, cache: Path) -> Path:
        name = self.module.rsplit("/", 1)[-1]
        return cache / "crds" / f"{name}@{self.version}" / PurePosixPath(self.path).name


CRD_SOURCES = (
    CrdSource(  # ServiceMonitor
        module="github.com/prometheus-operator/prometheus-operator",
        version="v0.85.0",
        zip_sha256="0bdb88ed823d0f2e86cf909638439b6ad1da744a228172c7411d9987527dc5d1",
        path="example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    ),
    CrdSource(  # TidbCluster
        module="github.com/pingcap/tidb-operator",
        version="v1.6.6",
        zip_sha256="0f7a027189612ad6a7999dec8acc6c77702cd2a002bff07d7d53551668d1ec53",
        path="manifests/crd/v1/pingcap.com_tidbclusters.yaml",
    ),
    CrdSource(  # ScyllaCluster
        module="github.com/scylladb/scylla-operator",
        version="v1.18.0",
        zip_sha256="48ce4a2afb92314f1913732022854d7d7398a8a15956e5f81c2c40d61449b619",
        path="pkg/api/scylla/v1/scylla.scylladb.com_scyllaclusters.yaml",
    ),
    CrdSource(  # Certificate (the production overlay's mesh certificates)
        module="github.com/cert-manager/cert-manager",
        version="v1.21.2",
        zip_sha256="cfaf1fb53965a5fd60490861387b7dbf34cd40987c878a4f1e247f836eef4782",
        path="deploy/crds/cert-manager.io_certificates.yaml",
    ),
    CrdSource(  # Issuer
        module="github.com/cert-manager/cert-manager",
        version="v1.21.2",
        zip_sha256="cfaf1fb53965a5fd60490861387b7dbf34cd40987c878a4f1e247f836eef4782",
        path="deploy/crds/cert-manager.io_issuers.yaml",
    ),
)

# Stand-ins for what only exists in a running pod or a cluster.
DUMMY_SECRET = "dummy-secret-value-for-check-config-0123456789ab"
assert len(DUMMY_SECRET) == 48
SAMPLE_POD_IP = "10.0.0.7"
SAMPLE_HOST_IP = "10.0.0.1"
SAMPLE_NODE = "node-1"
SAMPLE_POD_UID = "3f1c2a9e-7b4d-4c55-9a0e-2d8f6b1e4c70"

FLASHMALL_CONTAINER = "flashmall"


class CheckError(Exception):
    """A failure that stops the check of one overlay or the whole run."""


def log(message: str) -> None:
    print(f"k8s-tools: {message}", file=sys.stderr, flush=True)


# --- tools: venv, kustomize, CRDs -------------------------------------------


def tools_dir() -> Path:
    default = Path.home() / ".cache" / "flashmall" / "k8s-tools"
    return Path(os.environ.get("FLASHMALL_K8S_TOOLS") or default)


def ensure_venv(cache: Path) -> Path:
    """The venv with kubernetes-validate, created when missing; its python."""
    venv = cache / "venv"
    python = venv / "bin" / "python"
    marker = venv / f"kubernetes-validate-{KUBERNETES_VALIDATE_VERSION}.installed"
    if marker.exists():
        return python
    log(f"creating {venv} with kubernetes-validate=={KUBERNETES_VALIDATE_VERSION} (pip)")
    run_install_step([sys.executable, "-m", "venv", "--clear", str(venv)])
    run_install_step([str(python), "-m", "pip", "install", "--quiet",
                      f"kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"])
    marker.touch()
    return python


def run_inside_venv(python: Path) -> None:
    """Re-executes this script with the venv's python unless already there."""
    venv = python.parent.parent
    if Path(sys.prefix).resolve() == venv.resolve():
        return
    sys.stdout.flush()
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def ensure_kustomize(cache: Path) -> Path:
    kustomize = cache / "bin" / "kustomize"
    if kustomize.exists() and tool_output([str(kustomize), "version"]) == KUSTOMIZE_VERSION:
        return kustomize
    log(f"installing kustomize {KUSTOMIZE_VERSION} into {kustomize.parent} (go install)")
    if shutil.which("go") is None:
        raise CheckError("installing kustomize needs the go command on PATH")
    run_install_step(["go", "install", f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"],
                     env={**os.environ, "GOBIN": str(kustomize.parent)})
    return kustomize


def ensure_crd(cache: Path, source: CrdSource, archives: dict[str, bytes]) -> Path:
    """The cached CRD file, cut out of its module zip when not there yet
    (`archives` keeps the zips fetched in this run: one module may hold
    several CRDs)."""
    target = source.cache_path(cache)
    if target.exists():
        return target
    url = f"{GO_PROXY}/{source.module}/@v/{source.version}.zip"
    if url not in archives:
        started = time.monotonic()
        archives[url] = download(url)
        log(f"fetched {source.module}@{source.version} from {GO_PROXY} "
            f"({len(archives[url]) / 1e6:.1f} MB in {time.monotonic() - started:.1f}s)")
    archive = archives[url]
    log(f"extracting {source.path} from {source.module}@{source.version}")
    digest = hashlib.sha256(archive).hexdigest()
    if digest != source.zip_sha256:
        raise CheckError(f"{url}: sha256 {digest}, expected {source.zip_sha256}")
    member = f"{source.module}@{source.version}/{source.path}"
    with zipfile.ZipFile(io.BytesIO(archive)) as module_zip:
        if member not in module_zip.namelist():
            raise CheckError(f"{url} has no {member}")
        content = module_zip.read(member)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(content)
    partial.replace(target)
    return target


def download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.read()
    except OSError as error:
        raise CheckError(f"downloading {url}: {error}") from error


def run_install_step(command: list[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise CheckError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def tool_output(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


# --- rendering ----------------------------------------------------------------


def find_overlays(root: Path, names: list[str]) -> list[Path]:
    overlays_dir = root / "overlays"
    if names:
        overlays = [overlays_dir / name for name in names]
    else:
        # Every overlay, and the bench Job (a kustomization of its own).
        overlays = sorted(path for path in overlays_dir.glob("*") if path.is_dir())
        overlays += [root / "bench"] if (root / "bench").is_dir() else []
    for overlay in overlays:
        if not any((overlay / name).exists()
                   for name in ("kustomization.yaml", "kustomization.yml", "Kustomization")):
            raise CheckError(f"{overlay}: no kustomization file")
    if not overlays:
        raise CheckError(f"{overlays_dir}: no overlays")
    return overlays


def render(kustomize: Path, overlay: Path) -> list[dict]:
    import yaml

    result = subprocess.run([str(kustomize), "build", str(overlay)], capture_output=True, text=True)
    if result.returncode != 0:
        raise CheckError(f"kustomize build {overlay} failed:\n{result.stderr.strip()}")
    try:
        docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
    except yaml.YAMLError as error:
        raise CheckError(f"kustomize build {overlay}: unreadable output: {error}") from error
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str) \
                or not isinstance(doc.get("apiVersion"), str):
            raise CheckError(f"document {index} of kustomize build {overlay} has no kind/apiVersion")
    return docs


def doc_name(doc: dict) -> str:
    return f"{doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}"


def doc_namespace(doc: dict) -> str:
    return (doc.get("metadata") or {}).get("namespace", "")


def group_and_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


# --- schema validation --------------------------------------------------------


def json_path(path) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$-]*", part):
            text += f".{part}"
        else:
            text += f"[{json.dumps(part)}]"
    return text.lstrip(".") or "(root)"


def schema_errors(validator, doc: dict) -> list[str]:
    """Every error of doc, as 'path: message'; unknown fields one by one."""
    errors = []
    for error in validator.iter_errors(doc):
        if error.validator == "additionalProperties" and error.validator_value is False:
            known = error.schema.get("properties", {})
            errors += [f"{json_path([*error.absolute_path, field])}: unknown field"
                       for field in error.instance if field not in known]
        else:
            errors.append(f"{json_path(error.absolute_path)}: {error.message}")
    return sorted(errors)


class BuiltinSchemas:
    """Strict schemas of the built-in kinds of one Kubernetes version, as bundled
    with kubernetes-validate (kubernetes_validate.validate() stops at the first
    error and only warns about unknown kinds, so its files are used directly)."""

    def __init__(self, version: str):
        import importlib.resources
        import referencing
        import referencing.jsonschema

        self.version = version
        self.dir = (importlib.resources.files("kubernetes_validate")
                    / "kubernetes-json-schema" / f"v{version}-local-strict")
        if not self.dir.is_dir():
            raise CheckError(f"kubernetes-validate {KUBERNETES_VALIDATE_VERSION} has no schemas "
                             f"for Kubernetes {version}")
        definitions = json.loads((self.dir / "_definitions.json").read_text())
        self.definitions_uri = definitions["$id"]
        self.registry = referencing.Registry().with_resource(
            self.definitions_uri, referencing.jsonschema.DRAFT202012.create_resource(definitions))
        self.validators: dict[tuple[str, str], object] = {}

    def object_meta_ref(self) -> dict:
        return {"$ref": f"{self.definitions_uri}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}

    def validator(self, api_version: str, kind: str):
        """The validator of a built-in kind, or None when the kind isn't one."""
        key = (api_version, kind)
        if key not in self.validators:
            self.validators[key] = self.load_validator(api_version, kind)
        return self.validators[key]

    def load_validator(self, api_version: str, kind: str):
        import jsonschema

        group, version = group_and_version(api_version)
        short_group = group.split(".")[0]
        file = self.dir / f"{kind.lower()}-{short_group + '-' if group else ''}{version}.json"
        if not file.is_file():
            return None
        schema = json.loads(file.read_text())
        gvk = {"group": group, "kind": kind, "version": version}
        if gvk not in schema.get("x-kubernetes-group-version-kind", []):
            return None
        return jsonschema.Draft202012Validator(schema, registry=self.registry)


class CustomSchemas:
    """Validators of the custom resources, from their CRDs' openAPIV3Schema made
    strict like the API server: fields a structural schema would prune are
    errors, and metadata is a Kubernetes ObjectMeta with a name."""

    def __init__(self, crd_files: list[Path], builtins: BuiltinSchemas):
        self.builtins = builtins
        # (group, kind) -> {version name: that version's entry in the CRD}
        self.versions: dict[tuple[str, str], dict[str, dict]] = {}
        for file in crd_files:
            crd = load_crd(file)
            key = (crd["spec"]["group"], crd["spec"]["names"]["kind"])
            self.versions[key] = {entry["name"]: entry for entry in crd["spec"]["versions"]}
        self.validators: dict[tuple[str, str], object] = {}

    def handles(self, api_version: str, kind: str) -> bool:
        group, _ = group_and_version(api_version)
        return (group, kind) in self.versions

    def errors(self, doc: dict) -> list[str]:
        group, version = group_and_version(doc["apiVersion"])
        entry = self.versions[(group, doc["kind"])].get(version)
        if entry is None or not entry.get("served", False):
            return [f"apiVersion: {doc['apiVersion']} is not a served version of {doc['kind']}"]
        if (doc["apiVersion"], doc["kind"]) not in self.validators:
            self.validators[(doc["apiVersion"], doc["kind"])] = self.make_validator(entry)
        return schema_errors(self.validators[(doc["apiVersion"], doc["kind"])], doc)

    def make_validator(self, entry: dict):
        import jsonschema

        schema = strict_crd_schema(entry["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = {
            **self.builtins.object_meta_ref(), "type": "object", "required": ["name"]}
        schema["required"] = sorted({*schema.get("required", []), "metadata"})
        return jsonschema.Draft202012Validator(schema, registry=self.builtins.registry)


def load_crd(file: Path) -> dict:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crds = [doc for doc in yaml.load_all(file.read_text(), Loader=loader) if doc]
    if len(crds) != 1 or crds[0].get("kind") != "CustomResourceDefinition":
        raise CheckError(f"{file}: expected one CustomResourceDefinition")
    return crds[0]


def strict_crd_schema(node: dict) -> dict:
    """A copy of an OpenAPI v3 CRD schema node as a JSON schema that rejects
    unknown fields: an object without additionalProperties and without
    x-kubernetes-preserve-unknown-fields gets additionalProperties: false
    (the API server prunes, or under strict validation rejects, such fields),
    nullable adds null to the type and x-kubernetes-int-or-string allows both."""
    node = dict(node)
    if node.get("x-kubernetes-int-or-string") and "type" not in node and "anyOf" not in node:
        node["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in node:
        node["type"] = [*always_list(node["type"]), "null"]
    if "properties" in node:
        node["properties"] = {name: strict_crd_schema(child)
                              for name, child in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = strict_crd_schema(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = strict_crd_schema(node["items"])
    if "object" in always_list(node.get("type")) and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        node["additionalProperties"] = False
    return node


def always_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def document_errors(doc: dict, builtins: list[BuiltinSchemas], customs: CustomSchemas) -> list[str]:
    """Errors of one document: a custom kind against its CRD, any other kind
    against each Kubernetes version (an error found in several is listed once)."""
    if customs.handles(doc["apiVersion"], doc["kind"]):
        return [f"{doc_name(doc)} {error}" for error in customs.errors(doc)]
    versions_of: dict[str, list[str]] = {}
    for schemas in builtins:
        validator = schemas.validator(doc["apiVersion"], doc["kind"])
        found = (schema_errors(validator, doc) if validator else
                 [f"apiVersion/kind: {doc['apiVersion']} {doc['kind']} is neither a built-in "
                  "kind nor a known custom resource"])
        for error in found:
            versions_of.setdefault(error, []).append(schemas.version)
    return [f"{doc_name(doc)} {error} (Kubernetes {', '.join(versions)})"
            for error, versions in versions_of.items()]


# --- config check -------------------------------------------------------------


@dataclass
class Workload:
    doc: dict
    container: dict

    @property
    def name(self) -> str:
        return self.doc["metadata"]["name"]

    @property
    def pod_spec(self) -> dict:
        return pod_spec(self.doc)

    @property
    def sample_pod_name(self) -> str:
        if self.doc["kind"] == "StatefulSet":
            return f"{self.name}-0"
        return f"{self.name}-5d9c7b8f6-x2x7q"


def pod_spec(doc: dict) -> dict:
    return doc.get("spec", {}).get("template", {}).get("spec", {})


def flashmall_workloads(docs: list[dict]) -> list[Workload]:
    return [Workload(doc, container)
            for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")
            for container in pod_spec(doc).get("containers", [])
            if container.get("name") == FLASHMALL_CONTAINER]


class Cluster:
    """The rendered documents of one overlay, looked up by kind, namespace and name."""

    def __init__(self, docs: list[dict]):
        self.objects = {(doc["kind"], doc_namespace(doc), doc["metadata"].get("name")): doc
                        for doc in docs if isinstance(doc.get("metadata"), dict)}

    def config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        doc = self.objects.get(("ConfigMap", namespace, name))
        return None if doc is None else dict(doc.get("data") or {})

    def secret(self, namespace: str, name: str) -> dict[str, str] | None:
        doc = self.objects.get(("Secret", namespace, name))
        if doc is None:
            return None
        data = {key: base64.b64decode(value).decode() for key, value in (doc.get("data") or {}).items()}
        return {**data, **(doc.get("stringData") or {})}


def config_path(container: dict) -> str:
    words = [*container.get("command", []), *container.get("args", [])]
    for index, word in enumerate(words):
        if word == "--config" and index + 1 < len(words):
            return words[index + 1]
        if word.startswith("--config="):
            return word.split("=", 1)[1]
    raise CheckError("no --config in its command or args")


def config_source(workload: Workload, path: str) -> tuple[str, str]:
    """(ConfigMap name, key) of the file at path inside the container."""
    for mount in workload.container.get("volumeMounts", []):
        mount_path = mount["mountPath"].rstrip("/")
        if mount.get("subPath") and mount_path == path:
            file_name = mount["subPath"]
        elif not mount.get("subPath") and mount_path == os.path.dirname(path):
            file_name = os.path.basename(path)
        else:
            continue
        volume = next((volume for volume in workload.pod_spec.get("volumes", [])
                       if volume.get("name") == mount["name"]), None)
        if volume is None or "configMap" not in volume:
            raise CheckError(f"{path} is on volume {mount['name']}, which is not a ConfigMap")
        items = volume["configMap"].get("items")
        key = next((item["key"] for item in items or [] if item["path"] == file_name),
                   None if items else file_name)
        if key is None:
            raise CheckError(f"ConfigMap volume {mount['name']} has no item with path {file_name}")
        return volume["configMap"]["name"], key
    raise CheckError(f"no volume mounted at {os.path.dirname(path)} (for {path})")


def container_environment(workload: Workload, cluster: Cluster) -> dict[str, str]:
    """The container's variables as the kubelet would set them, with stand-ins
    for Secrets that are not in the output and for pod fields."""
    namespace = doc_namespace(workload.doc)
    env: dict[str, str] = {}
    for source in workload.container.get("envFrom", []):
        env.update({source.get("prefix", "") + key: value
                    for key, value in env_from_source(source, namespace, cluster).items()})
    for variable in workload.container.get("env", []):
        if "valueFrom" in variable:
            env[variable["name"]] = env_value_from(variable["valueFrom"], workload, cluster)
        else:
            env[variable["name"]] = expand_references(variable.get("value", ""), env)
    return env


def env_from_source(source: dict, namespace: str, cluster: Cluster) -> dict[str, str]:
    if "configMapRef" in source:
        ref = source["configMapRef"]
        data = cluster.config_map(namespace, ref["name"])
        if data is None and not ref.get("optional"):
            raise CheckError(f"envFrom ConfigMap {ref['name']} is not in the output")
        return data or {}
    ref = source["secretRef"]
    return cluster.secret(namespace, ref["name"]) or {}


def env_value_from(value_from: dict, workload: Workload, cluster: Cluster) -> str:
    namespace = doc_namespace(workload.doc)
    if "secretKeyRef" in value_from:
        ref = value_from["secretKeyRef"]
        data = cluster.secret(namespace, ref["name"])
        if data is None:
            return DUMMY_SECRET
        return referenced_key(data, ref, "Secret")
    if "configMapKeyRef" in value_from:
        ref = value_from["configMapKeyRef"]
        data = cluster.config_map(namespace, ref["name"])
        if data is None:
            raise CheckError(f"ConfigMap {ref['name']} is not in the output")
        return referenced_key(data, ref, "ConfigMap")
    if "fieldRef" in value_from:
        return sample_field(value_from["fieldRef"]["fieldPath"], workload)
    raise CheckError(f"cannot stand in for env valueFrom {json.dumps(value_from)}")


def referenced_key(data: dict[str, str], ref: dict, kind: str) -> str:
    if ref["key"] in data:
        return data[ref["key"]]
    if ref.get("optional"):
        return ""
    raise CheckError(f"{kind} {ref['name']} has no key {ref['key']}")


def sample_field(field_path: str, workload: Workload) -> str:
    template_meta = workload.doc.get("spec", {}).get("template", {}).get("metadata", {})
    samples = {
        "metadata.name": workload.sample_pod_name,
        "metadata.namespace": doc_namespace(workload.doc) or "default",
        "metadata.uid": SAMPLE_POD_UID,
        "spec.nodeName": SAMPLE_NODE,
        "spec.serviceAccountName": workload.pod_spec.get("serviceAccountName", "default"),
        "status.hostIP": SAMPLE_HOST_IP,
        "status.podIP": SAMPLE_POD_IP,
        "status.podIPs": SAMPLE_POD_IP,
    }
    if field_path in samples:
        return samples[field_path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)
    if match:
        return (template_meta.get(match[1]) or {}).get(match[2], "")
    raise CheckError(f"no sample value for fieldRef {field_path}")


def expand_references(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion from earlier variables; $$ escapes a $."""
    def replace(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])
    return re.sub(r"\$\$|\$\(([^)]*)\)", replace, value)


def check_config(workload: Workload, cluster: Cluster, flashmall: Path) -> dict:
    """Runs flashmall check-config on the workload's config; the effective config."""
    path = config_path(workload.container)
    config_map, key = config_source(workload, path)
    data = cluster.config_map(doc_namespace(workload.doc), config_map)
    if data is None:
        raise CheckError(f"ConfigMap {config_map} (mounted for {path}) is not in the output")
    if key not in data:
        raise CheckError(f"ConfigMap {config_map} has no key {key} (for {path})")
    env = {"PATH": os.environ.get("PATH", ""), **container_environment(workload, cluster)}
    with tempfile.TemporaryDirectory(prefix="flashmall-k8s-") as scratch:
        file = Path(scratch) / os.path.basename(path)
        file.write_text(data[key])
        try:
            result = subprocess.run([str(flashmall), "check-config", str(file)],
                                    env=env, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired as error:
            raise CheckError(f"flashmall check-config did not finish in {error.timeout}s") from error
    if result.returncode != 0:
        raise CheckError(f"flashmall check-config (ConfigMap {config_map} key {key}) failed:\n"
                         f"{result.stderr.strip()}")
    return tomllib.loads(result.stdout)


def check_configs(docs: list[dict], flashmall: Path) -> tuple[list[str], dict[str, dict]]:
    """Errors (one per distinct failure, naming every workload it hit), and the
    effective config of each flashmall workload that passed, by name."""
    cluster = Cluster(docs)
    failed: dict[str, list[str]] = {}
    configs = {}
    for workload in flashmall_workloads(docs):
        try:
            configs[workload.name] = check_config(workload, cluster, flashmall)
        except CheckError as error:
            failed.setdefault(str(error), []).append(doc_name(workload.doc))
    errors = [f"{', '.join(names)} container {FLASHMALL_CONTAINER}: {error}"
              for error, names in failed.items()]
    return errors, configs


# --- consistency --------------------------------------------------------------
#
# What the schemas cannot see: the manifests against the effective configs.
# Components are named by their args (`proxy`, `engine`, `service NAME`);
# their config section has the component's name.

# Who calls whom: the config fields each component dials, by the component
# they must reach.
CALLS = {
    "engine": {("engine", "order_endpoints"): "orders"},
    "orders": {("orders", "engine_endpoints"): "engine",
               ("orders", "product_endpoints"): "products"},
    "payments": {("payments", "order_endpoints"): "orders"},
    "cart": {("cart", "product_endpoints"): "products"},
    "checkout": {("checkout", "cart_endpoints"): "cart",
                 ("checkout", "product_endpoints"): "products",
                 ("checkout", "order_endpoints"): "orders",
                 ("checkout", "payment_endpoints"): "payments"},
}
SERVICES = ("auth", "orders", "payments", "products", "cart", "checkout")
ADAPTER_VALUES = K8S_DIR / "base" / "monitoring" / "prometheus-adapter-values.yaml"
# The namespace Prometheus runs in, as NetworkPolicies select it.
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}

# Mutual TLS between the components (mesh.tls): which overlays must run it
# and which must not (an overlay not listed must only be consistent), the
# name each component's certificate carries for its callers to check, and
# the key of the cert-manager Secret each of mesh.tls's files must be.
MESH_TLS = {"production": True, "dev": False}
MESH_NAMES = {"proxy": "edge"}
MESH_TLS_FILES = {"ca_file": "ca.crt", "cert_file": "tls.crt", "key_file": "tls.key"}
# How long the kubelet may take to update a mounted Secret, before a
# component's next mesh.tls.reload_interval.
SECRET_SYNC_SECONDS = 120

# Redis: the ACL user each component logs in as (its Redis URL's user), and
# the exact key patterns a user may have.
REDIS_USERS = {"engine": "engine", "proxy": "edge"}
REDIS_KEY_PATTERNS = {"edge": ["~fm:edge:*"]}
# A password in a Redis config in git is only ever a placeholder the
# start-up script fills in: #@NAME@ (redis.conf) or #$(...) (generated).
PASSWORD_PLACEHOLDER = re.compile(r"#(@[A-Z0-9_]+@|\$\(.+\))")
REDIS_URL_FIELDS = {"engine": ("redis", "url"), "proxy": ("proxy", "redis_url")}


def mesh_name(component: str) -> str:
    return MESH_NAMES.get(component, component)


def component_of(container: dict) -> str:
    words = [w for w in container.get("args", []) if not w.startswith("-")]
    words = words[1:] if words and words[0].endswith(".toml") else words
    return words[1] if words[:1] == ["service"] and len(words) > 1 else (words or ["?"])[0]


def seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*([a-z]+)", str(text)):
        if unit not in units:
            raise CheckError(f"duration {text!r}: unit {unit!r} not understood here")
        total += int(number) * units[unit]
    return total


def selects(selector: dict | None, labels: dict) -> bool:
    """A label selector (matchLabels, matchExpressions) against labels; an
    empty selector selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


@dataclass
class Pod:
    """A workload's pods, as a NetworkPolicy or a Service sees them."""
    owner: str
    labels: dict
    ports: dict  # port name -> number


def pods_of(docs: list[dict]) -> list[Pod]:
    pods = [Pod(doc_name(doc), doc["spec"]["template"]["metadata"].get("labels", {}),
                {p.get("name", str(p["containerPort"])): p["containerPort"]
                 for c in pod_spec(doc).get("containers", []) for p in c.get("ports", [])})
            for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")]
    # Pods the store operators make, with the labels their docs give.
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] == "TidbCluster":
            pods.append(Pod(doc_name(doc), {"app.kubernetes.io/instance": name}, {"client": 2379}))
        if doc["kind"] == "ScyllaCluster":
            pods.append(Pod(doc_name(doc), {"scylla/cluster": name}, {"cql": 9042}))
    return pods


def ingress_policies(policies: list[dict], target: Pod) -> list[dict]:
    return [p for p in policies if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
            and selects(p["spec"].get("podSelector"), target.labels)]


def rule_covers(rule: dict, target: Pod, port: int) -> bool:
    """Whether an ingress rule's ports (none: every port) include `port` of `target`."""
    ports = rule.get("ports")
    return not ports or any(target.ports.get(str(p.get("port"))) == port or p.get("port") == port
                            for p in ports)


def namespace_allows(policies: list[dict], target: Pod, namespace: dict, port: int) -> bool:
    """Whether the NetworkPolicies let some pod of another namespace (labelled
    `namespace`) reach `target` on `port`: a rule with no `from`, or a peer
    whose namespaceSelector selects that namespace, whatever its podSelector."""
    selecting = ingress_policies(policies, target)
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            if not rule_covers(rule, target, port):
                continue
            peers = rule.get("from")
            if peers is None or any("namespaceSelector" in peer
                                    and selects(peer["namespaceSelector"], namespace) for peer in peers):
                return True
    return False


def ingress_allows(policies: list[dict], target: Pod, caller: Pod | None, port: int) -> bool:
    """Whether the NetworkPolicies let `caller` (None: any address outside the
    cluster) reach `target` on `port`. Pods no Ingress policy selects are open."""
    selecting = ingress_policies(policies, target)
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            if not rule_covers(rule, target, port):
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            if caller is not None and any(
                    "podSelector" in peer and "namespaceSelector" not in peer
                    and selects(peer["podSelector"], caller.labels) for peer in peers):
                return True
    return False


def endpoint(entry: str) -> tuple[str, int]:
    host, _, port = entry.rpartition(":")
    return host, int(port)


def secret_file(workload: Workload, path: str) -> tuple[str, str, dict] | str:
    """(Secret name, key, volumeMount) of the file at `path` inside the
    container, or why it is not one a renewal reaches."""
    mounts = [m for m in workload.container.get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not mounts:
        return "no volume is mounted there"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    if mount.get("subPath"):
        return (f"volume {mount['name']} is mounted with subPath, which the kubelet never "
                "updates: renewed certificates would not arrive")
    relative = path[len(mount["mountPath"].rstrip("/")) + 1:]
    volume = next((v for v in workload.pod_spec.get("volumes", []) if v.get("name") == mount["name"]), None)
    if volume is None or "secret" not in volume:
        return f"it is on volume {mount['name']}, which is not a Secret"
    items = volume["secret"].get("items")
    key = next((item["key"] for item in items or [] if item["path"] == relative),
               None if items else relative)
    if key is None:
        return f"Secret volume {mount['name']} has no item with path {relative}"
    return volume["secret"]["secretName"], key, mount


def acl_users(text: str) -> dict[str, list[str]]:
    """The `user NAME RULE...` lines of a Redis or Sentinel config, by name."""
    users = {}
    for line in text.splitlines():
        # A shell's $(...) (a config written by a script) is one word.
        words = re.sub(r"\$\([^)]*\)", "$(...)", line).split()
        if len(words) >= 2 and words[0] == "user":
            users[words[1]] = words[2:]
    return users


def acl_enabled(rules: list[str]) -> bool:
    """Whether a user's rules leave it on (the last of on/off wins; off by default)."""
    switches = [rule for rule in rules if rule in ("on", "off")]
    return bool(switches) and switches[-1] == "on"


def acl_key_patterns(rules: list[str]) -> list[str]:
    patterns: list[str] = []
    for rule in rules:
        if rule in ("allkeys", "resetkeys", "reset"):
            patterns = ["~*"] if rule == "allkeys" else []
        elif rule.startswith("~") or re.match(r"%(R|W|RW)~", rule):
            patterns.append(rule)
    return patterns


def url_credentials(url: str) -> tuple[str, str | None]:
    """(user, password or None) of a URL's authority; ("", None) without one."""
    authority = url.split("://", 1)[-1].split("/")[0].split("?")[0]
    if "@" not in authority:
        return "", None
    userinfo = authority.rpartition("@")[0]
    user, colon, password = userinfo.partition(":")
    return user, password if colon else None


def consistency_checks(overlay: str, docs: list[dict], configs: dict[str, dict]) -> list[str]:
    """Cross-checks between the rendered documents of an overlay and the
    effective configs (keyed by Deployment/StatefulSet name; only those that
    passed check-config); one message per problem."""
    manifests = Manifests(docs)
    for name, workload in manifests.workloads.items():
        if name in configs:
            manifests.check_workload(workload, configs[name])
    manifests.check_exposure()
    manifests.check_admin_ports()
    manifests.check_redis()
    manifests.check_redis_clients(configs)
    manifests.check_mesh_tls(overlay, configs)
    manifests.check_autoscalers()
    manifests.check_selectors()
    manifests.check_scraping()
    return manifests.errors


class Manifests:
    """One overlay's rendered documents, indexed for the checks; each check
    appends its findings to `errors`."""

    def __init__(self, docs: list[dict]):
        self.errors: list[str] = []
        self.by_kind: dict[str, list[dict]] = {}
        for doc in docs:
            self.by_kind.setdefault(doc["kind"], []).append(doc)
        self.pods = pods_of(docs)
        self.policies = self.by_kind.get("NetworkPolicy", [])
        self.services = {doc["metadata"]["name"]: doc for doc in self.by_kind.get("Service", [])}
        self.workloads = {w.name: w for w in flashmall_workloads(docs)}
        self.component_pod = {component_of(w.container): self.pod_of(w.doc) for w in self.workloads.values()}
        self.hpas = {h["spec"]["scaleTargetRef"]["name"]: h
                     for h in self.by_kind.get("HorizontalPodAutoscaler", [])}

    def pod_of(self, doc: dict) -> Pod:
        return next(p for p in self.pods if p.owner == doc_name(doc))

    def named(self, kind: str, name: str) -> dict | None:
        return next((d for d in self.by_kind.get(kind, []) if d["metadata"]["name"] == name), None)

    def pods_behind(self, service: dict) -> list[Pod]:
        selector = service["spec"].get("selector")
        return [p for p in self.pods if selector and selects({"matchLabels": selector}, p.labels)]

    def reaches(self, caller: str, entry: str, expect: str, where: str, headless: bool = True) -> None:
        """`entry` (host:port) names a Service of `expect`'s pods that `caller` may reach."""
        host, port = endpoint(entry)
        service = self.services.get(host)
        if service is None:
            self.errors.append(f"{where}: {entry}: no Service {host} in the output")
            return
        if headless and service["spec"].get("clusterIP") != "None":
            self.errors.append(f"{where}: Service {host} is not headless; clients balance over its pods themselves")
        target = self.pods_behind(service)
        if expect in self.component_pod:
            target = [p for p in target if p.owner == self.component_pod[expect].owner]
        ports = [p for p in service["spec"].get("ports", []) if p["port"] == port]
        if not target or not ports:
            self.errors.append(f"{where}: {entry}: Service {host} has no port {port} in front of {expect}")
            return
        target_port = ports[0].get("targetPort", port)
        number = target[0].ports.get(target_port, target_port)
        if not ingress_allows(self.policies, target[0], self.component_pod.get(caller), number):
            self.errors.append(f"{where}: no NetworkPolicy lets {caller} reach {expect} on port {number}")

    def check_workload(self, workload: Workload, config: dict) -> None:
        component = component_of(workload.container)
        where = doc_name(workload.doc)
        self.check_serving(workload, component, config, where)
        for (section, field), target in CALLS.get(component, {}).items():
            for entry in config[section][field]:
                self.reaches(component, entry, target, f"{where} {section}.{field}")
        if component == "proxy":
            for pool, entries in config["proxy"]["upstreams"].items():
                for entry in entries:
                    self.reaches("proxy", entry, pool, f"{where} proxy.upstreams.{pool}")
        self.check_replicas(workload, where, self.one_process_state(component, config, where),
                            config["data"]["dir"])

    def check_serving(self, workload: Workload, component: str, config: dict, where: str) -> None:
        """Port, probes, env links and shutdown against the component's config."""
        spec = workload.pod_spec
        host, port = endpoint(config[component]["listen"])
        if host not in ("0.0.0.0", "[::]"):
            self.errors.append(f"{where}: {component}.listen {host} is not every address of the pod")
        if self.component_pod[component].ports.get("http") != port:
            self.errors.append(f"{where}: container port http is not {component}.listen's port {port}")
        # Every component serves probes and metrics on its admin port, in
        # plain HTTP: the edge on proxy.admin_listen, the others on
        # mesh.admin_listen (their main port may require a client certificate).
        field = "proxy.admin_listen" if component == "proxy" else "mesh.admin_listen"
        section, key = field.split(".")
        admin_listen = config.get(section, {}).get(key, "")
        admin_port = None
        if not admin_listen:
            self.errors.append(f"{where}: {field} is empty: the kubelet's probes and Prometheus "
                               "need the admin port")
        else:
            admin_host, admin_port = endpoint(admin_listen)
            if admin_host not in ("0.0.0.0", "[::]"):
                self.errors.append(f"{where}: {field} {admin_host} is not every address "
                                   "of the pod (the kubelet and Prometheus could not reach it)")
            if self.component_pod[component].ports.get("admin") != admin_port:
                self.errors.append(f"{where}: container port admin is not {field}'s port {admin_port}")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                            ("startupProbe", "/healthz")):
            get = (workload.container.get(probe) or {}).get("httpGet") or {}
            if get.get("path") != path or get.get("port") not in ("admin", admin_port):
                self.errors.append(f"{where}: {probe} must GET {path} on port admin")
        if spec.get("enableServiceLinks", True):
            self.errors.append(f"{where}: enableServiceLinks must be false (FLASHMALL_*_PORT variables "
                               "would be refused as unknown overrides)")
        # preStop, then the proxy's grace period (or a service's drain), within the pod's grace.
        pre_stop = ((workload.container.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {})
        drain = seconds(config["proxy"]["grace_period"]) + 1 if component == "proxy" else 10
        needed = pre_stop.get("seconds", 0) + drain + 5
        if spec.get("terminationGracePeriodSeconds", 30) < needed:
            self.errors.append(f"{where}: terminationGracePeriodSeconds must be at least {needed:g} "
                               f"(preStop, then {drain:g} s of draining, and a margin)")

    def one_process_state(self, component: str, config: dict, where: str) -> list[str]:
        """Checks the shared stores the component's config names; the state it
        keeps in its own process or volume instead."""
        local = []
        if component == "engine":
            if config["ledger"]["backend"] == "tikv":
                self.check_ledger(config, where)
            else:
                local.append("ledger")
        if component in SERVICES:
            if config["store"]["backend"] == "scylla":
                self.check_scylla(component, config, where)
            else:
                local.append("store")
        redis_field = {"engine": ("redis", "url"), "proxy": ("proxy", "redis_url")}.get(component)
        if redis_field:
            url = config[redis_field[0]][redis_field[1]]
            if url:
                authority = url.split("://", 1)[1].split("/")[0].split("?")[0]
                self.reaches(component, authority.rpartition("@")[2], "redis",
                             f"{where} {'.'.join(redis_field)}", headless=False)
            else:
                local.append("in-process " + ("stock front" if component == "engine" else "edge state"))
        return local

    def check_ledger(self, config: dict, where: str) -> None:
        for entry in config["ledger"]["pd_endpoints"]:
            cluster = entry.split(":")[0].removesuffix("-pd")
            if self.named("TidbCluster", cluster) is None:
                self.errors.append(f"{where}: ledger.pd_endpoints {entry}: no TidbCluster {cluster}")
            elif not ingress_allows(self.policies, Pod("", {"app.kubernetes.io/instance": cluster}, {}),
                                    self.component_pod["engine"], 2379):
                self.errors.append(f"{where}: no NetworkPolicy lets the engine reach TidbCluster {cluster}")

    def check_scylla(self, component: str, config: dict, where: str) -> None:
        for entry in config["store"]["scylla_nodes"]:
            cluster = entry.split(":")[0].removesuffix("-client")
            scylla = self.named("ScyllaCluster", cluster)
            if scylla is None:
                self.errors.append(f"{where}: store.scylla_nodes {entry}: no ScyllaCluster {cluster}")
                continue
            dc = scylla["spec"]["datacenter"]
            members = sum(rack.get("members", 0) for rack in dc.get("racks", []))
            if config["store"]["datacenter"] not in ("", dc["name"]):
                self.errors.append(f"{where}: store.datacenter is not ScyllaCluster {cluster}'s {dc['name']}")
            if config["store"]["replication_factor"] > members:
                self.errors.append(f"{where}: store.replication_factor is above {cluster}'s {members} nodes")
            if not ingress_allows(self.policies, Pod("", {"scylla/cluster": cluster}, {}),
                                  self.component_pod[component], 9042):
                self.errors.append(f"{where}: no NetworkPolicy lets {component} reach {cluster} on 9042")

    def check_replicas(self, workload: Workload, where: str, local: list[str], data_dir: str) -> None:
        """State of one process means one replica, replaced not rolled, and
        embedded stores on a claim."""
        spec = workload.doc["spec"]
        if workload.name in self.hpas and "replicas" in spec:
            self.errors.append(f"{where}: sets replicas, which its HorizontalPodAutoscaler owns")
        if local:
            if workload.name in self.hpas or spec.get("replicas") != 1:
                self.errors.append(f"{where}: {' and '.join(local)} of one process: needs replicas 1 and no HPA")
            if spec.get("strategy", {}).get("type") != "Recreate":
                self.errors.append(f"{where}: {' and '.join(local)}: needs strategy Recreate")
        stores = [e for e in local if e in ("ledger", "store")]
        data = next((v for v in workload.pod_spec.get("volumes", [])
                     for m in workload.container.get("volumeMounts", [])
                     if m["name"] == v["name"] and m["mountPath"] == data_dir), None)
        if stores and (data is None or "persistentVolumeClaim" not in data):
            self.errors.append(f"{where}: the embedded {' and '.join(stores)} must be on a "
                               f"PersistentVolumeClaim mounted at data.dir {data_dir}")

    def check_exposure(self) -> None:
        """Only the edge is reachable from outside the cluster."""
        for pod in self.pods:
            public = ingress_allows(self.policies, pod, None, next(iter(pod.ports.values()), 0))
            if public != (pod.labels.get("app.kubernetes.io/component") == "proxy"
                          and pod.labels.get("app.kubernetes.io/name") == "flashmall"):
                self.errors.append(f"{pod.owner}: {'reachable' if public else 'unreachable'} "
                                   "from outside the cluster")
            # Probes and metrics stay inside: the edge's admin port is never public.
            admin = pod.ports.get("admin")
            if admin is not None and ingress_allows(self.policies, pod, None, admin):
                self.errors.append(f"{pod.owner}: admin port {admin} reachable from outside the cluster")

    def check_admin_ports(self) -> None:
        """Every component has an admin port (probes and metrics), which only
        the monitoring namespace reaches, and the monitoring namespace
        reaches no main port (but the edge's public one, open to every
        address)."""
        for target in self.component_pod.values():
            admin = target.ports.get("admin")
            if admin is None:
                self.errors.append(f"{target.owner}: no container port named admin "
                                   "(the probes and Prometheus go there)")
                continue
            for caller in self.component_pod.values():
                if caller.owner != target.owner and ingress_allows(self.policies, target, caller, admin):
                    self.errors.append(f"{target.owner}: admin port {admin} reachable from {caller.owner} "
                                       "(only the monitoring namespace may reach it)")
            if not namespace_allows(self.policies, target, MONITORING, admin):
                self.errors.append(f"{target.owner}: no NetworkPolicy lets the monitoring namespace "
                                   f"reach admin port {admin}")
            # (The edge's public port is open to every address, Prometheus's too.)
            for name, number in target.ports.items():
                if name != "admin" and namespace_allows(self.policies, target, MONITORING, number) \
                        and not ingress_allows(self.policies, target, None, number):
                    self.errors.append(f"{target.owner}: the monitoring namespace reaches port {name} "
                                       f"({number}); it may reach the admin port only")
        # The rules themselves: one that lets the monitoring namespace in to a
        # component names its admin port, and only that.
        for policy in self.policies:
            targets = [pod for pod in self.component_pod.values()
                       if selects(policy["spec"].get("podSelector"), pod.labels)]
            for index, rule in enumerate(policy["spec"].get("ingress") or []):
                if not targets or not any("namespaceSelector" in peer
                                          and selects(peer["namespaceSelector"], MONITORING)
                                          for peer in rule.get("from") or []):
                    continue
                ports = [p.get("port", "every port") for p in rule.get("ports") or [{}]]
                other = [port for port in ports
                         if not all(port in ("admin", pod.ports.get("admin")) for pod in targets)]
                if other:
                    self.errors.append(f"{doc_name(policy)} ingress[{index}]: lets the monitoring namespace "
                                       f"in on {', '.join(map(str, other))}; only the admin port")

    def check_redis(self) -> None:
        """Redis keeps what it acknowledged and never evicts a sale's keys; its
        users and the sentinels' have no literal password, the default user
        is off, and the edge's user is confined to the edge's keys."""
        for doc in self.by_kind.get("ConfigMap", []):
            conf = (doc.get("data") or {}).get("redis.conf")
            if conf is None:
                continue
            settings = dict(line.split(None, 1) for line in conf.splitlines()
                            if line.strip() and not line.startswith("#") and " " in line)
            for key, value in (("appendonly", "yes"), ("maxmemory-policy", "noeviction")):
                if settings.get(key) != value:
                    self.errors.append(f"{doc_name(doc)}: redis.conf needs {key} {value}")
            where = f"{doc_name(doc)} redis.conf"
            users = self.check_acl_users(where, conf)
            for key in ("requirepass", "masterauth"):
                if key in settings:
                    self.errors.append(f"{where}: {key} with a literal password (passwords come from "
                                       "a Secret, filled in at start)")
            for name, expected in REDIS_KEY_PATTERNS.items():
                if name not in users:
                    self.errors.append(f"{where}: no user {name}")
                elif acl_key_patterns(users[name]) != expected:
                    self.errors.append(f"{where}: user {name}'s keys are "
                                       f"{' '.join(acl_key_patterns(users[name])) or 'none'}, "
                                       f"not exactly {' '.join(expected)}")
            # The placeholders are filled in by whoever starts Redis on this config.
            scripts = [" ".join([*c.get("command", []), *c.get("args", [])])
                       for w in self.by_kind.get("StatefulSet", []) + self.by_kind.get("Deployment", [])
                       if any((v.get("configMap") or {}).get("name") == doc["metadata"]["name"]
                              for v in pod_spec(w).get("volumes", []))
                       for c in pod_spec(w).get("containers", [])]
            settings_text = "\n".join(line for line in conf.splitlines() if not line.startswith("#"))
            for placeholder in sorted(set(re.findall(r"#(@[A-Z0-9_]+@)", settings_text))):
                if not any(f"#{placeholder}" in script for script in scripts):
                    self.errors.append(f"{where}: nothing that starts Redis on it fills in {placeholder}")
        # The sentinels' configs, written by their start-up scripts.
        for workload in self.by_kind.get("StatefulSet", []) + self.by_kind.get("Deployment", []):
            for container in pod_spec(workload).get("containers", []):
                script = "\n".join([*container.get("command", []), *container.get("args", [])])
                if "--sentinel" not in script:
                    continue
                where = f"{doc_name(workload)} container {container['name']}"
                self.check_acl_users(where, script)
                for line in script.splitlines():
                    words = line.split()
                    if words[:2] in (["sentinel", "auth-pass"], ["sentinel", "sentinel-pass"]) \
                            and not words[-1].startswith("$"):
                        self.errors.append(f"{where}: {' '.join(words[:2])} with a literal password")

    def check_acl_users(self, where: str, text: str) -> dict[str, list[str]]:
        """The default user off and no literal password; the users, by name."""
        users = acl_users(text)
        if acl_enabled(users.get("default", ["on", "nopass"])):
            self.errors.append(f"{where}: the default user is on (it needs `user default off`)")
        for name, rules in users.items():
            for rule in rules:
                if rule.startswith(">") or (rule.startswith("#") and not PASSWORD_PLACEHOLDER.fullmatch(rule)):
                    self.errors.append(f"{where}: user {name} has a literal password (passwords come from "
                                       "a Secret, filled in at start)")
                if rule == "nopass" and acl_enabled(rules):
                    self.errors.append(f"{where}: user {name} needs no password")
        return users

    def check_redis_clients(self, configs: dict[str, dict]) -> None:
        """The edge and the engine log in to Redis as their own users, with the
        password from a Secret, never written in a manifest or the config."""
        acl = {}
        for doc in self.by_kind.get("ConfigMap", []):
            acl.update(acl_users((doc.get("data") or {}).get("redis.conf", "")))
            for key, text in (doc.get("data") or {}).items():
                if not key.endswith(".toml"):
                    continue
                try:
                    data = tomllib.loads(text)
                except tomllib.TOMLDecodeError:
                    continue
                for section, field in REDIS_URL_FIELDS.values():
                    url = str(data.get(section, {}).get(field, ""))
                    if url_credentials(url)[1]:
                        self.errors.append(f"{doc_name(doc)} {key}: {section}.{field} holds a password; "
                                           "it comes from a Secret in the environment")
        for name, workload in self.workloads.items():
            component = component_of(workload.container)
            field = REDIS_URL_FIELDS.get(component)
            if field is None:
                continue
            where = doc_name(workload.doc)
            secret_vars = set()
            for variable in workload.container.get("env", []):
                if "secretKeyRef" in (variable.get("valueFrom") or {}):
                    secret_vars.add(variable["name"])
                    continue
                if variable["name"] != f"FLASHMALL_{field[0].upper()}__{field[1].upper()}":
                    continue
                password = url_credentials(variable.get("value", ""))[1]
                match = re.fullmatch(r"\$\(([^)]*)\)", password or "")
                if password and (match is None or match[1] not in secret_vars):
                    self.errors.append(f"{where}: {variable['name']} has a literal password; write "
                                       "$(VAR) of a variable from a Secret defined before it")
            if name not in configs or not acl:
                continue
            url = configs[name][field[0]][field[1]]
            user = url_credentials(url)[0] if url else ""
            if url and user != REDIS_USERS[component]:
                self.errors.append(f"{where}: {'.'.join(field)} logs in as "
                                   f"{user or 'the default user'}, not as the {REDIS_USERS[component]} user")
            elif url and not acl_enabled(acl.get(user, [])):
                self.errors.append(f"{where}: {'.'.join(field)}: redis.conf has no enabled user {user}")

    def check_mesh_tls(self, overlay: str, configs: dict[str, dict]) -> None:
        """Mutual TLS between the components where the overlay runs it (every
        component, with a cert-manager certificate that names it, mounted
        where mesh.tls reads it and renewed in place), none where it does not."""
        expected = MESH_TLS.get(overlay)
        on: dict[str, bool] = {}
        issuers = set()
        for name, workload in self.workloads.items():
            if name not in configs:
                continue
            tls = configs[name].get("mesh", {}).get("tls", {})
            files = {field: tls.get(field, "") for field in MESH_TLS_FILES}
            where = doc_name(workload.doc)
            given = [field for field, path in files.items() if path]
            if given and len(given) < len(files):
                self.errors.append(f"{where}: mesh.tls sets {', '.join(given)} only: all three files or none")
                continue
            on[name] = bool(given)
            if expected is True and not given:
                self.errors.append(f"{where}: mesh.tls is off; the {overlay} overlay runs the mesh in mutual TLS")
            elif expected is False and given:
                self.errors.append(f"{where}: mesh.tls is on; the {overlay} overlay runs the mesh in plain HTTP")
            elif given:
                issuers |= self.check_mesh_certificate(workload, configs[name], files)
        if expected is None and len(set(on.values())) > 1:
            self.errors.append(f"mesh.tls is on in {', '.join(n for n, v in sorted(on.items()) if v)} only: "
                               "a caller in plain HTTP cannot call a port that requires a certificate")
        if len(issuers) > 1:
            self.errors.append(f"the components' mesh certificates come from several issuers "
                               f"({', '.join(sorted(f'{k}/{n}' for k, n in issuers))}): one CA must sign them all")
        for kind, name in issuers:
            issuer = self.named(kind, name)
            ca_secret = ((issuer or {}).get("spec", {}).get("ca") or {}).get("secretName")
            if issuer is None or ca_secret is None:
                self.errors.append(f"{kind}/{name}: not a CA Issuer in the output (it signs the mesh certificates)")
            elif not any(c["spec"].get("secretName") == ca_secret and c["spec"].get("isCA")
                         for c in self.by_kind.get("Certificate", [])):
                self.errors.append(f"{kind}/{name}: no CA Certificate (isCA) writes its Secret {ca_secret}")

    def check_mesh_certificate(self, workload: Workload, config: dict, files: dict[str, str]) -> set:
        """One component's mesh.tls files against its Secret and Certificate;
        the issuers of its certificate."""
        component = component_of(workload.container)
        where = doc_name(workload.doc)
        secrets = set()
        for field, path in files.items():
            source = secret_file(workload, path)
            if isinstance(source, str):
                self.errors.append(f"{where}: mesh.tls.{field} {path}: {source}")
                continue
            secret, key, mount = source
            secrets.add(secret)
            if key != MESH_TLS_FILES[field]:
                self.errors.append(f"{where}: mesh.tls.{field} is key {key} of Secret {secret}, "
                                   f"not {MESH_TLS_FILES[field]}")
            if not mount.get("readOnly"):
                self.errors.append(f"{where}: Secret {secret} must be mounted read-only at {mount['mountPath']}")
        if len(secrets) > 1:
            self.errors.append(f"{where}: mesh.tls's files come from several Secrets "
                               f"({', '.join(sorted(secrets))}), not one certificate's")
        issuers = set()
        for secret in secrets:
            certificate = next((c for c in self.by_kind.get("Certificate", [])
                                if c["spec"].get("secretName") == secret), None)
            if certificate is None:
                self.errors.append(f"{where}: no Certificate writes Secret {secret} (mesh.tls)")
                continue
            spec, cert_name = certificate["spec"], doc_name(certificate)
            ref = spec.get("issuerRef") or {}
            issuers.add((ref.get("kind", "Issuer"), ref.get("name")))
            names = spec.get("dnsNames") or []
            if mesh_name(component) not in names:
                self.errors.append(f"{cert_name}: dnsNames lack {mesh_name(component)}, the name "
                                   f"callers of {where} check")
            impostor = [mesh_name(c) for c in self.component_pod if c != component and mesh_name(c) in names]
            if impostor:
                self.errors.append(f"{cert_name}: dnsNames also name {', '.join(impostor)}: "
                                   f"{component} could pose as them")
            namespace = doc_namespace(certificate)
            services = [s["metadata"]["name"] for s in self.services.values()
                        if where in {p.owner for p in self.pods_behind(s)}]
            known = {mesh_name(component)} | {name for s in services for name in (
                s, f"{s}.{namespace}.svc", f"{s}.{namespace}.svc.cluster.local")}
            stray = [name for name in names if name not in known]
            if stray:
                self.errors.append(f"{cert_name}: dnsNames {', '.join(stray)} are neither "
                                   f"{mesh_name(component)} nor a name of a Service in front of {where} "
                                   f"in namespace {namespace or '(none)'}")
            usages = spec.get("usages") or ["digital signature", "key encipherment"]
            missing = [u for u in ("server auth", "client auth") if u not in usages]
            if missing:
                self.errors.append(f"{cert_name}: usages lack {', '.join(missing)} (a component serves "
                                   "its port and calls others with one certificate)")
            reload = config["mesh"]["tls"].get("reload_interval", "")
            if spec.get("renewBefore") and reload and \
                    seconds(reload) + SECRET_SYNC_SECONDS >= seconds(spec["renewBefore"]):
                self.errors.append(f"{cert_name}: renewBefore {spec['renewBefore']} leaves no time for the "
                                   f"kubelet to update the Secret and mesh.tls.reload_interval ({reload})")
        return issuers

    def check_autoscalers(self) -> None:
        """HPAs scale workloads that exist, on metrics the adapter serves."""
        import yaml

        adapter = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]
        served = {kind: {rule["name"]["as"] for rule in adapter.get(rules, [])}
                  for kind, rules in (("Pods", "custom"), ("External", "external"))}
        for target, hpa in self.hpas.items():
            if target not in self.workloads:
                self.errors.append(f"{doc_name(hpa)}: scales {target}, which is not in the output")
            for metric in hpa["spec"].get("metrics", []):
                if metric["type"] in served:
                    name = metric[metric["type"].lower()]["metric"]["name"]
                    if name not in served[metric["type"]]:
                        self.errors.append(f"{doc_name(hpa)}: no prometheus-adapter rule serves {name}")

    def check_selectors(self) -> None:
        """Each disruption budget and Service selects exactly one workload."""
        for doc in self.by_kind.get("PodDisruptionBudget", []) + list(self.services.values()):
            selector = doc["spec"].get("selector")
            if doc["kind"] == "Service":
                if not selector:
                    continue
                selector = {"matchLabels": selector}
            owners = {p.owner for p in self.pods if selector and selects(selector, p.labels)}
            if len(owners) != 1:
                self.errors.append(f"{doc_name(doc)}: selects {sorted(owners) or 'nothing'}, not one workload")

    def check_scraping(self) -> None:
        """The ServiceMonitor scrapes every component through its Service, on
        the Service port named admin, in front of the pods' admin port, and
        nothing else."""
        for monitor in self.by_kind.get("ServiceMonitor", []):
            endpoints = monitor["spec"]["endpoints"]
            for index, entry in enumerate(endpoints):
                if entry.get("port") != "admin" or "targetPort" in entry:
                    self.errors.append(f"{doc_name(monitor)} endpoints[{index}]: scrapes port "
                                       f"{entry.get('port', entry.get('targetPort'))}; only ports named admin")
            ports = {e.get("port") for e in endpoints}
            for workload in self.workloads.values():
                pod = self.pod_of(workload.doc)
                scraped = [s for s in self.services.values()
                           if selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
                           and any(p.get("name") in ports for p in s["spec"].get("ports", []))
                           and doc_name(workload.doc) in {p.owner for p in self.pods_behind(s)}]
                if not scraped:
                    self.errors.append(f"{doc_name(monitor)}: does not scrape {doc_name(workload.doc)}")
                for service in scraped:
                    for port in service["spec"].get("ports", []):
                        if port.get("name") not in ports:
                            continue
                        target = port.get("targetPort", port["port"])
                        number = pod.ports.get(target) if isinstance(target, str) else target
                        if number is None or number != pod.ports.get("admin"):
                            self.errors.append(f"{doc_name(service)} port {port['name']}: targets {target}, "
                                               f"not {doc_name(workload.doc)}'s admin port")


# --- main -----------------------------------------------------------------------


@dataclass
class OverlayResult:
    documents: int = 0
    configs: int = 0
    errors: int = 0


def check_overlay(overlay: Path, kustomize: Path, builtins: list[BuiltinSchemas],
                  customs: CustomSchemas, flashmall: Path) -> OverlayResult:
    name = overlay.name
    try:
        docs = render(kustomize, overlay)
    except CheckError as error:
        report(name, [str(error)])
        return OverlayResult(errors=1)
    kinds = Counter(doc["kind"] for doc in docs)
    per_document = [document_errors(doc, builtins, customs) for doc in docs]
    schema_problems = [error for errors in per_document for error in errors]
    valid = sum(1 for errors in per_document if not errors)
    summary = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
    print(f"{name}: {len(docs)} documents ({summary}) "
          f"{'valid' if not schema_problems else f'{len(docs) - valid} INVALID'}")
    report(name, schema_problems)
    config_problems, configs = check_configs(docs, flashmall)
    if configs:
        print(f"{name}: configs of {', '.join(sorted(configs))} checked")
    report(name, config_problems)
    consistency_problems = consistency_checks(name, docs, configs)
    report(name, consistency_problems)
    return OverlayResult(
        documents=valid,
        configs=len(configs),
        errors=len(schema_problems) + len(config_problems) + len(consistency_problems))


def report(overlay: str, errors: list[str]) -> None:
    for error in errors:
        print(f"ERROR {overlay}: {error}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flashmall", required=True, type=Path,
                        help="the flashmall binary (runs check-config)")
    parser.add_argument("--overlay", action="append", default=[],
                        help="an overlay under k8s/overlays/ (default: all)")
    parser.add_argument("--root", type=Path, default=K8S_DIR, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    cache = tools_dir()
    try:
        run_inside_venv(ensure_venv(cache))
        kustomize = ensure_kustomize(cache)
        archives: dict[str, bytes] = {}
        crd_files = [ensure_crd(cache, source, archives) for source in CRD_SOURCES]
        if not os.access(args.flashmall, os.X_OK):
            raise CheckError(f"{args.flashmall}: not an executable")
        overlays = find_overlays(args.root, args.overlay)
        builtins = [BuiltinSchemas(version) for version in KUBERNETES_VERSIONS]
        customs = CustomSchemas(crd_files, builtins[0])
    except CheckError as error:
        print(f"k8s: {error}", file=sys.stderr)
        return 2
    results = [check_overlay(overlay, kustomize, builtins, customs, args.flashmall.resolve())
               for overlay in overlays]
    documents = sum(result.documents for result in results)
    configs = sum(result.configs for result in results)
    errors = sum(result.errors for result in results)
    if errors:
        print(f"k8s: {len(overlays)} overlays, {errors} errors "
              f"({documents} documents valid, {configs} configs checked)")
        return 1
    print(f"k8s: {len(overlays)} overlays, {documents} documents valid, {configs} configs checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
