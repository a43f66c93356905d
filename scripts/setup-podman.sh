#!/usr/bin/env bash
# Prepares this machine for the container executor's tests (and for developers who want
# `--executor docker` locally without Docker): installs Podman, configures it for these
# sandboxed machines, builds a small local image from a static busybox (no registry is
# needed), and serves the Docker Engine API on a unix socket.
#
# Idempotent; run as root:   bash scripts/setup-podman.sh
# Then:                      export DOCKER_HOST=unix:///run/slipway-podman.sock
set -euo pipefail

SOCK_PATH=${SLIPWAY_PODMAN_SOCK:-/run/slipway-podman.sock}
IMAGE=localhost/busybox:test
WEB_IMAGE=localhost/busybox-web:test
BASH_IMAGE=localhost/busybox-bash:test
APPLETS="sh echo cat ls sleep wget httpd env mkdir nc rm true false test [ printf id hostname grep kill head tail tr wc seq pwd"
# Changing the applets rebuilds the images (their label carries this list).
IMAGE_REV="2 $APPLETS"

log() { echo "setup-podman: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "run as root (installs packages, writes /etc/containers)"
    exit 1
fi

need=""
command -v podman >/dev/null 2>&1 || need="$need podman"
command -v runc >/dev/null 2>&1 || need="$need runc"
[ -x /bin/busybox ] || need="$need busybox-static"
if [ -n "$need" ]; then
    log "installing$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq podman runc busybox-static >&2
fi

# The sandbox refuses to raise rlimits: keep the containers' at or below the hard limits.
hard_nofile=$(ulimit -Hn)
if [ "$hard_nofile" = unlimited ] || [ "$hard_nofile" -gt 20000 ]; then hard_nofile=20000; fi
hard_nproc=$(ulimit -Hu)
if [ "$hard_nproc" = unlimited ] || [ "$hard_nproc" -gt 1000 ]; then hard_nproc=1000; fi
mkdir -p /etc/containers
conf=$(cat <<CONF
[containers]
# the sandbox refuses to raise rlimits: keep them at or below the current hard limits
default_ulimits = ["nofile=${hard_nofile}:${hard_nofile}", "nproc=${hard_nproc}:${hard_nproc}"]
[engine]
# crun refuses this machine's hybrid cgroup layout; runc works
runtime = "runc"
CONF
)
if [ ! -f /etc/containers/containers.conf ] || [ "$(cat /etc/containers/containers.conf)" != "$conf" ]; then
    log "writing /etc/containers/containers.conf"
    printf '%s\n' "$conf" > /etc/containers/containers.conf
fi

# localhost/busybox:test: a shell and the applets the tests use.
# localhost/busybox-web:test: the same files, exposing port 8080 (a service to wait for).
# localhost/busybox-bash:test: the same files plus this machine's bash and its libraries
# (the executor must pick bash when an image has it).
image_rev() { podman image inspect --format '{{index .Labels "slipway.image.rev"}}' "$1" 2>/dev/null || true; }
stale=""
for img in "$IMAGE" "$WEB_IMAGE" "$BASH_IMAGE"; do
    [ "$(image_rev "$img")" = "$IMAGE_REV" ] || stale="$stale $img"
done
if [ -n "$stale" ]; then
    log "importing$stale from /bin/busybox"
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/root"
    chmod 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/"
    for a in $APPLETS; do ln -sf busybox "$root/bin/$a"; done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
    echo 'root:x:0:' > "$root/etc/group"
    tar -C "$root" -cf "$root.tar" .
    label="LABEL slipway.image.rev=\"$IMAGE_REV\""
    podman import --change "$label" --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' \
        "$root.tar" "$IMAGE" >/dev/null
    podman import --change "$label" --change 'ENV PATH=/bin' --change 'EXPOSE 8080' \
        --change 'CMD ["httpd", "-f", "-p", "8080", "-h", "/tmp"]' "$root.tar" "$WEB_IMAGE" >/dev/null
    bash_path=$(readlink -f "$(command -v bash)")
    cp "$bash_path" "$root/bin/bash"
    for lib in $(ldd "$bash_path" | grep -o '/[^ ]*'); do
        cp --parents -L "$lib" "$root/"
    done
    tar -C "$root" -cf "$root-bash.tar" .
    podman import --change "$label" --change 'ENV PATH=/bin' --change 'CMD ["/bin/bash"]' \
        "$root-bash.tar" "$BASH_IMAGE" >/dev/null
    rm -rf "$root" "$root.tar" "$root-bash.tar"
    podman image prune -f >/dev/null 2>&1 || true
fi

sock_ok() {
    command -v curl >/dev/null 2>&1 || return 0
    curl -fsS --max-time 5 --unix-socket "$SOCK_PATH" http://d/v1.41/_ping >/dev/null 2>&1
}

if [ -S "$SOCK_PATH" ] && sock_ok; then
    log "Docker Engine API already served at unix://$SOCK_PATH"
else
    rm -f "$SOCK_PATH"
    log "starting podman system service on unix://$SOCK_PATH"
    # In its own session, detached from this shell's output: CI does not wait for it.
    # From /: conmon inherits the service's directory and fails every container once
    # that directory is gone (a deleted checkout).
    (cd / && setsid nohup podman system service --time=0 "unix://$SOCK_PATH" \
        >/tmp/slipway-podman-service.log 2>&1 </dev/null &)
    for _ in $(seq 1 100); do
        [ -S "$SOCK_PATH" ] && sock_ok && break
        sleep 0.1
    done
    if ! [ -S "$SOCK_PATH" ]; then
        log "the service did not start; see /tmp/slipway-podman-service.log"
        exit 1
    fi
fi

echo "export DOCKER_HOST=unix://$SOCK_PATH"
