#!/usr/bin/env bash
# A pod-like local run of the release binary, on 127.0.0.1 only.
#
#   deploy/pod-local.sh [path/to/ringws]        (default: target/release/ringws)
#
# It starts ringws the way the image's ENTRYPOINT runs in the Knative pod: no arguments,
# configuration from the environment (PORT plus the env of deploy/service.yaml), one CPU
# (taskset -c 0, RINGWS_WORKERS=1, like limits.cpu "1"), and, when run as root, as UID/GID
# 65532 with no capabilities and no_new_privs (the securityContext). Then it connects real
# WebSocket clients (deploy/wsclient.py, standard library only), sends SIGTERM, and checks
# the drain contract: every client gets Close 1001, /readyz and new upgrades answer 503
# while draining, and the process exits 0 within the grace period.
#
# Scenarios (the seccomp filters are built from deploy/seccomp/ringws-iouring.json by
# deploy/seccomp/seccomp_exec.py through the system's libseccomp, the way runc loads a profile):
#   runtime-default  the profile's base without its io_uring rule = RuntimeDefault on
#                    containerd >= 2.0; RINGWS_IO=auto must fall back to epoll and serve
#                                                                  -> deploy/service.yaml
#   iouring          the whole Localhost profile, RINGWS_IO=uring  -> deploy/service-iouring.yaml
#                    (skipped when this machine forbids io_uring anyway)
#   iouring-denied   RINGWS_IO=uring under the base: must exit non-zero, not serve
# Without libseccomp, the base is imitated by a filter that only denies io_uring_* and the
# iouring scenario runs without a filter (the output says so).
#
# Everything is killed after 30 s. Prints PASS or FAIL last; exit status 0 or 1.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

# Hard bound: re-run under timeout(1), which kills this script's whole process group
# (the server and the clients included) after 30 s.
if [[ -z "${RINGWS_POD_LOCAL_BOUNDED:-}" ]]; then
  export RINGWS_POD_LOCAL_BOUNDED=1
  rc=0
  timeout --kill-after=3 30 bash "${BASH_SOURCE[0]}" "$@" || rc=$?
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "pod-local: timed out after 30 s"
    echo "FAIL"
    exit 1
  fi
  exit "$rc"
fi

bin=${1:-$repo/target/release/ringws}
if [[ ! -x "$bin" ]]; then
  echo "pod-local: no executable at $bin (build it with: cargo build --release --locked)"
  echo "FAIL"
  exit 1
fi

py=$(python3 -c 'import sys; print(sys.executable)')
work=$(mktemp -d /tmp/ringws-pod-local.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The image has the binary at /usr/local/bin/ringws, readable by the nonroot user; a copy in
# a world-readable directory imitates that (the checkout may not be readable by UID 65532).
chmod 0755 "$work"
install -m 0755 "$bin" "$work/ringws"

# The container's user and privileges (securityContext), when we are able to set them.
drop=()
if [[ $(id -u) -eq 0 ]] && command -v setpriv >/dev/null; then
  drop=(setpriv --reuid=65532 --regid=65532 --clear-groups
        --inh-caps=-all --bounding-set=-all --no-new-privs --)
  user_note="UID/GID 65532, no capabilities, no_new_privs"
else
  user_note="as $(id -un) (not root: cannot switch to UID 65532)"
fi

# The env of deploy/service.yaml, with a shorter drain timeout so the run stays short.
drain=5s
grace=8   # > drain timeout; imitates terminationGracePeriodSeconds
pod_env=(--env RINGWS_WORKERS=1 --env RINGWS_MAX_CONNECTIONS=1000
         --env RINGWS_DRAIN_TIMEOUT=$drain --env RUST_LOG=info
         --env RINGWS_BIND=127.0.0.1)

cd "$work"   # the server needs no writable directory; run it away from the checkout
echo "pod-local: $("$work/ringws" --version 2>/dev/null || echo ringws), 1 CPU (taskset -c 0), $user_note"

failed=0
passed=0
skipped=0
run() { # name, then wsclient.py pod-check arguments
  local name=$1; shift
  echo "== $name"
  if "$py" "$here/wsclient.py" pod-check --log "$work/$name.log" "$@"; then
    passed=$((passed + 1)); echo "== $name: ok"
  else
    failed=$((failed + 1)); echo "== $name: FAILED"
  fi
}

sx=("$py" "$here/seccomp/seccomp_exec.py")
profile=$here/seccomp/ringws-iouring.json
if "${sx[@]}" profile "$profile" -- true 2>/dev/null; then
  base=("${sx[@]}" profile --without-iouring "$profile" --)
  full=("${sx[@]}" profile "$profile" --)
  full_checks=(--expect-seccomp)
  echo "pod-local: seccomp from $(basename "$profile") via libseccomp"
else
  base=("${sx[@]}" deny-iouring --)
  full=()
  full_checks=()
  echo "pod-local: no libseccomp: RuntimeDefault imitated by denying io_uring_* only," \
       "io_uring scenario without a filter"
fi

run runtime-default --clients 8 --grace "$grace" --expect-seccomp --expect-log epoll \
  "${pod_env[@]}" --env RINGWS_IO=auto -- \
  taskset -c 0 "${base[@]}" "${drop[@]}" "$work/ringws"

if why=$("${full[@]}" "${sx[@]}" probe); then
  run iouring --clients 8 --grace "$grace" "${full_checks[@]}" \
    "${pod_env[@]}" --env RINGWS_IO=uring -- \
    taskset -c 0 "${full[@]}" "${drop[@]}" "$work/ringws"
else
  echo "== iouring: skipped ($why)"
  skipped=$((skipped + 1))
fi

run iouring-denied --expect-fail \
  "${pod_env[@]}" --env RINGWS_IO=uring -- \
  taskset -c 0 "${base[@]}" "${drop[@]}" "$work/ringws"

echo "pod-local: $passed scenarios passed, $failed failed, $skipped skipped"
if [[ $failed -eq 0 ]]; then
  echo "PASS"
else
  echo "FAIL"
  exit 1
fi
