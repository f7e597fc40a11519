"""Kubernetes objects for DeepSpeed jobs: rendered from manifests/ (render.py, kustomize.py), checked (checks.py)."""

# The package's public API, re-exported:
# ruff: noqa: F401

from labkit.manifests.checks import (
    SSH_AUTH_MOUNT_PATH,
    SSH_PORT,
    SSH_UID,
    SSH_USER,
    ManifestError,
    find_secret_material,
    object_ref,
    validate_object,
    validate_objects,
)
from labkit.manifests.kustomize import kustomize_build, load_yaml, to_yaml
from labkit.manifests.render import (
    JOB_KINDS,
    JobSpec,
    manifests_dir,
    overlay_dir,
    render_all,
    render_job,
)
