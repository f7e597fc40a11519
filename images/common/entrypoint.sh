#!/usr/bin/env bash
# labkit image entrypoint: wait until every host in the MPI hostfile resolves, then exec the command.
#
# The MPI Operator mounts the hostfile on the launcher only (/etc/mpi/hostfile, lines "<host> slots=N").
# Worker DNS records appear a little after the pods become Ready; mpirun/deepspeed started before that fail
# with "could not resolve". Workers (no hostfile) exec their command (sshd) at once.
#   LABKIT_HOSTFILE            hostfile to read (default /etc/mpi/hostfile)
#   LABKIT_HOST_WAIT_SECONDS   give up after this long and exit 1 naming the host (default 300)
#   LABKIT_HOST_WAIT_INTERVAL  seconds between lookups (default 2)
#   LABKIT_SSHD_KEY_DIR        where sshd's host key is made when the command is sshd (default ~/.sshd)
set -euo pipefail

hostfile=${LABKIT_HOSTFILE:-/etc/mpi/hostfile}
wait_seconds=${LABKIT_HOST_WAIT_SECONDS:-300}
interval=${LABKIT_HOST_WAIT_INTERVAL:-2}

log() { printf 'labkit-entrypoint: %s\n' "$*" >&2; }

hosts_in() {
  # First field of each non-blank, non-comment line; "host:slots" (MPICH/Intel style) is cut at the colon.
  awk '!/^[[:space:]]*(#|$)/ { split($1, part, ":"); print part[1] }' "$1"
}

now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "$((10#$t))"; }   # bash >= 5: microseconds, no subprocess

if [[ $# -eq 0 ]]; then
  log "no command given; usage: entrypoint.sh COMMAND [ARGS...]"
  exit 2
fi
if ! [[ $wait_seconds =~ ^[0-9]+$ ]]; then
  log "LABKIT_HOST_WAIT_SECONDS must be a whole number of seconds, got '$wait_seconds'"
  exit 2
fi

if [[ -f $hostfile ]]; then
  deadline=$(($(now_us) + wait_seconds * 1000000))
  while read -r host; do
    [[ -n $host ]] || continue
    until getent hosts "$host" >/dev/null; do
      if (($(now_us) >= deadline)); then
        log "host '$host' from $hostfile did not resolve within ${wait_seconds}s; check that the worker pods are Running and the job's headless Service exists (kubectl get pods,svc)"
        exit 1
      fi
      sleep "$interval"
    done
    log "resolved $host"
  done < <(hosts_in "$hostfile")
fi

if [[ $(basename "$1") == sshd ]]; then
  # This pod's own host key, made now: one baked into the image would be shared by every pod of every job.
  keydir=${LABKIT_SSHD_KEY_DIR:-${HOME:-/home/mpiuser}/.sshd}
  if [[ ! -f $keydir/ssh_host_ed25519_key ]]; then
    mkdir -p "$keydir"
    ssh-keygen -q -t ed25519 -N "" -C "labkit sshd host key" -f "$keydir/ssh_host_ed25519_key"
  fi
fi

exec "$@"
