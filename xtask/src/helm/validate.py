"""Strict schema validation of rendered Kubernetes manifests (run by `cargo xtask test --only helm`).

usage: validate.py KUBERNETES_VERSION CRD_DIR FILE...

Every YAML document of every FILE is validated strictly, where "strictly" means an unknown field
is an error, as with an API server's field validation `Strict`:
  * kinds served by a CustomResourceDefinition in CRD_DIR: against that CRD's openAPIV3Schema,
    with `additionalProperties: false` added to every object schema that does not declare
    `x-kubernetes-preserve-unknown-fields` (and `metadata` checked as ObjectMeta). The pod
    template of a Rollout is validated again as a core v1 PodTemplate;
  * every other kind: with kubernetes-validate's strict schemas for KUBERNETES_VERSION;
  * a kind that neither knows is an error, never a warning.

Prints one line per object ("ok FILE KIND/NAME via SCHEMA" or "error FILE KIND/NAME: PATH: MESSAGE")
and exits 1 when any object failed.
"""

import glob
import os
import sys

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict(schema):
    """Returns a copy of a structural schema in which unknown fields are rejected."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in schema:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        out["items"] = strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(schema["additionalProperties"])
    is_object = schema.get("type") == "object" or "properties" in schema
    if (is_object and not preserve and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-embedded-resource")):
        out["additionalProperties"] = False
    return out


def load_crds(crd_dir):
    crds = {}
    for path in sorted(glob.glob(os.path.join(crd_dir, "*.yaml"))):
        with open(path) as f:
            for doc in yaml.load_all(f, Loader=LOADER):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                group = doc["spec"]["group"]
                kind = doc["spec"]["names"]["kind"]
                for version in doc["spec"]["versions"]:
                    if not version.get("served"):
                        continue
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    schema.setdefault("properties", {})["metadata"] = OBJECT_META
                    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
                    crds[(f"{group}/{version['name']}", kind)] = (os.path.basename(path), schema)
    return crds


def location(err):
    return ".".join(str(p) for p in err.absolute_path) or "(top level)"


def validate_core(obj, k8s_version):
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
        return None
    except ValidationError as err:
        return f"{location(err)}: {err.message}"
    except SchemaNotFoundError:
        return f"no schema for {obj.get('apiVersion')} {obj.get('kind')}: neither a core kind of Kubernetes {k8s_version} nor a CRD in the committed CRD folder"


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    k8s_version, crd_dir, files = argv[1], argv[2], argv[3:]
    crds = load_crds(crd_dir)
    failed = 0
    count = 0
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.load_all(f, Loader=LOADER) if d is not None]
        for obj in docs:
            count += 1
            if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
                print(f"error {path} (document {count}): not a Kubernetes object (no apiVersion/kind)")
                failed += 1
                continue
            name = f"{obj['kind']}/{(obj.get('metadata') or {}).get('name', '?')}"
            key = (obj["apiVersion"], obj["kind"])
            problems = []
            if key in crds:
                source, schema = crds[key]
                validator = jsonschema.Draft7Validator(schema)
                for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
                    problems.append(f"{location(err)}: {err.message}")
                if obj["kind"] == "Rollout" and isinstance(obj.get("spec", {}).get("template"), dict):
                    pod = {"apiVersion": "v1", "kind": "PodTemplate",
                           "metadata": {"name": "rollout-template"}, "template": obj["spec"]["template"]}
                    err = validate_core(pod, k8s_version)
                    if err:
                        problems.append(f"spec.template (as core v1 PodTemplate): {err}")
                via = f"CRD {source}"
            else:
                err = validate_core(obj, k8s_version)
                if err:
                    problems.append(err)
                via = f"kubernetes-validate {k8s_version} strict"
            if problems:
                failed += 1
                for p in problems[:10]:
                    print(f"error {path} {name}: {p}")
            else:
                print(f"ok {path} {name} via {via}")
    print(f"validated {count} objects, {failed} failed")
    return 1 if failed or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
