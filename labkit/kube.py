"""Access to a Kubernetes API through the official `kubernetes` client: which configuration applies (kubeconfig files or
the pod's service account, as kubectl picks it), a client for it, and a never-hanging reachability probe.

No kubeconfig is a normal state (a laptop): `find_kubeconfig` returns None and `load_client` raises one LabkitError
that says how to configure one. The kubernetes package is imported only inside functions, so importing this module
stays cheap on machines without it (the GPU benchmark image)."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from labkit.errors import ConfigError, LabkitError, scrub

NO_CLUSTER_MESSAGE = (
    "no cluster configured: set KUBECONFIG or create ~/.kube/config (kind and minikube write one), "
    "or run inside a pod with a service account"
)
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
KUBECONFIG_FIX = "pass an existing kubeconfig file, or leave it empty to use $KUBECONFIG or ~/.kube/config"
# The useful part of a client/urllib3 error message, when it has one of these
_REASONS = (
    "Connection refused|timed out|Name or service not known|No route to host|certificate verify failed|"
    "Network is unreachable"
).split("|")


@dataclass(frozen=True)
class KubeconfigSource:
    """Which configuration a client would use: kubeconfig file(s) or the pod's service account. Holds no credentials."""

    kind: str  # "file" | "in-cluster"
    paths: tuple[str, ...] = ()
    context: str | None = None  # the context that would be used
    server: str | None = None  # the API server URL of that context's cluster, without credentials or query
    exec_plugin: str | None = None  # the command an `exec` user runs to get its credentials (announced: it runs)

    def describe(self) -> str:
        if self.kind == "in-cluster":
            return f"in-cluster service account (server {self.server})"
        plugin = self.exec_plugin and f"credentials from the exec plugin {self.exec_plugin!r} (the client runs it)"
        details = (self.context and f"context {self.context}", self.server and f"server {self.server}", plugin)
        return ", ".join([f"kubeconfig {', '.join(self.paths)}", *filter(None, details)])


def shown_server(url: str) -> str:
    """A server URL as the kit shows it: no user:password@ and no query or fragment (`?access_token=...`)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query="", fragment=""))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (dict, list)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _strings(item)


def kubeconfig_secrets(paths: Iterable[str]) -> set[str]:
    """Every value a kubeconfig's users hold (tokens, keys, passwords, exec arguments and env) and the credentials and
    query of its server URLs: the strings no message of the kit may contain. Unreadable files give nothing."""
    import yaml

    found: set[str] = set()
    for path in paths:
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if not isinstance(doc, dict):
            continue
        for user in doc.get("users") or []:
            fields = dict(user["user"]) if isinstance(user, dict) and isinstance(user.get("user"), dict) else {}
            plugin = fields.pop("exec", None)
            found.update(_strings(fields))
            if isinstance(plugin, dict):  # its command is announced; its arguments and environment may carry secrets
                found.update(_strings(plugin.get("args")))
                found.update(_strings([e.get("value") for e in plugin.get("env") or [] if isinstance(e, dict)]))
        for item in doc.get("clusters") or []:
            server = ((item or {}).get("cluster") or {}).get("server") if isinstance(item, dict) else None
            if isinstance(server, str):
                parts = urlsplit(server)
                found.update(v for v in (parts.password, parts.query, parts.fragment) if v)
    return {v for v in found if len(v) >= 4}  # short values ('v1', 'Never') would blank ordinary words


def _read_kubeconfig_summary(paths: Iterable[str], context: str | None) -> tuple[str | None, str | None, str | None]:
    """(context, server, exec plugin), merged as kubectl does: the first file that sets a value wins. Never secrets."""
    import yaml

    current, named = None, {"contexts": {}, "clusters": {}, "users": {}}
    for path in paths:
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            # Never the file's content: YAML errors quote the offending line, which may hold the token.
            if isinstance(exc, OSError):
                why = exc.strerror or "cannot be read"
            elif isinstance(exc, UnicodeDecodeError):
                why = "not text (binary data)"
            elif getattr(exc, "problem_mark", None) is not None:  # YAML: where and what, without the echoed snippet
                mark = exc.problem_mark
                why = f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
            else:
                why = "not valid YAML"
            problem = f"{path} is not a readable kubeconfig: {type(exc).__name__}: {why[:200]}"
            fix = "fix or remove that file, or point KUBECONFIG at a valid one"
            raise ConfigError("kubeconfig", problem, fix) from None
        fix = "point KUBECONFIG at a file written by kubectl, kind or minikube"
        if not isinstance(doc, dict):
            raise ConfigError("kubeconfig", f"{path} is not a kubeconfig (top level is not a mapping)", fix)
        if not isinstance(doc.get("current-context") or "", str):
            raise ConfigError("kubeconfig", f"{path}: current-context is not a context's name", fix)
        current = current or doc.get("current-context")
        for section, items in named.items():
            if not isinstance(doc.get(section) or [], list):
                raise ConfigError("kubeconfig", f"{path}: {section} is not a list", fix)
            for item in doc.get(section) or []:
                if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]:
                    if not isinstance(body := item.get(section[:-1]) or {}, dict):
                        problem = f"{path}: {section}[{item['name']}].{section[:-1]} is not a mapping"
                        raise ConfigError("kubeconfig", problem, fix)
                    items.setdefault(item["name"], body)
    contexts, chosen = named["contexts"], context or current
    if chosen and chosen not in contexts:
        problem = f"context {chosen!r} is not in {', '.join(paths)} (contexts: {', '.join(sorted(contexts)) or 'none'})"
        fix = "pick one of those contexts (kubectl config get-contexts)"
        raise ConfigError("context" if context else "kubeconfig", problem, fix)
    ctx = contexts.get(chosen) or {}
    server = named["clusters"].get(ctx.get("cluster"), {}).get("server")
    plugin = (named["users"].get(ctx.get("user")) or {}).get("exec") or {}
    command = plugin.get("command") if isinstance(plugin, dict) else None
    shown = shown_server(server) if isinstance(server, str) else None
    return chosen, shown, Path(command).name if isinstance(command, str) else None


def find_kubeconfig(
    kubeconfig: str | os.PathLike | None = None, context: str | None = None, env: Mapping[str, str] | None = None
) -> KubeconfigSource | None:
    """The configuration a client would load, or None when no cluster is configured. Order as kubectl: an explicit
    file, then $KUBECONFIG (a list; missing entries are skipped), then ~/.kube/config, then the in-cluster service
    account. An explicit file that does not exist or a folder (in either), or a $KUBECONFIG naming only missing files,
    is a ConfigError (a typo, not no cluster)."""
    env = os.environ if env is None else env
    if kubeconfig:
        path = Path(kubeconfig).expanduser()
        if path.is_dir():
            raise ConfigError("kubeconfig", f"{path} is a folder, not a kubeconfig file", KUBECONFIG_FIX)
        if not path.is_file():
            raise ConfigError("kubeconfig", f"{path} does not exist", KUBECONFIG_FIX)
        candidates = [kubeconfig]
    elif env.get("KUBECONFIG"):
        candidates = [p for p in env["KUBECONFIG"].split(os.pathsep) if p]
        # Not skipped as a missing entry is: kubectl and the client refuse a folder ("is a directory") in the list too
        if folder := next((Path(p).expanduser() for p in candidates if Path(p).expanduser().is_dir()), None):
            fix = f"point KUBECONFIG at the kubeconfig file inside it ({folder / 'config'}?), or unset it"
            raise ConfigError("KUBECONFIG", f"{folder} is a folder, not a kubeconfig file", fix)
    else:
        candidates = [Path(env.get("HOME") or Path.home()) / ".kube" / "config"]
    paths = [str(Path(p).expanduser()) for p in candidates if Path(p).expanduser().is_file()]
    if paths:
        return KubeconfigSource("file", tuple(paths), *_read_kubeconfig_summary(paths, context))
    if env.get("KUBERNETES_SERVICE_HOST") and IN_CLUSTER_TOKEN.is_file():
        host, port = env["KUBERNETES_SERVICE_HOST"], env.get("KUBERNETES_SERVICE_PORT", "443")
        return KubeconfigSource("in-cluster", server=f"https://{f'[{host}]' if ':' in host else host}:{port}")
    if env.get("KUBECONFIG"):  # set, naming only files that are not there: a typo, not "no cluster configured"
        missing = ", ".join(str(Path(p).expanduser()) for p in candidates)
        fix = "point KUBECONFIG at your kubeconfig file (kind get kubeconfig > FILE), or unset it"
        raise ConfigError("KUBECONFIG", f"{missing} {'does' if len(candidates) == 1 else 'do'} not exist", fix)
    return None


def api_client(source: KubeconfigSource | None, context: str | None, *, retries: bool = True):
    """An ApiClient for `source` (never the client's global default configuration); retries=False fails fast: a dead
    server costs one timeout, not four."""
    from kubernetes import client, config

    if source is None:
        raise LabkitError(NO_CLUSTER_MESSAGE)
    cfg, seen = client.Configuration(), []

    def plugin_errors(record: logging.LogRecord) -> bool:
        """Keeps the kubernetes client's own error records (a failed exec plugin: its stderr) from being printed."""
        if "kubernetes" in Path(record.pathname).parts and record.levelno >= logging.ERROR:
            seen.append(record.getMessage())
            return False
        return True

    root = logging.getLogger()
    root.addFilter(plugin_errors)  # the client logs a failed exec plugin's stderr to the root logger and goes on
    try:
        if source.kind == "in-cluster":
            config.load_incluster_config(client_configuration=cfg)
        else:  # always pass the file(s): the client reads $KUBECONFIG once, when it is first imported
            files = os.pathsep.join(source.paths)
            # source.context, not None: of several files the client takes the last current-context, kubectl the first
            chosen = context or source.context
            config.load_kube_config(config_file=files, context=chosen, client_configuration=cfg, persist_config=False)
    except Exception as exc:  # noqa: BLE001 - ConfigException, and e.g. binascii.Error for bad base64 key data
        kind = type(exc).__name__
        kind = kind if type(exc).__module__ == "builtins" else f"{type(exc).__module__}.{kind}"
        seen.append(str(exc) if isinstance(exc, config.ConfigException) else f"{kind}: {exc}")
    finally:
        root.removeFilter(plugin_errors)
    if seen:
        why = seen[0]
        if why.startswith("exec:"):  # "exec: process returned 1. <the plugin's stderr>": the stderr may hold anything
            why = f"its exec plugin {source.exec_plugin!r} failed ({why.split('. ', 1)[0][6:]}; run it to see why)"
        why = scrub(why, kubeconfig_secrets(source.paths))
        raise LabkitError(
            f"cannot load the cluster configuration from {source.describe()}: {why}. "
            "Fix: check it with `kubectl config view` and `kubectl get nodes`"
        )
    if cfg.api_key and not cfg.auth_settings():  # the loader stored a token under a key the client never sends
        raise LabkitError(
            f"the kubernetes client {client.__version__} would send no token from {source.describe()} (kubernetes "
            "36.0.0 stores it as 'authorization' and reads 'BearerToken'). Fix: pip install 'kubernetes>=37'"
        )
    cfg.retries = cfg.retries if retries else False
    return client.ApiClient(configuration=cfg)


def load_client(kubeconfig: str | os.PathLike | None = None, context: str | None = None, *, retries: bool = True):
    """An ApiClient for the configuration find_kubeconfig picks; a LabkitError saying so when there is none."""
    return api_client(find_kubeconfig(kubeconfig, context), context, retries=retries)


def request_json(api_client, method: str, path: str, *, query=(), body=None, timeout: float | None = None) -> Any:
    """One request to any API path (discovery, objects of any kind, OpenAPI documents) with the client's auth; the
    reply's JSON (None when empty). A non-2xx status raises ApiException on every client version, as the generated
    API methods do. kubernetes >= 37 (openapi-generator 7) builds the request with `param_serialize` and returns any
    status; older clients take the path in `call_api` itself and raise on a non-2xx status there."""
    from kubernetes.client.exceptions import ApiException

    headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if body is not None else {})}
    fields = dict(query_params=list(query), header_params=headers, body=body, auth_settings=["BearerToken"])
    if hasattr(api_client, "param_serialize"):
        resp = api_client.call_api(*api_client.param_serialize(method, path, **fields), _request_timeout=timeout)
        data = resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiException(http_resp=resp)
    else:  # kubernetes <= 36: the raw urllib3 response, not a model
        resp = api_client.call_api(
            path, method, **fields, _preload_content=False, _return_http_data_only=True, _request_timeout=timeout
        )
        data = resp.data
    return json.loads(data) if data else None


_URL_QUERY = re.compile(r"\?[^\s'\")]*")  # urllib3 quotes the request URL: the server's ?access_token=... with it
_URL_USER = re.compile(r"(?<=//)[^/\s@'\"]+@")


def unreachable(what: str, exc: Exception) -> LabkitError:
    """A request that got no answer (refused, timed out, no route: urllib3's errors), as one line with the fix; any
    URL's query and user:password@ in urllib3's text are redacted (a kubeconfig's server may carry a token there)."""
    text = _URL_USER.sub("<redacted>@", _URL_QUERY.sub("?<redacted>", short_reason(exc)))
    return LabkitError(
        f"{what}: cannot reach the API server ({text}). "  # not urllib3's class: retries or not, one wording
        "Fix: check `kubectl get nodes` works with the same kubeconfig"
    )


def short_reason(exc: BaseException) -> str:
    """The useful part of a client/urllib3 error: 'Connection refused', 'HTTP 401 Unauthorized', a timeout."""
    status = getattr(exc, "status", None)
    if status:  # kubernetes ApiException with an HTTP status
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    text = str(getattr(exc, "reason", None) or exc)
    return next((marker for marker in _REASONS if marker in text), text[:200])


@dataclass(frozen=True)
class ApiProbe:
    """Whether the API server answered, within a hard time limit."""

    reachable: bool
    server: str | None
    version: str | None = None  # e.g. v1.32.0
    status: int | None = None  # HTTP status when the server answered with an error (401, 403, ...)
    error: str | None = None
    elapsed_s: float = 0.0


def probe_api_server(
    kubeconfig: str | os.PathLike | None = None, context: str | None = None, *, timeout: float = 2.0
) -> ApiProbe:
    """GET /version with `timeout` seconds in all (config loading included); never hangs: the request runs in a daemon
    thread joined with the time limit, so an exec credential plugin or a black-holed address cannot stall the caller.
    Raises LabkitError only when no cluster is configured."""
    source = find_kubeconfig(kubeconfig, context)
    if source is None:
        raise LabkitError(NO_CLUSTER_MESSAGE)
    # Import before the clock starts: a cold import of the client takes seconds on a busy laptop and is not the network.
    import urllib3
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    outcome: dict[str, Any] = {}
    start = time.monotonic()

    def call() -> None:
        try:
            api = api_client(source, context, retries=False)
        except LabkitError as exc:
            outcome["unreachable"] = str(exc)
            return
        try:
            outcome["version"] = client.VersionApi(api).get_code(_request_timeout=(timeout, timeout)).git_version
        except ApiException as exc:  # with a status the server answered (e.g. 401/403); without, TLS and the like
            reason = short_reason(exc)
            outcome.update({"status": exc.status, "error": reason} if exc.status else {"unreachable": reason})
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # refused, timed out, no route
            outcome["unreachable"] = short_reason(exc)
        except Exception as exc:  # it answered, but not with a /version this client version can parse
            outcome["error"] = f"unexpected /version reply ({type(exc).__name__})"
        finally:
            api.close()

    worker = threading.Thread(target=call, name="labkit-api-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    elapsed = time.monotonic() - start
    if worker.is_alive() or "unreachable" in outcome:
        error = outcome.get("unreachable", f"no answer within {timeout:g} s")
        return ApiProbe(False, source.server, error=error, elapsed_s=elapsed)
    return ApiProbe(True, source.server, outcome.get("version"), outcome.get("status"), outcome.get("error"), elapsed)
