"""Pod Security Standards: what the namespace's `pod-security.kubernetes.io/enforce` level would refuse, checked
before submit (the API server accepts an MPIJob or TrainingRuntime whatever its pod templates say; their pods are
refused later, seen only as events), and by `labkit manifests validate`.

The rules follow kubernetes/kubernetes staging/src/k8s.io/pod-security-admission/policy/ (file per rule, named
below); Windows-only and AppArmor-annotation rules are left out (the kit's pods are Linux, annotation-free).
"""

from __future__ import annotations

from collections.abc import Iterator

LEVELS = ("privileged", "baseline", "restricted")
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
# check_capabilities_baseline.go: the container runtime's default set
BASELINE_CAPABILITIES = frozenset(
    "AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER FSETID KILL MKNOD NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID "
    "SYS_CHROOT".split()
)
# check_sysctls.go: the safe set (baseline)
SAFE_SYSCTLS = frozenset(
    "kernel.shm_rmid_forced net.ipv4.ip_local_port_range net.ipv4.ip_unprivileged_port_start net.ipv4.tcp_syncookies "
    "net.ipv4.ping_group_range net.ipv4.ip_local_reserved_ports net.ipv4.tcp_keepalive_time net.ipv4.tcp_fin_timeout "
    "net.ipv4.tcp_keepalive_intvl net.ipv4.tcp_keepalive_probes".split()
)
# check_restrictedVolumes.go: the only volume types "restricted" allows
RESTRICTED_VOLUMES = frozenset(
    "configMap csi downwardAPI emptyDir ephemeral persistentVolumeClaim projected secret".split()
)


def _containers(pod: dict) -> Iterator[tuple[str, dict]]:
    for section in ("initContainers", "containers", "ephemeralContainers"):
        for i, container in enumerate(pod.get(section) or []):
            yield f"{section}[{i}]", container


def _baseline(pod: dict) -> Iterator[tuple[str, str]]:
    for field in ("hostNetwork", "hostPID", "hostIPC"):  # check_hostNamespaces.go
        if pod.get(field):
            yield field, "host namespaces are not allowed"
    for i, volume in enumerate(pod.get("volumes") or []):  # check_hostPathVolumes.go
        if "hostPath" in volume:
            yield f"volumes[{i}].hostPath", "hostPath volumes are not allowed"
    pod_ctx = pod.get("securityContext") or {}
    if (pod_ctx.get("seccompProfile") or {}).get("type") == "Unconfined":  # check_seccompProfile_baseline.go
        yield "securityContext.seccompProfile.type", "Unconfined is not allowed"
    for i, sysctl in enumerate(pod_ctx.get("sysctls") or []):  # check_sysctls.go
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield f"securityContext.sysctls[{i}].name", f"{sysctl.get('name')!r} is not a safe sysctl"
    for path, c in _containers(pod):
        ctx = c.get("securityContext") or {}
        if ctx.get("privileged"):  # check_privileged.go
            yield f"{path}.securityContext.privileged", "privileged containers are not allowed"
        extra = sorted(set((ctx.get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES)
        if extra:  # check_capabilities_baseline.go
            yield f"{path}.securityContext.capabilities.add", f"{', '.join(extra)} beyond the default set"
        for j, port in enumerate(c.get("ports") or []):  # check_hostPorts.go
            if port.get("hostPort"):
                yield f"{path}.ports[{j}].hostPort", "host ports are not allowed"
        if ctx.get("procMount", "Default") != "Default":  # check_procMount.go
            yield f"{path}.securityContext.procMount", "must be Default"
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            yield f"{path}.securityContext.seccompProfile.type", "Unconfined is not allowed"


def _restricted(pod: dict) -> Iterator[tuple[str, str]]:
    for i, volume in enumerate(pod.get("volumes") or []):  # check_restrictedVolumes.go
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            yield f"volumes[{i}]", f"volume type {', '.join(sorted(kinds))} is not allowed"
    pod_ctx = pod.get("securityContext") or {}
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
    if pod_ctx.get("runAsUser") == 0:  # check_runAsUser.go
        yield "securityContext.runAsUser", "must not be 0 (root)"
    for path, c in _containers(pod):
        ctx = c.get("securityContext") or {}
        if ctx.get("allowPrivilegeEscalation") is not False:  # check_allowPrivilegeEscalation.go
            yield f"{path}.securityContext.allowPrivilegeEscalation", "must be false"
        if not ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")):  # check_runAsNonRoot.go
            yield f"{path}.securityContext.runAsNonRoot", "must be true (here or in the pod's securityContext)"
        if ctx.get("runAsUser") == 0:
            yield f"{path}.securityContext.runAsUser", "must not be 0 (root)"
        seccomp = (ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost") and not (seccomp is None and pod_seccomp):
            # check_seccompProfile_restricted.go: the pod's or every container's profile must be set
            problem = "must be RuntimeDefault or Localhost (or set it on the pod)"
            yield f"{path}.securityContext.seccompProfile.type", problem
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):  # check_capabilities_restricted.go
            yield f"{path}.securityContext.capabilities.drop", "must include ALL"
        extra = sorted(set(caps.get("add") or []) - {"NET_BIND_SERVICE"})
        if extra:
            yield f"{path}.securityContext.capabilities.add", f"{', '.join(extra)} (only NET_BIND_SERVICE may be added)"


def violations(pod: dict, level: str) -> list[tuple[str, str]]:
    """(field path inside the pod spec, problem) for everything `level` would refuse; [] when it admits the pod."""
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security level {level!r} (one of {', '.join(LEVELS)})")
    found = [] if level == "privileged" else list(_baseline(pod))
    if level == "restricted":
        found += [v for v in _restricted(pod) if v not in found]
    return found
