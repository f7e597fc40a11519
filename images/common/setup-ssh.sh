#!/usr/bin/env bash
# Build-time set-up shared by images/deepspeed and images/gaudi (run as root from a Dockerfile):
# the non-root MPI user, its own sshd on PORT, and the ssh client settings mpirun/deepspeed need.
#   setup-ssh.sh USER UID PORT
# Keys that grant access are never created here: the MPI Operator mounts a fresh per-job key pair and
# authorized_keys at /home/USER/.ssh. No host key stays in the image either: the entrypoint makes one per pod.
set -euo pipefail
user=${1:?usage: setup-ssh.sh USER UID PORT}
uid=${2:?usage: setup-ssh.sh USER UID PORT}
port=${3:?usage: setup-ssh.sh USER UID PORT}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
home=/home/$user

# The user. Ubuntu 24.04 images ship `ubuntu` with uid 1000: it makes way for the MPI user.
if existing=$(getent passwd "$uid" | cut -d: -f1) && [[ -n $existing && $existing != "$user" ]]; then
  userdel --remove "$existing" 2>/dev/null || userdel "$existing"
fi
if ! id -u "$user" >/dev/null 2>&1; then
  useradd --create-home --uid "$uid" --user-group --shell /bin/bash "$user"
fi

# Client: every outgoing ssh (mpirun, deepspeed's `ssh host hostname`) uses the workers' port and records no
# host keys (each job has new pods; the Secret-mounted ~/.ssh is read-only anyway).
mkdir -p /etc/ssh/ssh_config.d
sed "s/^\([[:space:]]*Port\) .*/\1 $port/" "$here/ssh_config" > /etc/ssh/ssh_config.d/labkit.conf
chmod 0644 /etc/ssh/ssh_config.d/labkit.conf
if ! grep -qi '^[[:space:]]*Include[[:space:]]\+/etc/ssh/ssh_config.d/' /etc/ssh/ssh_config; then
  # Older ssh_config files lack the drop-in directory: read it first (first value wins in ssh_config).
  printf 'Include /etc/ssh/ssh_config.d/*.conf\n%s\n' "$(cat /etc/ssh/ssh_config)" > /etc/ssh/ssh_config
fi

# Server: the package's root host keys are unused (sshd runs as the user) and identical in every image copy.
rm -f /etc/ssh/ssh_host_*
mkdir -p /run/sshd
mkdir -p "$home/.sshd"
cp "$here/sshd_config" "$home/.sshd_config"
echo "Port $port" >> "$home/.sshd_config"
# Ranks started over ssh do not inherit the image's ENV: hand them the variables the runtime needs.
setenv=""
for var in PATH LD_LIBRARY_PATH PYTHONPATH MPI_ROOT $(compgen -e | grep -E '^(HABANA|GC_KERNEL|HCCL)_' || true); do
  value=${!var:-}
  if [[ -n $value && $value != *[[:space:]]* ]]; then setenv+=" $var=$value"; fi
done
if [[ -n $setenv ]]; then echo "SetEnv$setenv" >> "$home/.sshd_config"; fi
chown -R "$uid:$uid" "$home/.sshd" "$home/.sshd_config"
chmod 0700 "$home/.sshd"
# Fail the build now, not in a pod, if the config is wrong: checked with a throw-away host key, removed again (a key
# left in the image would be every pod's identity; the entrypoint makes each pod its own).
su -s /bin/sh "$user" -c "ssh-keygen -q -t ed25519 -N '' -f $home/.sshd/ssh_host_ed25519_key"
su -s /bin/sh "$user" -c "/usr/sbin/sshd -t -f $home/.sshd_config"
rm -f "$home/.sshd/ssh_host_ed25519_key" "$home/.sshd/ssh_host_ed25519_key.pub"
