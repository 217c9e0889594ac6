#!/usr/bin/env bash
# Build the Dockerfile with podman and check that the image serves the app as uid 1000 on port 7860 with its
# data home on a mounted folder (`make docker-test`; slow: the first build installs torch and friends).
#
# Works where `podman run` does not (sandboxes that refuse crun's setrlimit): the container is created, its
# filesystem mounted (`podman mount`), and the image's own command started there with chroot, as the image's
# user, with the image's environment and working directory, and a host folder bind-mounted at /data.
#
# BASE_IMAGE (default localhost/vlpeft-base:bookworm): the image to build from. That default is made here
# when missing, with debootstrap (Debian bookworm, Python 3.11), for machines that reach no container
# registry; it carries this host's extra CA certificates and pip configuration, so that the build reaches
# the same package sources as the host, and the local folders that configuration names are mounted into the
# build. Set BASE_IMAGE=python:3.11-slim to build exactly as a Space does. TORCH_INDEX is passed on when set.
# Needs root, podman and (for the default base) debootstrap: apt-get install podman debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${IMAGE:-localhost/vlpeft-lab:test}
base=${BASE_IMAGE:-localhost/vlpeft-base:bookworm}
port=${PORT:-7860}
work=$(mktemp -d /tmp/vlpeft-docker.XXXXXX)
say() { echo "docker-test: $*"; }
fail() { echo "docker-test: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root (podman's storage, mount and chroot need it)"
command -v podman >/dev/null || fail "podman is not installed: apt-get install podman"

# The host's pip configuration (system, global and user files merged, later ones winning as in pip), for the
# base image: the build runs pip as uid 1000, which reads no root user's file.
host_pip_conf() {
  python3 - <<'PY'
import configparser, os, sys
merged = configparser.RawConfigParser()
merged.read(["/etc/xdg/pip/pip.conf", "/etc/pip.conf", os.path.expanduser("~/.pip/pip.conf"),
             os.path.expanduser("~/.config/pip/pip.conf")])
merged.write(sys.stdout)
PY
}

# Folders that configuration names (find-links, file:// indexes), mounted read-only into the build.
pip_dirs() {
  host_pip_conf | grep -oE '(file://)?/[^ ]+' | sed -e 's#^file://##' -e 's#/simple/*$##' \
    | while read -r dir; do [ -d "$dir" ] && echo "$dir"; done | sort -u
}

make_base() {
  command -v debootstrap >/dev/null || fail "debootstrap is not installed: apt-get install debootstrap"
  local rootfs=$work/rootfs
  say "making $base with debootstrap (Debian bookworm, Python 3.11)"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || fail "debootstrap failed; see $work/debootstrap.log"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
  fi
  host_pip_conf >"$rootfs/etc/pip.conf"
  if [ -d /etc/xdg/pip ]; then mkdir -p "$rootfs/etc/xdg" && cp -r /etc/xdg/pip "$rootfs/etc/xdg/pip"; fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
}

if [ "$base" = localhost/vlpeft-base:bookworm ] && ! podman image exists "$base"; then
  make_base
fi

volumes=()
for dir in $(pip_dirs); do volumes+=(--volume "$dir:$dir:ro"); done
say "building $image from $base (log: $work/build.log)"
start=$(date +%s)
podman build --isolation chroot --build-arg "BASE_IMAGE=$base" ${TORCH_INDEX:+--build-arg "TORCH_INDEX=$TORCH_INDEX"} \
  "${volumes[@]}" -t "$image" . >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; fail "podman build failed"; }
say "built in $(( $(date +%s) - start )) s; size $(podman image inspect --format '{{.Size}}' "$image") bytes"

ctr=$(podman create "$image")
mnt=$(podman mount "$ctr")
data=$work/data
app_pid=
cleanup() {  # every step on its own: one that fails must not skip the others
  if [ -n "$app_pid" ] && kill "$app_pid" 2>/dev/null; then
    sleep 2
    kill -9 "$app_pid" 2>/dev/null || true
  fi
  # The app's job processes run in sessions of their own: whatever still runs inside the image's root.
  for proc in /proc/[0-9]*; do
    [ "$(readlink "$proc/root" 2>/dev/null)" = "$mnt" ] && kill -9 "${proc#/proc/}" 2>/dev/null || true
  done
  umount "$mnt/data" "$mnt/proc" "$mnt/dev" "$mnt/etc/hosts" 2>/dev/null || true
  podman umount "$ctr" >/dev/null 2>&1 || true
  podman rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT

user=$(podman image inspect --format '{{.Config.User}}' "$image")
uid=$(awk -F: -v u="$user" '$1 == u || $3 == u {print $3; exit}' "$mnt/etc/passwd")
[ "$uid" = 1000 ] || fail "the image's user is '$user' (uid ${uid:-unknown}), not uid 1000"
workdir=$(podman image inspect --format '{{.Config.WorkingDir}}' "$image")
command=$(podman image inspect --format '{{join .Config.Cmd " "}}' "$image")
mapfile -t environment < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | grep .)

mkdir -p "$data" "$mnt/data"
chown 1000:1000 "$data"
mount --bind "$data" "$mnt/data"
mount -t proc proc "$mnt/proc"
mount --bind /dev "$mnt/dev"
# What a container runtime provides when it runs an image: /etc/hosts (Gradio fetches http://localhost:<port>/
# at launch; a debootstrapped base has no such file of its own).
[ -f "$mnt/etc/hosts" ] || touch "$mnt/etc/hosts"
mount --bind /etc/hosts "$mnt/etc/hosts"

say "starting '$command' in $workdir as uid $uid on port $port, /data on $data"
chroot --userspec=1000:1000 "$mnt" /usr/bin/env -i "${environment[@]}" PORT="$port" HF_HUB_OFFLINE=1 \
  GRADIO_ANALYTICS_ENABLED=False /bin/sh -c "cd '$workdir' && exec $command" >"$work/app.log" 2>&1 &
app_pid=$!
deadline=$(( $(date +%s) + ${WAIT_S:-300} ))
until curl -sf -o "$work/page.html" "http://127.0.0.1:$port/"; do
  kill -0 "$app_pid" 2>/dev/null || { tail -30 "$work/app.log"; fail "the app exited"; }
  [ "$(date +%s)" -lt "$deadline" ] || { tail -30 "$work/app.log"; fail "no page on port $port"; }
  sleep 2
done
grep -q "VL-PEFT Lab" "$work/page.html" || fail "the first page does not say VL-PEFT Lab"
say "serves its first page on port $port ($(wc -c <"$work/page.html") bytes) after $(( $(date +%s) - deadline + ${WAIT_S:-300} )) s"
running_uid=$(awk '/^Uid:/ {print $2}' "/proc/$app_pid/status")
[ "$running_uid" = 1000 ] || fail "the app runs as uid $running_uid"
say "the app process runs as uid $running_uid"
in_image() {  # a command in the image as its user, with its environment, beside the running app
  chroot --userspec=1000:1000 "$mnt" /usr/bin/env -i "${environment[@]}" HF_HUB_OFFLINE=1 /bin/sh -c "cd '$workdir' && $1"
}
# A short job through the app's own queue (on the container's local disk), which its worker runs and then
# publishes to the bucket-like /data (training/jobs/durable.py).
job=$(in_image "python -m training submit --task caption --method lora --max-steps 2 --eval-limit 4" 2>"$work/submit.log") \
  || { cat "$work/submit.log"; fail "python -m training submit failed in the image"; }
say "job $job queued in the app's store"
job_deadline=$(( $(date +%s) + ${JOB_WAIT_S:-900} ))
until [ -f "$data/vlpeft/runs/$job/job.json" ]; do
  kill -0 "$app_pid" 2>/dev/null || { tail -30 "$work/app.log"; fail "the app exited"; }
  [ "$(date +%s)" -lt "$job_deadline" ] || { tail -30 "$work/app.log"; fail "job $job not published"; }
  sleep 3
done
state=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['job']['state'])" "$data/vlpeft/runs/$job/job.json")
[ "$state" = finished ] || { in_image "tail -20 ~/.vlpeft/runs/$job/log.txt; cat /data/vlpeft/runs/$job/log.txt" || true; fail "job $job $state"; }
owned=$(find "$data/vlpeft/runs/$job" -type f -uid 1000 -printf '%P ')
say "job $job finished; published to /data/vlpeft/runs/$job by uid 1000: $owned"
[ -f "$data/vlpeft/runs/$job/weights.safetensors" ] && [ -f "$data/vlpeft/runs/$job/eval.json" ] \
  || fail "the published run lacks its weights or evaluation"
in_image "python -m training methods --budget 0.5%" >"$work/methods.txt" 2>&1 \
  || { cat "$work/methods.txt"; fail "python -m training methods failed in the image"; }
grep -q "^lora" "$work/methods.txt" || fail "the budget table has no LoRA row"
say "python -m training methods runs in the image"
say "PASSED (logs in $work)"
