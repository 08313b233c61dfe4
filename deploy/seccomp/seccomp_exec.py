#!/usr/bin/env python3
"""Run a command under a seccomp filter, as a container runtime would (Linux, standard
library only; the `profile` form uses the system's libseccomp through ctypes).

    seccomp_exec.py probe
        exit 0 if this process may use io_uring, 1 (printing the reason) if not
    seccomp_exec.py profile [--without-iouring] PROFILE.json -- CMD...
        load an OCI seccomp profile (defaultAction, architectures, syscalls[names, action,
        errnoRet, args]) the way runc does, then exec CMD. --without-iouring drops the rule
        that allows io_uring_*, leaving the runtime-default base of
        deploy/seccomp/ringws-iouring.json: what RuntimeDefault is on containerd >= 2.0.
    seccomp_exec.py deny-iouring -- CMD...
        fallback when libseccomp is missing: a hand-written BPF filter that only answers
        io_uring_setup/enter/register with EPERM (the part of RuntimeDefault that matters to
        ringws) and allows everything else.

The filter is installed with no_new_privs and survives exec and setuid, so
`seccomp_exec.py ... -- setpriv --reuid=65532 ... ringws` imitates a nonroot pod.
Used by deploy/pod-local.sh.
"""

import ctypes
import errno
import os
import struct
import sys

# Syscall numbers: io_uring came after the syscall tables were unified, so they are the same
# on x86_64 and aarch64.
IO_URING_SETUP, IO_URING_ENTER, IO_URING_REGISTER = 425, 426, 427

PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7

# classic BPF opcodes
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGT_K = 0x25
BPF_JGE_K = 0x35
BPF_RET_K = 0x06


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def deny_iouring_filter():
    """The BPF program: EPERM for syscall numbers 425..427 on x86_64/aarch64, allow the rest.

    seccomp_data: nr at offset 0, arch at offset 4. Jump offsets are relative to the next
    instruction.
    """
    prog = [
        (BPF_LD_W_ABS, 0, 0, 4),                     # 0: A = arch
        (BPF_JEQ_K, 2, 0, AUDIT_ARCH_X86_64),        # 1: -> 4
        (BPF_JEQ_K, 1, 0, AUDIT_ARCH_AARCH64),       # 2: -> 4
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),        # 3: other ABIs: not filtered
        (BPF_LD_W_ABS, 0, 0, 0),                     # 4: A = nr
        (BPF_JGE_K, 0, 2, IO_URING_SETUP),           # 5: nr < 425 -> 8
        (BPF_JGT_K, 1, 0, IO_URING_REGISTER),        # 6: nr > 427 -> 8
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),  # 7: io_uring_*: EPERM
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),        # 8
    ]
    return (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])


def install_deny_filter():
    libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "prctl(PR_SET_NO_NEW_PRIVS): " + os.strerror(e))
    filt = deny_iouring_filter()
    fprog = SockFprog(len(filt), filt)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "prctl(PR_SET_SECCOMP): " + os.strerror(e))


def probe():
    """Try io_uring_setup(1, &params) the way a server would; return None or the reason."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    fd = libc.syscall(ctypes.c_long(IO_URING_SETUP), ctypes.c_uint(1), params)
    if fd >= 0:
        os.close(fd)
        return None
    e = ctypes.get_errno()
    why = "io_uring_setup: %s (%s)" % (os.strerror(e), errno.errorcode.get(e, e))
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            why += "; kernel.io_uring_disabled = " + f.read().strip()
    except OSError:
        pass
    return why


# --- OCI profiles through libseccomp -------------------------------------------------------

SCMP_ARCH = {  # libseccomp arch tokens = AUDIT_ARCH_* values
    "SCMP_ARCH_X86_64": 0xC000003E, "SCMP_ARCH_X86": 0x40000003, "SCMP_ARCH_X32": 0x4000003E,
    "SCMP_ARCH_AARCH64": 0xC00000B7, "SCMP_ARCH_ARM": 0x40000028,
}
SCMP_CMP = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
            "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def scmp_action(name, errno_ret, default_errno):
    if name == "SCMP_ACT_ALLOW":
        return SECCOMP_RET_ALLOW
    if name == "SCMP_ACT_ERRNO":
        e = errno_ret if errno_ret is not None else (default_errno or errno.EPERM)
        return SECCOMP_RET_ERRNO | (e & 0xFFFF)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return 0x00000000
    if name == "SCMP_ACT_KILL_PROCESS":
        return 0x80000000
    if name == "SCMP_ACT_LOG":
        return 0x7FFC0000
    raise ValueError("unsupported action " + name)


def load_profile(path, without_iouring):
    """Build and load the filter like runc: unknown syscall names are skipped, each rule's
    args are ANDed, MASKED_EQ takes value as the mask and valueTwo as the datum."""
    import json
    import ctypes.util

    lib_name = ctypes.util.find_library("seccomp")
    if not lib_name:
        raise OSError(errno.ENOENT, "libseccomp not found")
    lib = ctypes.CDLL(lib_name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ScmpArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]

    with open(path) as f:
        prof = json.load(f)
    default_errno = prof.get("defaultErrnoRet")
    ctx = lib.seccomp_init(scmp_action(prof["defaultAction"], None, default_errno))
    if not ctx:
        raise OSError(errno.EINVAL, "seccomp_init failed")
    for arch in prof.get("architectures", []):
        rc = lib.seccomp_arch_add(ctx, SCMP_ARCH[arch])
        if rc not in (0, -errno.EEXIST):
            raise OSError(-rc, "seccomp_arch_add(%s)" % arch)
    skipped = []
    for rule in prof.get("syscalls", []):
        names = rule["names"]
        if without_iouring and set(names) <= {"io_uring_setup", "io_uring_enter",
                                               "io_uring_register"}:
            continue
        action = scmp_action(rule["action"], rule.get("errnoRet"), default_errno)
        args = rule.get("args") or []
        arr = (ScmpArgCmp * max(1, len(args)))(*[
            ScmpArgCmp(a["index"], SCMP_CMP[a["op"]], a.get("value", 0), a.get("valueTwo", 0))
            for a in args])
        for name in names:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                skipped.append(name)
                continue
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(args), arr)
            if rc < 0:
                raise OSError(-rc, "seccomp_rule_add(%s): %s" % (name, os.strerror(-rc)))
    rc = lib.seccomp_load(ctx)
    if rc < 0:
        raise OSError(-rc, "seccomp_load: " + os.strerror(-rc))
    return skipped


def main(argv):
    if len(argv) >= 1 and argv[0] == "profile":
        rest = argv[1:]
        without = "--without-iouring" in rest
        rest = [a for a in rest if a != "--without-iouring"]
        if "--" not in rest or rest.index("--") != 1 or len(rest) < 3:
            print("usage: seccomp_exec.py profile [--without-iouring] PROFILE.json -- CMD...",
                  file=sys.stderr)
            return 2
        skipped = load_profile(rest[0], without)
        if skipped and os.environ.get("SECCOMP_EXEC_VERBOSE"):
            print("seccomp_exec: unknown to this libseccomp, skipped: " + " ".join(skipped),
                  file=sys.stderr)
        os.execvp(rest[2], rest[2:])
    if len(argv) >= 1 and argv[0] == "probe":
        why = probe()
        if why:
            print("io_uring unavailable: " + why)
            return 1
        print("io_uring available")
        return 0
    if len(argv) >= 2 and argv[0] == "deny-iouring":
        cmd = argv[2:] if argv[1] == "--" else argv[1:]
        if not cmd:
            print("usage: seccomp_exec.py deny-iouring -- CMD [ARGS...]", file=sys.stderr)
            return 2
        install_deny_filter()
        os.execvp(cmd[0], cmd)
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
