"""What the API server does to a custom resource's body before storing it: prune the fields its CRD's structural schema
does not declare, then fill in the schema's defaults; `fieldValidation` decides whether a pruned field is a warning or
a refusal. Read from upstream (staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/ at 1aa2717a):
  * customresource_handler.go, schemaCoercingDecoder.Decode / unstructuredSchemaCoercer.apply: prune first, then the
    versioning codec's unstructuredDefaulter (structuraldefaulting.Default); on dry runs too (decoding ignores dryRun)
  * schema/pruning/algorithm.go: apiVersion, kind and metadata are kept at the root; a key neither in `properties`
    nor covered by `additionalProperties` is deleted and recorded as a path without a leading dot ("spec.x[0].y",
    schema/options.go AppendKey/AppendIndex), the list sorted; x-kubernetes-preserve-unknown-fields keeps unknown
    keys but still prunes inside known ones
  * schema/defaulting/algorithm.go: a default is set where the key is absent or null on a non-nullable field, then
    the walk goes on into properties, additionalProperties and items
  * staging/src/k8s.io/apiserver/pkg/endpoints/handlers/rest.go (fieldValidation: Warn when the client sends none,
    since 1.25) and create.go: Warn answers `Warning: 299 - "unknown field \"spec.x\""` per field and stores the
    pruned object; Strict is a 400 BadRequest, `KIND in version "V" cannot be handled as a KIND: strict decoding
    error: unknown field "spec.x", unknown field "spec.y"` (transformDecodeError, runtime.NewStrictDecodingError).
The schemas are labkit/schemas' copies of the upstream CRDs (scripts/make_schemas.py): there `additionalProperties:
false` beside `properties` was added for client-side checks (a structural schema never has both), so here an object's
known keys are its `properties`.

Built-in kinds (ConfigMap, Role, PersistentVolumeClaim...) are decoded into Go structs instead, with the same outcome
for unknown fields: staging/src/k8s.io/apimachinery/pkg/runtime/serializer/json/json.go (Serializer.unmarshal:
kjson.UnmarshalStrict collects `unknown field "spec.x"`, runtime.NewStrictDecodingError) feeds the same create.go
switch: Warn drops them with a warning each, Strict is the same 400. Unlike a CRD, metadata is decoded strictly too.
builtin_schema gives their fields from the OpenAPI schemas kubernetes-validate ships per release.
"""

from __future__ import annotations

import copy
import gzip
import json
from functools import cache
from pathlib import Path

import kubernetes_validate

SCHEMAS = Path(__file__).resolve().parents[1] / "labkit" / "schemas"
BUILTIN_SCHEMAS = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
KUBERNETES_RELEASE = "1.32"  # the fake's built-in kinds are those of this release (labkit checks manifests at 1.32)
UPSTREAM = Path(__file__).resolve().parent / "data" / "upstream-crds"
ROOT_FIELDS = ("apiVersion", "kind", "metadata")


@cache
def crd_schema(group: str, plural: str, version: str) -> dict | None:
    """The structural schema the cluster's CRD serves for that group/plural/version (None: not one labkit ships)."""
    path = SCHEMAS / f"{group}_{plural}_{version}.json"
    return json.loads(path.read_text())["schema"] if path.is_file() else None


@cache
def upstream_release(release: str) -> dict:
    """One release's record ("mpi-operator-v0.4.0"): its commit, paths and CRDs, from scripts/upstream_crds.py."""
    return json.loads(gzip.decompress((UPSTREAM / f"{release}.json.gz").read_bytes()))


def upstream_crd(release: str, kind: str) -> dict:
    """A released CRD as upstream tagged it ("mpi-operator-v0.4.0", "MPIJob"), recorded by scripts/upstream_crds.py."""
    return copy.deepcopy(next(c for c in upstream_release(release)["crds"] if c["spec"]["names"]["kind"] == kind))


def served_schema(crd: dict, version: str) -> dict:
    return next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)


@cache
def _builtin_definitions(release: str) -> dict:
    return json.loads((BUILTIN_SCHEMAS / f"v{release}.0-local" / "_definitions.json").read_text())["$defs"]


@cache
def builtin_schema(api_version: str, kind: str, release: str = KUBERNETES_RELEASE) -> dict | None:
    """The fields of a built-in kind in that Kubernetes release, $refs resolved (None: not a built-in kind)."""
    group, _, version = api_version.rpartition("/")
    name = f"{kind.lower()}-{group.split('.')[0]}-{version}" if group else f"{kind.lower()}-{version}"
    path = BUILTIN_SCHEMAS / f"v{release}.0-local" / f"{name}.json"
    if not path.is_file():
        return None
    defs = _builtin_definitions(release)

    def resolved(schema: dict, seen: tuple[str, ...]) -> dict:
        if "$ref" in schema:
            ref = schema["$ref"].rpartition("/")[2]  # "/api/_definitions.json#/$defs/io.k8s.api.core.v1.Volume"
            # a type that contains itself (none of the kinds the kit creates): its inside is not checked
            return {"x-kubernetes-preserve-unknown-fields": True} if ref in seen else resolved(defs[ref], (*seen, ref))
        out = {k: v for k, v in schema.items() if k not in ("properties", "additionalProperties", "items")}
        if "properties" in schema:
            out["properties"] = {k: resolved(v, seen) for k, v in schema["properties"].items()}
        for key in ("additionalProperties", "items"):
            if isinstance(schema.get(key), dict):
                out[key] = resolved(schema[key], seen)
        return out

    return resolved(json.loads(path.read_text()), ())


def prune(value, schema: dict | None, path: str = "", unknown: list[str] | None = None, root=ROOT_FIELDS) -> list[str]:
    """Delete, in place, what the schema does not declare (but the `root` keys); the paths of what went, sorted as
    pruning reports them (a built-in kind's decoder reports them in the body's order: `unknown` collects that)."""
    unknown = [] if unknown is None else unknown
    if isinstance(value, dict):
        properties = (schema or {}).get("properties") or {}
        extra = (schema or {}).get("additionalProperties")
        keep_unknown = bool((schema or {}).get("x-kubernetes-preserve-unknown-fields"))
        for key in list(value):
            where = f"{path}.{key}" if path else key
            if not path and key in root:
                continue
            if key in properties:
                prune(value[key], properties[key], where, unknown)
            elif isinstance(extra, dict):
                prune(value[key], extra, where, unknown)
            elif not keep_unknown:
                unknown.append(where)
                del value[key]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            prune(item, (schema or {}).get("items"), f"{path}[{i}]", unknown)
    return sorted(unknown)


def apply_defaults(value, schema: dict | None) -> None:
    """Fill in, in place, every default the schema declares where the object has no value."""
    if not schema:
        return
    if isinstance(value, dict):
        for key, prop in (schema.get("properties") or {}).items():
            absent = key not in value or (value[key] is None and not prop.get("nullable"))
            if "default" in prop and absent:
                value[key] = copy.deepcopy(prop["default"])
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            apply_defaults(item, (schema.get("properties") or {}).get(key, extra if isinstance(extra, dict) else None))
    elif isinstance(value, list):
        for item in value:
            apply_defaults(item, schema.get("items"))


def decode(
    body: dict, schema: dict, field_validation: str | None, *, builtin: bool = False
) -> tuple[dict, list[str], str | None]:
    """(the object as stored, Warning header values, the 400 message under Strict or None) for a create's body; a
    built-in kind's metadata is checked too, and its Go defaults (not in these schemas) are not applied."""
    obj, met = copy.deepcopy(body), []  # `met`: in the order the walk meets them, as Go's strict decoder reports
    pruned = prune(obj, schema, unknown=met, root=("apiVersion", "kind") if builtin else ROOT_FIELDS)  # sorted
    unknown = met if builtin else pruned
    problems = [f'unknown field "{path}"' for path in unknown]
    mode = field_validation or "Warn"
    if problems and mode == "Strict":
        kind, version = body.get("kind", ""), body.get("apiVersion", "").rpartition("/")[2]
        message = f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding error: '
        return obj, [], message + ", ".join(problems)
    if not builtin:
        apply_defaults(obj, schema)
    return obj, (problems if mode == "Warn" else []), None
