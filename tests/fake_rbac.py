"""RBAC as the API server applies it, for tests/fake_apiserver.py: request attributes from a path, then the rules of
the (Cluster)Roles bound to the caller, read from the kit's own manifests/base/rbac.yaml and
manifests/base/node-reader/ (never a copy of them).

Upstream, read for each behaviour (kubernetes/kubernetes):
  * staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go: path -> (verb, apiGroup, resource,
    subresource, namespace, name); GET without a name is `list`, `?watch=true` is `watch`; for `/namespaces/<n>` the
    namespace is <n>.
  * staging/src/k8s.io/apiserver/pkg/endpoints/filters/authorization.go: authorization runs BEFORE the handler, so a
    forbidden GET/POST is 403 whether or not the object (or its namespace) exists.
  * plugin/pkg/auth/authorizer/rbac/rbac.go (RuleAllows): apiGroups, resources ("pods/exec" for a subresource) and
    verbs must each match, "*" matching all; a RoleBinding grants only in its own namespace, a ClusterRoleBinding
    everywhere (cluster-scoped resources such as nodes included).
  * plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go: every authenticated user may read discovery
    (system:discovery: /api, /apis, /apis/*, /version) and create selfsubjectaccessreviews/selfsubjectrulesreviews
    (system:basic-user).
  * pkg/registry/rbac/role/policybased/storage.go, rolebinding/policybased/storage.go, escalation_check.go and
    validation/rule.go (ConfirmNoEscalation): creating a Role (dry run or not) is refused unless the caller is in
    system:masters, may `escalate` roles, or already holds every permission the Role grants; a RoleBinding unless the
    caller may `bind` the referenced role or holds every permission of it, which is then read from storage (a Role
    that does not exist: 404). Both run before the create itself, so an existing object is 403 before 409.
    Coverage is policy_comparator.go's Covers (k8s.io/component-helpers/auth/rbac/validation today): each rule
    broken into (group, resource, verb, name) tuples, each covered by one rule of the caller, "*" matching all.
  * pkg/registry/core/pod/rest/subresources.go + KEP-4006 (feature gate AuthorizePodWebsocketUpgradeCreatePermission,
    on from 1.35): a websocket exec is a GET (verb `get`) that also needs `create` on pods/exec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BASE = Path(__file__).resolve().parents[1] / "manifests" / "base"
RBAC_FILES = (BASE / "rbac.yaml", BASE / "node-reader" / "node-reader.yaml")  # the Role; the one ClusterRole
ADMIN = "kubernetes-admin"  # system:masters: the RBAC authorizer is not consulted
SERVICE_ACCOUNT = "system:serviceaccount:workloads:labkit"
REVIEWS = ("selfsubjectaccessreviews", "selfsubjectrulesreviews")


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str
    resource: str  # with "/subresource" when there is one
    namespace: str  # "" at the cluster scope
    name: str = ""

    def denial(self, user: str) -> str:
        """The API server's own 403 message (authorization.go: forbiddenMessage)."""
        resource = self.resource if not self.group else f"{self.resource}.{self.group}"
        kind = self.resource.split("/")[0]
        head = (
            f'{kind}{"." + self.group if self.group else ""} "{self.name}" is forbidden'
            if self.name
            else (f"{resource.split('/')[0]} is forbidden")
        )
        where = f'in the namespace "{self.namespace}"' if self.namespace else "at the cluster scope"
        return (
            f'{head}: User "{user}" cannot {self.verb} resource "{self.resource}" in API group "{self.group}" {where}'
        )


def request_attributes(method: str, path: str, query: dict) -> Attributes | None:
    """requestinfo.go for the paths the fake serves; None for non-resource (discovery) paths."""
    m = re.fullmatch(r"/api/v1(/.*)?|/apis/([^/]+)/([^/]+)(/.*)?", path)
    if not m or (m.group(2) and not m.group(3)):
        return None
    group, rest = (m.group(2) or ""), (m.group(4) if m.group(2) else m.group(1)) or ""
    parts = [p for p in rest.split("/") if p]
    if not parts:
        return None
    namespace = ""
    if parts[0] == "namespaces" and len(parts) >= 2:
        namespace = parts[1]
        parts = parts[2:] if len(parts) > 2 else ["namespaces", parts[1]]
    resource, name = parts[0], (parts[1] if len(parts) > 1 else "")
    if len(parts) > 2:
        resource += "/" + parts[2]
    verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}.get(method, "get")
    if method == "GET" and not name:
        verb = "watch" if str(query.get("watch")).lower() in ("true", "1") else "list"
    return Attributes(verb, group, resource, namespace, name)


def load_bindings(paths=RBAC_FILES, docs: list[dict] | None = None) -> dict[str, list[tuple[str, list[dict]]]]:
    """user -> [(namespace, rules)] from the (Cluster)Roles and their bindings in the kit's manifest files (or the
    rendered objects `docs`); a ClusterRoleBinding grants in every namespace and at the cluster scope ("*").
    Subjects as validation/rule.go appliesToUser matches them: a ServiceAccount by its user name
    system:serviceaccount:<namespace>:<name>, a User by its name (Groups are not used by the kit)."""
    import yaml

    if docs is None:
        docs = [d for path in paths for d in yaml.safe_load_all(Path(path).read_text()) if d]
    roles = {
        (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d.get("rules") or []
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    grants: dict[str, list[tuple[str, list[dict]]]] = {}
    for d in docs:
        if d["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ns = d["metadata"].get("namespace", "") if d["kind"] == "RoleBinding" else "*"
        ref = d["roleRef"]
        rules = roles.get((ref["kind"], "" if ref["kind"] == "ClusterRole" else ns, ref["name"]), [])
        for s in d.get("subjects") or []:
            if s.get("kind") == "ServiceAccount":
                user = f"system:serviceaccount:{s.get('namespace', ns)}:{s['name']}"
                grants.setdefault(user, []).append((ns, rules))
            elif s.get("kind") == "User":
                grants.setdefault(s["name"], []).append((ns, rules))
    return grants


def _rule_allows(rule: dict, attrs: Attributes, verb: str) -> bool:
    def has(values, want):
        return "*" in (values or []) or want in (values or [])

    names = rule.get("resourceNames")
    return (
        has(rule.get("apiGroups"), attrs.group)
        and has(rule.get("resources"), attrs.resource)
        and has(rule.get("verbs"), verb)
        and (not names or attrs.name in names)
    )


def allowed(user: str, attrs: Attributes, grants: dict, verb: str | None = None) -> bool:
    if user == ADMIN:
        return True
    verb = verb or attrs.verb
    if attrs.group == "authorization.k8s.io" and attrs.resource in REVIEWS and verb == "create":
        return True  # system:basic-user
    return any(
        ns in (attrs.namespace, "*") and any(_rule_allows(r, attrs, verb) for r in rules)
        for ns, rules in grants.get(user, [])
    )


def exec_verbs(attrs: Attributes) -> tuple[str, ...]:
    """A websocket exec is authorized as `get`, and from Kubernetes 1.35 also as `create`."""
    return ("get", "create") if attrs.resource == "pods/exec" else (attrs.verb,)


ESCALATION = "is attempting to grant RBAC permissions not currently held"
RBAC_GROUP = "rbac.authorization.k8s.io"


def _uncovered(owner_rules: list[dict], rules: list[dict]) -> list[tuple[str, str, str, str]]:
    """policy_comparator.go Covers: the (group, resource, verb, resourceName) tuples no owner rule covers."""
    atoms = [
        (group, resource, verb, name)
        for rule in rules
        for group in rule.get("apiGroups") or []
        for resource in rule.get("resources") or []
        for verb in rule.get("verbs") or []
        for name in rule.get("resourceNames") or [""]
    ]
    # ruleCovers is RuleAllows for one tuple: an owner rule with resourceNames covers only those names
    requests = [(atom, Attributes(atom[2], atom[0], atom[1], "", atom[3])) for atom in atoms]
    return [atom for atom, attrs in requests if not any(_rule_allows(o, attrs, attrs.verb) for o in owner_rules)]


def escalation_refusal(user: str, obj: dict, namespace: str, grants: dict, stored_role) -> tuple[int, str] | None:
    """(status, message) when the API server refuses to create this Role or RoleBinding for `user` as an escalation
    (or names the missing Role a binding refers to); None when it goes on to the create. `stored_role(name)` is the
    Role of that name in `namespace`, or None."""
    kind, name = obj.get("kind"), obj.get("metadata", {}).get("name", "")
    if kind not in ("Role", "RoleBinding") or user == ADMIN:
        return None
    if kind == "Role":
        if allowed(user, Attributes("escalate", RBAC_GROUP, "roles", namespace), grants):
            return None
        rules, plural = obj.get("rules") or [], "roles"
    else:
        ref, plural = obj.get("roleRef") or {}, "rolebindings"
        ref_plural = "roles" if ref.get("kind") == "Role" else "clusterroles"
        if allowed(user, Attributes("bind", RBAC_GROUP, ref_plural, namespace, ref.get("name", "")), grants):
            return None
        role = stored_role(ref.get("name")) if ref.get("kind") == "Role" else None
        if role is None:  # the fake keeps no ClusterRoles in storage: a binding to one reads as missing
            return 404, f'{ref_plural}.{RBAC_GROUP} "{ref.get("name")}" not found'
        rules = role.get("rules") or []
    owner = [r for ns, held in grants.get(user, []) if ns in (namespace, "*") for r in held]
    missing = _uncovered(owner, rules)
    if not missing:
        return None
    # policy_compact.go CompactRules: tuples without a resource name merge their verbs per (group, resource); then
    # rbacv1helpers.CompactString per rule, sorted (sets.NewString(...).List())
    merged: dict[tuple[str, str, str, int], list[str]] = {}
    for i, (group, resource, verb, res_name) in enumerate(missing):
        merged.setdefault((group, resource, res_name, i if res_name else -1), []).append(verb)
    quoted = lambda values: " ".join(f'"{v}"' for v in values)  # noqa: E731 (Go's %q of a []string)
    lines = sorted(
        f"{{APIGroups:[{quoted([g])}], Resources:[{quoted([r])}]"
        + (f", ResourceNames:[{quoted([n])}]" if n else "")
        + f", Verbs:[{quoted(verbs)}]}}"
        for (g, r, n, _), verbs in merged.items()
    )
    head = f'{plural}.{RBAC_GROUP} "{name}" is forbidden: user "{user}" (groups=["system:authenticated"]) {ESCALATION}:'
    return 403, "\n".join([head, *lines])
