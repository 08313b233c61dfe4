#!/usr/bin/env bash
# The release binary under a real OCI runtime (runc), as the image runs it in the pod.
#
#   deploy/runc-local.sh [path/to/ringws]        (default: target/release/ringws)
#
# Needs root (or password-less sudo), ip(8), nsenter(1) and python3; installs runc with
# apt-get if missing.
#
# It builds an OCI bundle whose root filesystem holds what gcr.io/distroless/cc-debian12
# gives the binary: the binary at /usr/local/bin/ringws, the shared libraries `ldd` lists
# (glibc's libc, libm and loader, libgcc_s; all in the cc image), and /etc/passwd and
# /etc/group with "nonroot" 65532. The config is `runc spec`'s, edited like the pod of
# deploy/service.yaml: UID/GID 65532, no capabilities (drop ALL), no_new_privs, read-only
# root, the image's ENTRYPOINT with no arguments and the Service's env plus PORT=8080, its
# limits (cpu "1" as a CFS quota, memory 256Mi) in the container's cgroup,
# RLIMIT_NOFILE 1024:524288 (what containerd 2.x's CRI leaves a container on a systemd
# node; the hard limit is capped at this shell's), no user namespace, and a network
# namespace this script makes (ip netns add; runc does not bring up its loopback).
#
# Scenarios, each under `runc run` (foreground: its exit status is the container's):
#   runtime-default        linux.seccomp = deploy/seccomp/containerd-runtime-default.json
#                          (containerd 2.x RuntimeDefault, deploy/README.md section 10),
#                          RINGWS_IO=auto: serves on epoll and logs why io_uring is unavailable
#   runtime-default-uring  the same profile, RINGWS_IO=uring: exits non-zero with the reason
#   iouring                deploy/seccomp/ringws-iouring.json, RINGWS_IO=uring: serves on io_uring
#   iouring-auto           that profile, RINGWS_IO=auto: serves on epoll by choice
#                          (the two iouring scenarios are skipped where the kernel forbids io_uring)
# In each serving scenario deploy/wsclient.py connects 8 clients inside the container's
# network namespace (nsenter --net), checks the server process in /proc (seccomp filter,
# UID 65532, no capabilities, no_new_privs, read-only root), sends SIGTERM through the
# runtime (`runc kill ID TERM`), and checks every client gets Close 1001, /readyz and new
# upgrades answer 503 while draining, and the container exits 0.
#
# Everything is killed after 120 s (each scenario after 60 s); the trap then deletes the
# containers and the namespace. Prints PASS or FAIL per scenario and last; exit status 0 or 1.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

# runc and network namespaces need root: re-run under sudo where that asks no password.
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  exec sudo -n bash "${BASH_SOURCE[0]}" "$@"
fi

# Hard bound: re-run under timeout(1), which signals this script's process group after
# 120 s; the inner run's traps then remove its containers, namespace and files.
if [[ -z "${RINGWS_RUNC_LOCAL_BOUNDED:-}" ]]; then
  export RINGWS_RUNC_LOCAL_BOUNDED=1
  rc=0
  timeout --kill-after=10 120 bash "${BASH_SOURCE[0]}" "$@" || rc=$?
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "runc-local: timed out after 120 s"
    echo "FAIL"
    exit 1
  fi
  exit "$rc"
fi

fail() { echo "runc-local: $*"; echo "FAIL"; exit 1; }

bin=${1:-$repo/target/release/ringws}
[[ -x "$bin" ]] || fail "no executable at $bin (build it with: cargo build --release --locked --bin ringws)"
[[ $(id -u) -eq 0 ]] || fail "must run as root (runc, network namespaces)"
for tool in ip nsenter ldd python3; do
  command -v "$tool" >/dev/null || fail "$tool not found"
done
if ! command -v runc >/dev/null; then
  echo "runc-local: installing runc (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 45 apt-get update -qq >/dev/null
  timeout 45 apt-get install -y -qq runc >/dev/null
fi
runc_version=$(runc --version | head -1)
libseccomp_version=$(runc --version | sed -n 's/^libseccomp: //p')
py=$(python3 -c 'import sys; print(sys.executable)')

# Names carry this script's PID, so a leftover of a killed run never collides with this one.
tag=ringws-runc-$$
netns=$tag
work=$(mktemp -d /tmp/ringws-runc-local.XXXXXX)
containers=()

cleanup() {
  local id
  for id in "${containers[@]}"; do
    timeout 10 runc delete --force "$id" >/dev/null 2>&1 || true
  done
  containers=()
  if [[ -e /run/netns/$netns ]]; then
    ip netns del "$netns" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP

# Leftovers of runs killed before their trap ran (their PID is gone): containers, namespaces.
for id in $(runc list -q 2>/dev/null | grep '^ringws-runc-' || true); do
  pid=${id#ringws-runc-}; pid=${pid%%-*}
  kill -0 "$pid" 2>/dev/null || timeout 10 runc delete --force "$id" >/dev/null 2>&1 || true
done
for ns in $(ip netns list 2>/dev/null | awk '/^ringws-runc-/ {print $1}'); do
  kill -0 "${ns#ringws-runc-}" 2>/dev/null || ip netns del "$ns" 2>/dev/null || true
done

# --- the root filesystem: the binary plus what distroless cc gives it ---------------------
rootfs=$work/rootfs
mkdir -p "$rootfs"/{usr/local/bin,etc,home/nonroot,tmp,proc,sys,dev}
chmod 0755 "$work" "$rootfs"
chmod 1777 "$rootfs/tmp"
chown 65532:65532 "$rootfs/home/nonroot"
install -m 0755 "$bin" "$rootfs/usr/local/bin/ringws"
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
[[ -n "$libs" ]] || fail "ldd lists no libraries for $bin"
for lib in $libs; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF

# --- the network namespace the container joins, with its loopback up -----------------------
ip netns add "$netns"
ip -n "$netns" link set lo up

echo "runc-local: $runc_version (libseccomp $libseccomp_version), $($rootfs/usr/local/bin/ringws --version 2>/dev/null || echo ringws)"
echo "runc-local: rootfs = /usr/local/bin/ringws +" $libs
echo "runc-local: UID/GID 65532, no capabilities, no_new_privs, read-only root, netns $netns"

# --- one bundle per scenario: runc spec, edited -------------------------------------------
drain=5s
grace=8   # > drain timeout; imitates terminationGracePeriodSeconds
make_bundle() { # name, seccomp profile, RINGWS_IO
  local bundle=$work/$1
  mkdir -p "$bundle"
  (cd "$bundle" && runc spec)
  "$py" - "$bundle/config.json" "$2" "$3" "/run/netns/$netns" "$drain" "$rootfs" <<'EOF'
import json, resource, sys
path, profile, io, netns, drain, rootfs = sys.argv[1:]
c = json.load(open(path))
p = c["process"]
p["terminal"] = False
p["user"] = {"uid": 65532, "gid": 65532}
p["args"] = ["/usr/local/bin/ringws"]          # the image's ENTRYPOINT, no arguments
p["cwd"] = "/home/nonroot"                      # distroless nonroot's WORKDIR
p["env"] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PORT=8080",                                # what Knative passes
    "K_SERVICE=ringws", "K_CONFIGURATION=ringws", "K_REVISION=ringws-00001",
    # deploy/service.yaml's env, with a short drain timeout so the run stays short
    "RINGWS_WORKERS=1", "RINGWS_MAX_CONNECTIONS=1000", "RINGWS_DRAIN_TIMEOUT=" + drain,
    "RINGWS_IO=" + io, "RUST_LOG=info",
]
p["capabilities"] = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
p["noNewPrivileges"] = True
# What containerd 2.x's CRI leaves a container on a systemd node (it drops the spec's
# rlimits; its unit sets no LimitNOFILE): 1024:524288. Raising a hard limit needs
# CAP_SYS_RESOURCE, which not every machine's root has: then this shell's hard limit.
hard = min(524288, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
p["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": min(1024, hard), "hard": hard}]
# deploy/service.yaml's limits, as the kubelet sets them: cpu "1" is a CFS quota of one
# period, memory 256Mi the memory cgroup's limit.
res = c["linux"].setdefault("resources", {})
res["cpu"] = {"quota": 100000, "period": 100000}
res["memory"] = {"limit": 256 * 1024 * 1024}
c["root"] = {"path": rootfs, "readonly": True}  # one rootfs, shared by the bundles
c["hostname"] = "ringws"
lx = c["linux"]
ns = [n for n in lx["namespaces"] if n["type"] not in ("user", "network")]
lx["namespaces"] = ns + [{"type": "network", "path": netns}]
lx.pop("uidMappings", None)
lx.pop("gidMappings", None)
lx["seccomp"] = json.load(open(profile))
json.dump(c, open(path, "w"), indent=2)
EOF
}

passed=0
failed=0
skipped=0
n=0
scenario() { # name, profile file, RINGWS_IO, then wsclient.py pod-check arguments
  local name=$1 profile=$2 io=$3
  shift 3
  n=$((n + 1))
  local id=$tag-$n bundle=$work/$name
  make_bundle "$name" "$profile" "$io"
  containers+=("$id")
  echo "== $name: seccomp $(basename "$profile"), RINGWS_IO=$io (runc run $id)"
  # In the background and waited for, so a TERM from the outer timeout runs the trap at once;
  # --foreground keeps the client and runc in this process group, which that TERM reaches.
  timeout --foreground 60 nsenter --net="/run/netns/$netns" \
    "$py" "$here/wsclient.py" pod-check --log "$work/$name.log" --port 8080 \
    --ready-timeout 15 "$@" -- \
    runc run --bundle "$bundle" --pid-file "$bundle/pid" "$id" &
  if wait $!; then
    passed=$((passed + 1)); echo "== $name: PASS"
  else
    failed=$((failed + 1)); echo "== $name: FAIL"
  fi
  timeout 10 runc delete --force "$id" >/dev/null 2>&1 || true
}

runtime_default=$here/seccomp/containerd-runtime-default.json
iouring=$here/seccomp/ringws-iouring.json
proc_checks=(--expect-seccomp --expect-status Uid=65532 --expect-status Gid=65532
             --expect-status CapEff=0000000000000000 --expect-status NoNewPrivs=1
             --expect-ro-root)
serve() { # name, profile, RINGWS_IO, log text
  local name=$1 profile=$2 io=$3 log=$4
  local id=$tag-$((n + 1))
  scenario "$name" "$profile" "$io" --clients 8 --grace "$grace" "${proc_checks[@]}" \
    --expect-log "$log" --term-cmd "runc kill $id TERM" --pid-file "$work/$name/pid"
}

serve runtime-default "$runtime_default" auto \
  "io_uring unavailable, serving on epoll: io_uring_setup: EPERM: blocked by the seccomp profile"
scenario runtime-default-uring "$runtime_default" uring --expect-fail \
  --expect-log "io_uring_setup: EPERM: blocked by the seccomp profile"

if why=$("$py" "$here/seccomp/seccomp_exec.py" probe); then
  serve iouring "$iouring" uring "backend=io_uring"
  serve iouring-auto "$iouring" auto "io_uring is available; --io auto prefers epoll"
else
  echo "== iouring, iouring-auto: skipped ($why)"
  skipped=$((skipped + 2))
fi

echo "runc-local: $passed scenarios passed, $failed failed, $skipped skipped"
if [[ $failed -eq 0 ]]; then
  echo "PASS"
else
  echo "FAIL"
  exit 1
fi
