#!/usr/bin/env python3
"""Static checks of the deployment files: deploy/*.yaml, the seccomp profiles,
Dockerfile.distroless and .dockerignore, against each other and against the server's source.

    python3 tests/deploy_files.py                        run every check (exit 1 on any failure)
    python3 tests/deploy_files.py --print-build-command  print the build stage's cargo command,
                                                         for CI to run exactly what the image runs

Needs Python >= 3.11 (tomllib) and PyYAML:  python3 -m pip install pyyaml
(.ci/run must install it; everything else is the standard library.)

There is no container engine or cluster on the development machines, so these checks stand in
for `docker build` and `kubectl apply`: they parse the files and enforce the invariants that
deploy/README.md explains (where each number comes from). The last line is
"N passed, M failed".
"""

import copy
import fnmatch
import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile.distroless"
DOCKERIGNORE = ROOT / ".dockerignore"
SECCOMP = DEPLOY / "seccomp" / "ringws-iouring.json"
# containerd 2.x's RuntimeDefault, transcribed for x86_64 and no capabilities (deploy/README.md
# section 10); deploy/runc-local.sh runs the server under it.
RUNTIME_DEFAULT = DEPLOY / "seccomp" / "containerd-runtime-default.json"

# --- Knative facts (knative/serving: config/core/configmaps/*.yaml, pkg/apis/...) ---------
KN_DEFAULT_CC_MAX_LIMIT = 1000          # config-defaults container-concurrency-max-limit
KN_DEFAULT_MAX_REVISION_TIMEOUT = 600   # config-defaults max-revision-timeout-seconds
KN_DEFAULT_REVISION_TIMEOUT = 300       # config-defaults revision-timeout-seconds
KN_ACTIVATOR_GRACE = 600                # activator Deployment terminationGracePeriodSeconds
KN_WINDOW_MAX_S = 3600                  # autoscaling WindowMax: cap of scale-down-delay
KN_QP_DRAIN_SLEEP_S = 30                # queue-proxy drainSleepDuration (preStop /wait-for-drain)
KN_QP_HIJACK_DRAIN_S = 60               # queue-proxy hijackDrainDuration (WebSockets, >= 1.22)
KN_RESERVED_PORTS = {8008, 8012, 8013, 8022, 9090, 9091}
KN_RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
KPA = "kpa.autoscaling.knative.dev"
KN_DEFAULTS_KEYS = {
    "revision-timeout-seconds", "max-revision-timeout-seconds",
    "revision-response-start-timeout-seconds", "revision-idle-timeout-seconds",
    "revision-cpu-request", "revision-memory-request", "revision-ephemeral-storage-request",
    "revision-cpu-limit", "revision-memory-limit", "revision-ephemeral-storage-limit",
    "container-name-template", "init-container-name-template", "container-concurrency",
    "container-concurrency-max-limit", "allow-container-concurrency-zero",
    "enable-service-links",
}
KN_AUTOSCALER_KEYS = {
    "container-concurrency-target-percentage", "container-concurrency-target-default",
    "requests-per-second-target-default", "target-burst-capacity", "stable-window",
    "panic-window-percentage", "panic-threshold-percentage", "max-scale-up-rate",
    "max-scale-down-rate", "enable-scale-to-zero", "scale-to-zero-grace-period",
    "scale-to-zero-pod-retention-period", "pod-autoscaler-class", "activator-capacity",
    "initial-scale", "allow-zero-initial-scale", "min-scale", "max-scale",
    "scale-down-delay", "max-scale-limit",
}
IO_URING_SYSCALLS = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
# Syscalls RuntimeDefault grants only with a capability (CAP_SYS_ADMIN, CAP_SYS_MODULE, ...)
# or never: the base of the profile must not allow them unconditionally.
PRIVILEGED_SYSCALLS = {
    "mount", "umount", "umount2", "unshare", "setns", "bpf", "perf_event_open", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "keyctl",
    "add_key", "request_key", "open_by_handle_at", "pivot_root", "swapon", "swapoff", "acct",
    "quotactl", "chroot", "iopl", "ioperm", "settimeofday", "clock_settime", "syslog",
    "vhangup", "fsopen", "fsmount", "fsconfig", "move_mount", "open_tree", "lookup_dcookie",
    "userfaultfd", "clone", "clone3", "socket",
}
# What RuntimeDefault allows only on other architectures (containerd's arm/arm64 and riscv64
# rules); ringws-iouring.json lists them for arm64 nodes.
OTHER_ARCH_SYSCALLS = {"arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
                       "breakpoint", "cacheflush", "set_tls", "riscv_flush_icache",
                       "riscv_hwprobe"}
# What a tokio server cannot run without (a profile missing these would break the pod).
SERVER_SYSCALLS = {
    "read", "write", "readv", "writev", "close", "accept4", "bind", "listen", "setsockopt",
    "getsockopt", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "futex", "mmap",
    "munmap", "mprotect", "madvise", "rt_sigaction", "rt_sigprocmask", "sigaltstack",
    "prlimit64", "sched_getaffinity", "eventfd2", "exit", "exit_group", "set_robust_list",
    "rseq", "getrandom", "sendto", "recvfrom", "shutdown",
}
SECCOMP_ACTIONS = {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                   "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_TRACE", "SCMP_ACT_LOG",
                   "SCMP_ACT_NOTIFY"}


# ------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------

class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, cond, what, detail=""):
        if cond:
            self.passed += 1
            print("ok    " + what)
        else:
            self.failed += 1
            detail = str(detail)
            if len(detail) > 400:
                detail = detail[:400] + " ..."
            print("FAIL  " + what + (": " + detail if detail else ""))
        return bool(cond)

    def fail(self, what, detail=""):
        return self.check(False, what, detail)


C = Checks()


# ------------------------------------------------------------------------------------------
# Small parsers
# ------------------------------------------------------------------------------------------

_DUR = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def duration_s(text):
    """'30s', '1500ms', '10m', '1h', '1m30s' (humantime / Go subset) -> seconds, or None."""
    text = str(text).strip()
    pos, total = 0, 0.0
    for m in _DUR.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


def cpu_quantity(q):
    """Kubernetes CPU quantity -> CPUs (float), or None."""
    s = str(q).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", s)
    if not m:
        return None
    v = float(m.group(1))
    return v / 1000 if m.group(2) else v


def mem_quantity(q):
    """Kubernetes memory quantity -> bytes, or None."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q).strip())
    if not m:
        return None
    mult = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return float(m.group(1)) * mult


def is_int_string(v):
    return isinstance(v, str) and re.fullmatch(r"-?\d+", v) is not None


def is_float_string(v):
    if not isinstance(v, str):
        return False
    try:
        float(v)
        return True
    except ValueError:
        return False


def dig(obj, *path, default=None):
    for p in path:
        if isinstance(obj, dict) and p in obj:
            obj = obj[p]
        elif isinstance(obj, list) and isinstance(p, int) and -len(obj) <= p < len(obj):
            obj = obj[p]
        else:
            return default
    return obj


# ------------------------------------------------------------------------------------------
# Facts about the server, read from its source and manifest
# ------------------------------------------------------------------------------------------

def server_facts():
    import tomllib

    facts = {}
    with open(ROOT / "Cargo.toml", "rb") as f:
        facts["cargo"] = tomllib.load(f)
    pkg = facts["cargo"].get("package", {})
    facts["version"] = pkg.get("version")
    # The server binary: the package's default-run, else the binary named like the package.
    facts["bin"] = pkg.get("default-run") or pkg.get("name")
    src = "\n".join(p.read_text(errors="replace") for p in sorted((ROOT / "src").rglob("*.rs")))
    facts["src"] = src
    facts["env_vars"] = set(re.findall(r'env\s*=\s*"([A-Z][A-Z0-9_]*)"', src))
    m = re.search(r'env\s*=\s*"PORT"\s*,\s*default_value_t\s*=\s*(\d+)', src)
    facts["default_port"] = int(m.group(1)) if m else None
    m = re.search(r'env\s*=\s*"RINGWS_DRAIN_TIMEOUT"\s*,\s*default_value\s*=\s*"([^"]+)"', src)
    facts["default_drain"] = m.group(1) if m else None
    for var, key in (("RINGWS_CLOSE_TIMEOUT", "default_close"),
                     ("RINGWS_MAX_LIFETIME_JITTER", "default_jitter")):
        m = re.search(r'env\s*=\s*"%s"\s*,\s*default_value(?:_t)?\s*=\s*"?([^",)]+)"?' % var, src)
        facts[key] = m.group(1) if m else None
    m = re.search(r"enum\s+IoMode\s*\{(.*?)\}", src, re.S)
    facts["io_modes"] = ({v.lower() for v in re.findall(r"^\s*([A-Z][A-Za-z]*)\s*,", m.group(1), re.M)}
                         if m else set())
    return facts


def cargo_required_paths(cargo):
    """Paths `cargo build` needs to read, relative to the repository root."""
    need = {"Cargo.toml", "Cargo.lock"}
    pkg = cargo.get("package", {})
    lib = cargo.get("lib")
    need.add(lib.get("path", "src/lib.rs") if lib else "src")
    for b in cargo.get("bin", []) or [{}]:
        need.add(b.get("path", "src/main.rs"))
    for kind, folder in (("bench", "benches"), ("test", "tests"), ("example", "examples")):
        for t in cargo.get(kind, []):
            need.add(t.get("path", "%s/%s.rs" % (folder, t.get("name"))))
    build = pkg.get("build")
    if isinstance(build, str):
        need.add(build)
    elif build is None and (ROOT / "build.rs").exists():
        need.add("build.rs")

    def deps(table):
        for spec in (table or {}).values():
            if isinstance(spec, dict) and "path" in spec:
                need.add(spec["path"].rstrip("/"))

    for key in ("dependencies", "dev-dependencies", "build-dependencies"):
        deps(cargo.get(key))
    for target in (cargo.get("target") or {}).values():
        for key in ("dependencies", "dev-dependencies", "build-dependencies"):
            deps(target.get(key))
    for reg in (cargo.get("patch") or {}).values():
        deps(reg)
    for member in (cargo.get("workspace") or {}).get("members", []):
        if member != ".":  # the root package itself: its paths are listed above
            need.add(member)
    return {str(Path(p)) for p in need}


# ------------------------------------------------------------------------------------------
# YAML
# ------------------------------------------------------------------------------------------

def load_yaml_files():
    try:
        import yaml
    except ImportError:
        print("PyYAML is missing: python3 -m pip install pyyaml")
        sys.exit(2)
    docs = {}
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
    C.check(files, "deploy/ has YAML files", "none found")
    for p in files:
        rel = p.relative_to(ROOT)
        try:
            loaded = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
            C.check(loaded, "%s parses as YAML" % rel, "empty")
            docs[p.name] = loaded[0] if len(loaded) == 1 else loaded
        except yaml.YAMLError as e:
            C.fail("%s parses as YAML" % rel, e)
    return docs


def env_map(container):
    return {e.get("name"): e.get("value") for e in container.get("env", []) or []}


def check_service(name, svc, facts, seccomp_type, defaults_cm):
    p = "deploy/" + name
    C.check(svc.get("apiVersion") == "serving.knative.dev/v1" and svc.get("kind") == "Service",
            p + ": is a serving.knative.dev/v1 Service", (svc.get("apiVersion"), svc.get("kind")))
    top_ann = dig(svc, "metadata", "annotations", default={}) or {}
    C.check(not [k for k in top_ann if k.startswith("autoscaling.knative.dev/")],
            p + ": no autoscaling annotations on the Service itself (Knative rejects them there)")
    tmpl = dig(svc, "spec", "template", default={})
    spec = tmpl.get("spec", {})
    ann = dig(tmpl, "metadata", "annotations", default={}) or {}
    containers = spec.get("containers") or []
    if not C.check(len(containers) == 1, p + ": exactly one container", len(containers)):
        return None
    c = containers[0]
    env = env_map(c)

    # --- port -------------------------------------------------------------------------
    ports = c.get("ports") or []
    port = ports[0] if len(ports) == 1 else {}
    C.check(len(ports) == 1, p + ": exactly one container port", ports)
    C.check(port.get("name") == "http1", p + ": port named http1 (HTTP/1.1, WebSocket upgrades)",
            port.get("name"))
    C.check(port.get("containerPort") == facts["default_port"],
            p + ": containerPort = the server's default port %s" % facts["default_port"],
            port.get("containerPort"))
    C.check(port.get("containerPort") not in KN_RESERVED_PORTS,
            p + ": containerPort is not a Knative-reserved port")

    # --- env --------------------------------------------------------------------------
    C.check(not (set(env) & KN_RESERVED_ENV), p + ": sets no Knative-reserved env (PORT, K_*)",
            set(env) & KN_RESERVED_ENV)
    unknown = {k for k in env if k not in facts["env_vars"]}
    C.check(not unknown, p + ": every env var is one the server reads (src: env = \"...\")", unknown)
    C.check(all(isinstance(v, str) for v in env.values()), p + ": env values are strings")

    # --- probes -----------------------------------------------------------------------
    def probe_ok(kind, want):
        pr = c.get(kind) or {}
        path = dig(pr, "httpGet", "path")
        C.check(path == want, p + ": %s httpGet %s" % (kind, want), path)
        pport = dig(pr, "httpGet", "port")
        C.check(pport in (None, port.get("name"), port.get("containerPort")),
                p + ": %s port omitted or the container port" % kind, pport)
        return pr

    rp = probe_ok("readinessProbe", "/readyz")
    if not rp.get("periodSeconds"):
        C.check("timeoutSeconds" not in rp and "failureThreshold" not in rp,
                p + ": readinessProbe without periodSeconds has no timeoutSeconds/failureThreshold "
                "(Knative rejects them)")
    lp = probe_ok("livenessProbe", "/healthz")
    C.check(all(isinstance(lp.get(k), int) and lp.get(k) >= 1
                for k in ("periodSeconds", "timeoutSeconds", "failureThreshold")),
            p + ": livenessProbe period/timeout/failureThreshold are positive integers")

    # --- annotations ------------------------------------------------------------------
    A = "autoscaling.knative.dev/"
    required = ["class", "metric", "target", "target-utilization-percentage", "min-scale",
                "max-scale", "scale-down-delay", "target-burst-capacity"]
    missing = [k for k in required if A + k not in ann]
    C.check(not missing, p + ": autoscaling annotations present", missing)
    C.check(all(isinstance(v, str) for v in ann.values()), p + ": annotation values are strings")
    C.check(ann.get(A + "class") == KPA, p + ": class is the KPA", ann.get(A + "class"))
    C.check(ann.get(A + "metric") == "concurrency", p + ": metric is concurrency")
    target = ann.get(A + "target")
    C.check(is_float_string(target) and float(target) >= 0.01, p + ": target numeric >= 0.01", target)
    util = ann.get(A + "target-utilization-percentage")
    C.check(is_float_string(util) and 1 <= float(util) <= 100,
            p + ": target-utilization-percentage numeric in 1..100", util)
    mins, maxs = ann.get(A + "min-scale"), ann.get(A + "max-scale")
    ints = is_int_string(mins) and is_int_string(maxs)
    C.check(ints and int(mins) >= 0 and int(maxs) >= 0,
            p + ": min-scale and max-scale are integers >= 0", (mins, maxs))
    C.check(ints and (int(maxs) == 0 or int(maxs) >= int(mins)), p + ": max-scale >= min-scale")
    tbc = ann.get(A + "target-burst-capacity")
    C.check(is_float_string(tbc) and (float(tbc) >= 0 or float(tbc) == -1),
            p + ": target-burst-capacity numeric (>= 0 or -1)", tbc)
    sdd = duration_s(ann.get(A + "scale-down-delay", ""))
    C.check(sdd is not None and 0 <= sdd <= KN_WINDOW_MAX_S and sdd == int(sdd),
            p + ": scale-down-delay a duration of whole seconds <= 1h", ann.get(A + "scale-down-delay"))

    # --- concurrency and timeouts -----------------------------------------------------
    cc = spec.get("containerConcurrency")
    C.check(isinstance(cc, int) and 1 <= cc <= KN_DEFAULT_CC_MAX_LIMIT,
            p + ": containerConcurrency integer within Knative's default "
            "container-concurrency-max-limit (%d)" % KN_DEFAULT_CC_MAX_LIMIT, cc)
    patched_limit = dig(defaults_cm, "data", "container-concurrency-max-limit")
    if is_int_string(patched_limit):
        C.check(isinstance(cc, int) and cc <= int(patched_limit),
                p + ": containerConcurrency <= config-defaults.yaml container-concurrency-max-limit")
    C.check(is_float_string(target) and float(target) == cc,
            p + ": target annotation = containerConcurrency (C_pod)", (target, cc))
    C.check(env.get("RINGWS_MAX_CONNECTIONS") == str(cc),
            p + ": RINGWS_MAX_CONNECTIONS = containerConcurrency", env.get("RINGWS_MAX_CONNECTIONS"))
    to = spec.get("timeoutSeconds")
    C.check(isinstance(to, int) and 1 <= to <= KN_DEFAULT_MAX_REVISION_TIMEOUT,
            p + ": timeoutSeconds present, within Knative's default max-revision-timeout-seconds "
            "(%d)" % KN_DEFAULT_MAX_REVISION_TIMEOUT, to)
    C.check(sdd is not None and sdd == to, p + ": scale-down-delay = timeoutSeconds", (sdd, to))
    drain_txt = env.get("RINGWS_DRAIN_TIMEOUT", facts["default_drain"])
    drain = duration_s(drain_txt) if drain_txt else None
    C.check(drain is not None and drain <= KN_QP_HIJACK_DRAIN_S,
            p + ": drain timeout (%s) <= queue-proxy's %ds wait for hijacked connections"
            % (drain_txt, KN_QP_HIJACK_DRAIN_S))
    C.check(drain is not None and isinstance(to, int) and KN_QP_DRAIN_SLEEP_S + drain < to,
            p + ": queue-proxy drain (%ds) + drain timeout < terminationGracePeriodSeconds "
            "(= timeoutSeconds)" % KN_QP_DRAIN_SLEEP_S)
    # A socket's lifetime ends with Close 1001 before Knative cuts it at timeoutSeconds:
    # lifetime x (1 + jitter), + 2 s (a once-a-second check on a whole-second clock),
    # + the close handshake.
    life_txt = env.get("RINGWS_MAX_LIFETIME")
    life = duration_s(life_txt) if life_txt else None
    jitter = float(env.get("RINGWS_MAX_LIFETIME_JITTER", facts["default_jitter"] or "nan"))
    close = duration_s(env.get("RINGWS_CLOSE_TIMEOUT", facts["default_close"] or ""))
    C.check(life is not None and life > 0 and close is not None and isinstance(to, int)
            and life * (1 + jitter) + 2 + close < to,
            p + ": RINGWS_MAX_LIFETIME set, and lifetime x (1 + jitter) + 2 s + close timeout "
            "< timeoutSeconds", (life_txt, jitter, close, to))

    # --- resources <-> workers ---------------------------------------------------------
    res = c.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    C.check(all(k in d for d in (req, lim) for k in ("cpu", "memory")),
            p + ": resources requests and limits for cpu and memory", res)
    cpu_l, cpu_r = cpu_quantity(lim.get("cpu")), cpu_quantity(req.get("cpu"))
    C.check(cpu_l is not None and cpu_l >= 1 and cpu_l == int(cpu_l),
            p + ": cpu limit is a whole number of CPUs (thread per core)", lim.get("cpu"))
    C.check(cpu_r is not None and cpu_r == cpu_l, p + ": cpu request = cpu limit", (cpu_r, cpu_l))
    C.check(is_int_string(env.get("RINGWS_WORKERS")) and cpu_l is not None
            and int(env["RINGWS_WORKERS"]) == cpu_l,
            p + ": RINGWS_WORKERS = cpu limit", (env.get("RINGWS_WORKERS"), lim.get("cpu")))
    mem_l, mem_r = mem_quantity(lim.get("memory")), mem_quantity(req.get("memory"))
    C.check(mem_l is not None and mem_l == mem_r, p + ": memory request = memory limit")

    # --- security ---------------------------------------------------------------------
    sc = c.get("securityContext") or {}
    C.check(sc.get("runAsNonRoot") is True, p + ": runAsNonRoot: true")
    C.check(isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0,
            p + ": runAsUser numeric, not root", sc.get("runAsUser"))
    C.check(sc.get("allowPrivilegeEscalation") is False, p + ": allowPrivilegeEscalation: false")
    C.check(sc.get("readOnlyRootFilesystem") is True, p + ": readOnlyRootFilesystem: true")
    caps = sc.get("capabilities") or {}
    C.check(caps.get("drop") == ["ALL"] and not caps.get("add"),
            p + ": capabilities drop ALL, add none", caps)
    prof = sc.get("seccompProfile") or {}
    C.check(prof.get("type") == seccomp_type, p + ": seccompProfile %s" % seccomp_type, prof)
    if seccomp_type == "Localhost":
        lp_path = prof.get("localhostProfile", "")
        C.check((DEPLOY / "seccomp" / Path(lp_path).name).is_file() and lp_path == SECCOMP.name,
                p + ": localhostProfile is deploy/seccomp/%s" % SECCOMP.name, lp_path)

    # --- I/O backend ------------------------------------------------------------------
    io = env.get("RINGWS_IO")
    C.check(io in facts["io_modes"], p + ": RINGWS_IO is a server --io value %s"
            % sorted(facts["io_modes"]), io)

    # --- image ------------------------------------------------------------------------
    image = c.get("image", "")
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else None
    C.check(tag and tag != "latest", p + ": image has a tag that is not latest", image)
    C.check(tag == facts["version"] or "@sha256:" in image,
            p + ": image tag = Cargo.toml version %s" % facts["version"], image)
    return {"cc": cc, "timeout": to, "image": image, "io": io, "runAsUser": sc.get("runAsUser")}


def check_variant_matches(base, variant):
    """service-iouring.yaml = service.yaml except name, RINGWS_IO and seccompProfile."""
    def normalise(svc):
        s = copy.deepcopy(svc)
        s.get("metadata", {}).pop("name", None)
        c = dig(s, "spec", "template", "spec", "containers", 0, default={})
        c.get("securityContext", {}).pop("seccompProfile", None)
        c["env"] = [e for e in c.get("env", []) if e.get("name") != "RINGWS_IO"]
        return s
    a, b = normalise(base), normalise(variant)
    C.check(a == b, "deploy/service-iouring.yaml differs from service.yaml only in name, "
            "RINGWS_IO and seccompProfile", "other fields differ")


def check_operator_patches(docs, services):
    d = docs.get("config-defaults.yaml") or {}
    a = docs.get("config-autoscaler.yaml") or {}
    act = docs.get("activator-patch.yaml") or {}
    for fname, cm, name, keys in (("config-defaults.yaml", d, "config-defaults", KN_DEFAULTS_KEYS),
                                  ("config-autoscaler.yaml", a, "config-autoscaler",
                                   KN_AUTOSCALER_KEYS)):
        p = "deploy/" + fname
        C.check(cm.get("kind") == "ConfigMap" and dig(cm, "metadata", "name") == name
                and dig(cm, "metadata", "namespace") == "knative-serving",
                p + ": ConfigMap %s in knative-serving" % name)
        data = cm.get("data") or {}
        C.check(data and all(isinstance(v, str) for v in data.values()),
                p + ": data values are strings (ConfigMap)", data)
        C.check(set(data) <= keys, p + ": only known Knative keys", set(data) - keys)
    dd = d.get("data") or {}
    mrt = dd.get("max-revision-timeout-seconds", str(KN_DEFAULT_MAX_REVISION_TIMEOUT))
    rt = dd.get("revision-timeout-seconds", str(KN_DEFAULT_REVISION_TIMEOUT))
    C.check(is_int_string(mrt) and is_int_string(rt) and int(mrt) >= int(rt),
            "config-defaults: max-revision-timeout-seconds >= revision-timeout-seconds", (mrt, rt))
    C.check(is_int_string(mrt) and int(mrt) <= KN_WINDOW_MAX_S,
            "config-defaults: max-revision-timeout-seconds <= 1h, so scale-down-delay = "
            "timeoutSeconds stays possible", mrt)
    ccl = dd.get("container-concurrency-max-limit", str(KN_DEFAULT_CC_MAX_LIMIT))
    C.check(is_int_string(ccl) and int(ccl) > 1,
            "config-defaults: container-concurrency-max-limit integer > 1", ccl)
    for svc in services:
        if svc:
            C.check(is_int_string(mrt) and svc["timeout"] <= int(mrt),
                    "config-defaults: max-revision-timeout-seconds >= the Services' timeoutSeconds")
            break
    grace = dig(act, "spec", "template", "spec", "terminationGracePeriodSeconds")
    C.check(isinstance(grace, int) and is_int_string(mrt) and grace >= int(mrt),
            "activator-patch: terminationGracePeriodSeconds (%s) >= max-revision-timeout-seconds"
            % grace)
    if not act:
        C.fail("deploy/activator-patch.yaml present")
    ad = a.get("data") or {}
    sdd = duration_s(ad.get("scale-down-delay", "0s"))
    C.check(sdd is not None and sdd <= KN_WINDOW_MAX_S and is_int_string(rt) and sdd == int(rt),
            "config-autoscaler: scale-down-delay = revision-timeout-seconds (%ss)" % rt,
            ad.get("scale-down-delay"))
    tbc = ad.get("target-burst-capacity")
    C.check(tbc is None or (is_float_string(tbc) and (float(tbc) >= 0 or float(tbc) == -1)),
            "config-autoscaler: target-burst-capacity numeric", tbc)


# ------------------------------------------------------------------------------------------
# Seccomp profile
# ------------------------------------------------------------------------------------------

def check_seccomp():
    p = "deploy/seccomp/" + SECCOMP.name
    try:
        prof = json.loads(SECCOMP.read_text())
    except (OSError, json.JSONDecodeError) as e:
        C.fail(p + ": valid JSON", e)
        return
    C.check(True, p + ": valid JSON")
    C.check(prof.get("defaultAction") == "SCMP_ACT_ERRNO", p + ": denies by default (SCMP_ACT_ERRNO)")
    C.check(prof.get("architectures") and all(a.startswith("SCMP_ARCH_") for a in prof["architectures"]),
            p + ": architectures listed (the OCI form containerd and CRI-O both read)")
    rules = prof.get("syscalls") or []
    well_formed = all(isinstance(r.get("names"), list) and r["names"]
                      and all(isinstance(n, str) for n in r["names"])
                      and r.get("action") in SECCOMP_ACTIONS for r in rules)
    C.check(rules and well_formed, p + ": every rule has names and a known action")
    # The addition: rules naming only io_uring syscalls. The base: every other rule.
    added = [r for r in rules if set(r.get("names", [])) <= IO_URING_SYSCALLS]
    C.check(len(added) == 1, p + ": one rule for io_uring", len(added))
    if added:
        r = added[0]
        C.check(set(r["names"]) == IO_URING_SYSCALLS and len(r["names"]) == 3
                and r["action"] == "SCMP_ACT_ALLOW" and not r.get("args"),
                p + ": that rule allows exactly io_uring_setup, io_uring_enter, io_uring_register",
                r)
    base = [r for r in rules if r not in added]
    base_names = {n for r in base for n in r.get("names", [])}
    extra = sorted(n for n in base_names if n.startswith("io_uring"))
    C.check(not extra, p + ": the base (runtime default) names no io_uring syscall", extra)
    unconditional = {n for r in base if r.get("action") == "SCMP_ACT_ALLOW" and not r.get("args")
                     for n in r["names"]}
    C.check(not (unconditional & PRIVILEGED_SYSCALLS),
            p + ": the base grants none of the syscalls RuntimeDefault reserves to capabilities",
            sorted(unconditional & PRIVILEGED_SYSCALLS))
    allowed = {n for r in base if r.get("action") == "SCMP_ACT_ALLOW" for n in r["names"]}
    C.check(SERVER_SYSCALLS <= allowed, p + ": the base allows what a tokio server needs",
            sorted(SERVER_SYSCALLS - allowed))
    clone3 = [r for r in base if "clone3" in r["names"]]
    C.check(clone3 and clone3[0]["action"] == "SCMP_ACT_ERRNO" and clone3[0].get("errnoRet") == 38,
            p + ": clone3 fails with ENOSYS (38) so glibc falls back to clone, as in RuntimeDefault")
    clone = [r for r in base if "clone" in r["names"] and r.get("action") == "SCMP_ACT_ALLOW"]
    C.check(clone and all(r.get("args") for r in clone),
            p + ": clone allowed only without namespace flags (argument rule)")


def seccomp_grants(prof, action="SCMP_ACT_ALLOW"):
    """{(syscall, its argument conditions)} of the rules with `action`."""
    return {(n, json.dumps([{"valueTwo": 0, **a} for a in r.get("args") or []], sort_keys=True))
            for r in prof.get("syscalls") or [] if r.get("action") == action for n in r["names"]}


def check_runtime_default():
    p = "deploy/seccomp/" + RUNTIME_DEFAULT.name
    try:
        prof = json.loads(RUNTIME_DEFAULT.read_text())
    except (OSError, json.JSONDecodeError) as e:
        C.fail(p + ": valid JSON", e)
        return
    C.check(True, p + ": valid JSON")
    C.check(prof.get("defaultAction") == "SCMP_ACT_ERRNO", p + ": denies by default (SCMP_ACT_ERRNO)")
    C.check(prof.get("architectures") == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            p + ": containerd's architectures for amd64", prof.get("architectures"))
    rules = prof.get("syscalls") or []
    C.check(rules and all(isinstance(r.get("names"), list) and r["names"]
                          and r.get("action") in SECCOMP_ACTIONS for r in rules),
            p + ": every rule has names and a known action")
    names = {n for r in rules for n in r.get("names", [])}
    C.check(not names & IO_URING_SYSCALLS, p + ": names no io_uring syscall (RuntimeDefault "
            "denies them by its default action)", sorted(names & IO_URING_SYSCALLS))
    unconditional = {n for r in rules if r.get("action") == "SCMP_ACT_ALLOW" and not r.get("args")
                     for n in r["names"]}
    C.check(not (unconditional & PRIVILEGED_SYSCALLS),
            p + ": grants no capability-gated syscall (resolved for a container that drops ALL)",
            sorted(unconditional & PRIVILEGED_SYSCALLS))
    C.check(SERVER_SYSCALLS <= unconditional, p + ": allows what a tokio server needs",
            sorted(SERVER_SYSCALLS - unconditional))
    # ringws-iouring.json is RuntimeDefault plus io_uring: on x86_64, its base may grant
    # nothing that RuntimeDefault denies.
    try:
        iouring = json.loads(SECCOMP.read_text())
    except (OSError, json.JSONDecodeError):
        return
    wider = sorted(n for n, args in seccomp_grants(iouring) - seccomp_grants(prof)
                   if n not in IO_URING_SYSCALLS | OTHER_ARCH_SYSCALLS)
    C.check(not wider, "deploy/seccomp/%s: beyond io_uring, allows nothing %s denies on x86_64"
            % (SECCOMP.name, RUNTIME_DEFAULT.name), wider)
    errno_rules = {(n, r.get("errnoRet")) for r in rules if r.get("action") == "SCMP_ACT_ERRNO"
                   for n in r["names"]}
    errno_iouring = {(n, r.get("errnoRet")) for r in iouring.get("syscalls") or []
                     if r.get("action") == "SCMP_ACT_ERRNO" for n in r["names"]}
    C.check(errno_rules == errno_iouring, "deploy/seccomp/%s: the same errno rules as %s"
            % (SECCOMP.name, RUNTIME_DEFAULT.name), sorted(errno_rules ^ errno_iouring))


# ------------------------------------------------------------------------------------------
# Dockerfile
# ------------------------------------------------------------------------------------------

def dockerfile_instructions(text):
    """[(INSTRUCTION, argument text)] with comments dropped and continuations joined."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if cur and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        parts = cur.strip().split(None, 1)
        out.append((parts[0].upper(), parts[1] if len(parts) > 1 else ""))
        cur = ""
    if cur.strip():
        parts = cur.strip().split(None, 1)
        out.append((parts[0].upper(), parts[1] if len(parts) > 1 else ""))
    return out


def stages(instrs):
    st = []
    for ins, arg in instrs:
        if ins == "FROM":
            toks = arg.split()
            toks = [t for t in toks if not t.startswith("--platform")]
            name = toks[2] if len(toks) >= 3 and toks[1].lower() == "as" else None
            st.append({"image": toks[0], "name": name, "instrs": []})
        elif st:
            st[-1]["instrs"].append((ins, arg))
    return st


def image_tag(image):
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def cargo_commands(build_stage):
    """Every `cargo build ...` command of the stage's RUN lines, in order."""
    cmds = []
    for ins, arg in build_stage["instrs"]:
        if ins == "RUN":
            cmds += [" ".join(m.group(0).split()) for m in re.finditer(r"cargo build[^&;|\n]*", arg)]
    return cmds


def build_command(build_stage):
    cmds = cargo_commands(build_stage)
    return cmds[-1] if cmds else None


def dockerignore_patterns():
    if not DOCKERIGNORE.exists():
        return []
    pats = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(line)
    return pats


def ignored(path, patterns):
    """.dockerignore semantics, close enough: last matching pattern wins; a pattern matching a
    parent directory excludes its contents; leading '**/' matches at any depth."""
    path = path.strip("/")
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        pats = {pat}
        if pat.startswith("**/"):
            pats.add(pat[3:])
        hit = any(fnmatch.fnmatchcase(c, q) for c in candidates for q in pats)
        if not hit and pat.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(c.rsplit("/", 1)[-1], pat[3:]) for c in candidates)
        if hit:
            result = not neg
    return result


def check_dockerfile(facts, services):
    p = "Dockerfile.distroless"
    if not C.check(DOCKERFILE.exists(), p + " exists"):
        return
    st = stages(dockerfile_instructions(DOCKERFILE.read_text()))
    if not C.check(len(st) >= 2, p + ": multi-stage (build + runtime)", len(st)):
        return
    build, final = st[0], st[-1]
    for s in st:
        tag = image_tag(s["image"])
        C.check("@sha256:" in s["image"] or (tag and tag != "latest"),
                p + ": %s pinned (a tag other than latest, or a digest)" % s["image"])
    C.check(re.fullmatch(r"(docker\.io/(library/)?)?rust", build["image"].split(":")[0].split("@")[0])
            is not None, p + ": build stage on the official Rust image", build["image"])
    C.check(re.match(r"\d+\.\d+", image_tag(build["image"]) or "") is not None,
            p + ": Rust image pinned to a version", build["image"])
    C.check(build["name"] is not None, p + ": build stage is named")
    C.check(final["image"].split("@")[0].rsplit(":", 1)[0] in ("gcr.io/distroless/cc-debian12",
                                                                 "gcr.io/distroless/static-debian12"),
            p + ": runtime stage is distroless cc/static (Debian 12)", final["image"])
    if "cc-debian12" in final["image"]:
        C.check("bookworm" in build["image"],
                p + ": build on bookworm, the Debian release (glibc) of cc-debian12", build["image"])

    cmd = build_command(build)
    C.check(cmd and "--release" in cmd.split() and "--locked" in cmd.split(),
            p + ": build stage runs cargo build --release --locked", cmd)
    words = cmd.split() if cmd else []
    if "--bin" in words:
        i = words.index("--bin")
        C.check(i + 1 < len(words) and words[i + 1] == facts["bin"],
                p + ": builds the server binary %s" % facts["bin"], cmd)
    C.check(len(set(cargo_commands(build))) == 1,
            p + ": the dependency layer runs the same cargo command as the final build "
            "(else its cache is not reused)", cargo_commands(build))
    workdir = "/"
    copies, order = [], []
    cargo_runs = 0
    for ins, arg in build["instrs"]:
        if ins == "WORKDIR":
            workdir = arg.strip()
        elif ins == "COPY":
            toks = [t for t in shlex.split(arg) if not t.startswith("--")]
            copies.extend(toks[:-1])
            order.extend(("COPY", t) for t in toks[:-1])
        elif ins == "RUN" and "cargo build" in arg:
            cargo_runs += 1
            order.append(("BUILD", arg))
    first_build = next((i for i, o in enumerate(order) if o[0] == "BUILD"), None)
    src_copy = next((i for i, o in enumerate(order) if o == ("COPY", "src/") or o == ("COPY", "src")),
                    None)
    C.check(cargo_runs >= 2 and first_build is not None and src_copy is not None
            and first_build < src_copy,
            p + ": dependencies built in a layer before src/ is copied (cached separately)")

    norm = {c.rstrip("/") for c in copies}
    need = cargo_required_paths(facts["cargo"])
    uncovered = sorted(n for n in need
                       if not any(n == c or n.startswith(c + "/") or c == "." for c in norm))
    C.check(not uncovered, p + ": build stage COPYs every path cargo build reads", uncovered)
    missing = []
    for c in sorted(norm):
        f = ROOT / c
        if not f.exists() or (f.is_dir() and not any(x.is_file() for x in f.rglob("*"))):
            missing.append(c)
    C.check(not missing, p + ": every COPY source exists and is not empty (a fresh clone has "
            "no empty directories)", missing)
    pats = dockerignore_patterns()
    C.check(pats, ".dockerignore present")
    C.check(ignored("target", pats) and ignored(".git", pats),
            ".dockerignore keeps target/ and .git/ out of the context")
    blocked = sorted(c for c in norm | need if ignored(c, pats))
    C.check(not blocked, ".dockerignore excludes nothing the build stage COPYs", blocked)

    # --- runtime stage ----------------------------------------------------------------
    fi = final["instrs"]
    C.check(not [i for i, _ in fi if i in ("RUN", "SHELL")],
            p + ": runtime stage has no RUN/SHELL (distroless has no shell)")
    built = "%s/target/release/%s" % (workdir.rstrip("/"), facts["bin"])
    dest = None
    for ins, arg in fi:
        if ins == "COPY":
            toks = shlex.split(arg)
            frm = [t for t in toks if t.startswith("--from=")]
            rest = [t for t in toks if not t.startswith("--")]
            if frm and frm[0].split("=", 1)[1] in (build["name"], "0"):
                C.check(rest[:-1] == [built], p + ": copies the binary the build stage produces (%s)"
                        % built, rest[:-1])
                dest = rest[-1]
    C.check(dest is not None, p + ": runtime stage copies the binary from the build stage")
    users = [a.strip() for i, a in fi if i == "USER"]
    user = users[-1] if users else None
    uid = user.split(":")[0] if user else None
    C.check(uid is not None and uid.isdigit() and int(uid) != 0,
            p + ": USER numeric and not root (runAsNonRoot needs a numeric UID)", user)
    for svc in services:
        if svc and uid and uid.isdigit():
            C.check(svc["runAsUser"] == int(uid), p + ": USER = the Services' runAsUser",
                    (uid, svc["runAsUser"]))
            break
    exposes = [a.split()[0].split("/")[0] for i, a in fi if i == "EXPOSE"]
    C.check(exposes == [str(facts["default_port"])],
            p + ": EXPOSE %s (the server's default port)" % facts["default_port"], exposes)
    eps = [a for i, a in fi if i == "ENTRYPOINT"]
    ep = None
    if eps:
        try:
            ep = json.loads(eps[-1])
        except json.JSONDecodeError:
            ep = None
    C.check(isinstance(ep, list) and ep and all(isinstance(x, str) for x in ep),
            p + ": ENTRYPOINT in exec form (JSON array)", eps)
    if isinstance(ep, list) and ep and dest:
        target = dest if not dest.endswith("/") else dest + facts["bin"]
        C.check(ep[0] == target, p + ": ENTRYPOINT runs the copied binary %s" % target, ep[0])
    cmds = [a for i, a in fi if i == "CMD"]
    C.check(all(a.strip().startswith("[") for a in cmds), p + ": no shell-form CMD", cmds)


def check_scripts():
    for rel in ("deploy/wsclient.py", "deploy/seccomp/seccomp_exec.py"):
        try:
            compile((ROOT / rel).read_text(), rel, "exec")
            C.check(True, rel + " compiles")
        except (OSError, SyntaxError) as e:
            C.fail(rel + " compiles", e)
    for rel in ("deploy/pod-local.sh", "deploy/runc-local.sh"):
        sh = ROOT / rel
        C.check(sh.exists() and sh.stat().st_mode & 0o111, rel + " is executable")


def main(argv):
    if "--print-build-command" in argv:
        st = stages(dockerfile_instructions(DOCKERFILE.read_text()))
        cmd = build_command(st[0]) if st else None
        if not cmd:
            print("no cargo build command in the build stage of Dockerfile.distroless", file=sys.stderr)
            return 1
        print(cmd)
        return 0
    facts = server_facts()
    C.check(facts["default_port"] is not None, "src: the server's default port found (--port, env PORT)")
    for route in ("/readyz", "/healthz"):
        C.check('"%s"' % route in facts["src"], "src: the server routes %s (probe path)" % route)
    C.check(facts["io_modes"], "src: the server's --io values found (enum IoMode)")
    docs = load_yaml_files()
    defaults_cm = docs.get("config-defaults.yaml") or {}
    services = []
    for name, seccomp_type in (("service.yaml", "RuntimeDefault"),
                               ("service-iouring.yaml", "Localhost"),
                               ("chat-service.yaml", "RuntimeDefault")):
        if C.check(isinstance(docs.get(name), dict), "deploy/%s present (one document)" % name):
            services.append(check_service(name, docs[name], facts, seccomp_type, defaults_cm))
        else:
            services.append(None)
    if all(isinstance(docs.get(n), dict) for n in ("service.yaml", "service-iouring.yaml")):
        check_variant_matches(docs["service.yaml"], docs["service-iouring.yaml"])
        C.check(services[0] and services[0]["io"] == "auto",
                "deploy/service.yaml: RINGWS_IO auto (epoll fallback under RuntimeDefault)")
        C.check(services[1] and services[1]["io"] == "uring",
                "deploy/service-iouring.yaml: RINGWS_IO uring (fail loudly if io_uring is denied)")
    check_operator_patches(docs, services)
    check_seccomp()
    check_runtime_default()
    check_dockerfile(facts, services)
    check_scripts()
    print("%d passed, %d failed" % (C.passed, C.failed))
    return 1 if C.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
