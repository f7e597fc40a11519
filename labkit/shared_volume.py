"""The shared volume (PVC `labkit-shared`): its layout, and which part of it each pod sees.

    /shared/              the lab pod mounts all of it, read-write (the one place that sees everything)
      data/               shared inputs (datasets), written from the lab: read-only in every job pod
      runs/<job>/         one job's own folder (checkpoints, hf-home, accelerate): read-write in that job's pods only
      regression/         the nightly CronJob's reports: its only mount

A job pod mounts `runs/<job>` (subPath) at /shared/runs/<job> and `data` at /shared/data, so paths read the same in
the lab, in a job and in a local rehearsal (which maps /shared onto a folder: jobs.launcher.map_paths); another job's
folder and the lab's caches are not in its filesystem at all. manifests/admission and manifests.checks refuse any
other use of a PVC in a job pod. Standard library only: ranks import it (through data).
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from labkit.errors import ConfigError

ROOT = "/shared"
DATA, RUNS, REGRESSION = "data", "runs", "regression"  # folders of the volume (subPaths)
DATA_DIR = f"{ROOT}/{DATA}"
INPUTS = (DATA,)  # what job pods mount read-only (manifests/admission's sharedInputs lists the same)
# Set in a pod that mounts ALL of the claim at ROOT (manifests/lab): its claim and namespace.
CLAIM_ENV, NAMESPACE_ENV = "LABKIT_SHARED_CLAIM", "LABKIT_NAMESPACE"
LAB_MOUNT = Path(ROOT)  # where such a pod has it
_PATH_IN_TEXT = re.compile(rf"(?<![\w./-]){re.escape(ROOT)}(?![\w.-])(?:/[^\s'\"=:;,]*)?")  # as map_paths reads


def run_subpath(job: str) -> str:
    return f"{RUNS}/{job}"


def run_dir(job: str) -> str:
    """A job's own folder, where its pods mount it (the one part of the volume they may write)."""
    return f"{ROOT}/{run_subpath(job)}"


def job_may_mount(mount: dict, job: str) -> bool:
    """Whether a volumeMount of the shared PVC is one a job's pod may have: its own folder, or an input read-only."""
    if "subPathExpr" in mount:  # expanded from the pod's env at start: nothing to judge beforehand
        return False
    sub = mount.get("subPath")
    return sub == run_subpath(job) or (sub in INPUTS and mount.get("readOnly") is True)


def outside_mounts(args: list[str], job: str) -> list[str]:
    """The /shared paths a job's command names that its pods do not mount (nothing there to read or write)."""
    mounted = (run_dir(job), *(f"{ROOT}/{name}" for name in INPUTS))
    found = [posixpath.normpath(p) for arg in args for p in _PATH_IN_TEXT.findall(arg)]
    return [p for p in found if not any(p == m or p.startswith(m + "/") for m in mounted)]


def make_job_folder(job: str, namespace: str, claim: str) -> Path | None:
    """In the lab, before a job's pods start: make /shared/runs/<job> (0700, uid 1000's: the job's pods run as uid 1000)
    and /shared/data, so what the job mounts exists and is writable whatever the storage. Elsewhere (no CLAIM_ENV, or
    another claim or namespace) nothing: kubelet makes a missing subPath folder itself, owned by root with the volume
    root's mode (pkg/kubelet/kubelet_pods.go makeMounts -> pkg/volume/util/subpath/subpath_linux.go doSafeMakeDir,
    which fchmods past the umask), so uid 1000 can write it where it can write the root: nfs-client's 0777 folders, or
    fsGroup's setgid g+rwx (the new folder inherits gid 1000). `data` and `runs` made here get the root's mode as
    kubelet's would, so kubelet can still add folders in them (as nobody under NFS root_squash). The folder or None."""
    root = LAB_MOUNT
    if (os.environ.get(CLAIM_ENV), os.environ.get(NAMESPACE_ENV)) != (claim, namespace) or not root.is_dir():
        return None
    mode = root.stat().st_mode & 0o7777
    for folder, folder_mode in ((root / DATA, mode), (root / RUNS, mode), (root / run_subpath(job), 0o700)):
        if os.path.islink(folder) or (folder.exists() and not folder.is_dir()):
            fix = f"remove it from the lab (rm {folder}) or pick another job name"
            raise ConfigError("name", f"{folder} exists and is not a folder", fix)
        try:
            folder.mkdir()
            folder.chmod(folder_mode)  # mkdir's mode went through the umask
        except FileExistsError:
            continue  # kept as it is: made earlier (by the lab or kubelet)
        except OSError as exc:
            fix = f"the lab (uid {os.geteuid()}) must be able to write the shared volume {claim}: ask its admin"
            raise ConfigError("pvc_name", f"cannot make {folder} ({exc.strerror})", fix) from None
    return root / run_subpath(job)
