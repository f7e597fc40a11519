"""Kubernetes objects for DeepSpeed jobs: rendered from manifests/ (render.py, kustomize.py), checked (checks.py)."""

# ruff: noqa: F401 - the package's public API, re-exported
from labkit.manifests import checks
from labkit.manifests.checks import ManifestError, find_secret_material, object_ref, validate_object, validate_objects
from labkit.manifests.kustomize import kustomize_build, load_yaml, to_yaml
from labkit.manifests.render import (
    DEFAULT_NAMESPACE,
    JOB_KINDS,
    LAB_KIND,
    NAMESPACES,
    OVERLAY_KINDS,
    PROXY_FIELDS,
    QUEUE_LABEL,
    JobSpec,
    default_namespace,
    env_lab_namespace,
    manifests_dir,
    overlay_dir,
    render_all,
    render_job,
)

SSH_PORT, SSH_USER, SSH_UID = checks.SSH_PORT, checks.SSH_USER, checks.SSH_UID
SSH_AUTH_MOUNT_PATH = checks.SSH_AUTH_MOUNT_PATH
