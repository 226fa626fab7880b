// What a partition worker gives up before it serves a guest: privileges, capabilities, system calls.

import CSandbox
import Glibc

/// The confinement of a partition worker, applied once its partition is set up (images and TAPs
/// open, the listening socket inherited) and before the first guest is accepted.
///
/// - `PR_SET_NO_NEW_PRIVS`, then every capability dropped (bounding, effective, permitted,
///   inheritable): a worker started as root keeps uid 0 but cannot use it.
/// - A seccomp filter: the system calls the data path makes are allowed; the ones that would
///   reach beyond the partition kill the worker (`killed`); everything else fails with EPERM, so
///   an unforeseen call on an error path is an error, not a crash. `open` is not allowed: images
///   added later and copy-file sources arrive as descriptors from the supervisor.
///
/// No namespaces: a PID namespace hides the guests' pids from SO_PEERCRED (status shows them),
/// and a mount namespace copies the host's mounts at start and keeps them busy (a file system
/// unmounted on the host stayed in use in a worker). The filter already keeps a worker from
/// files, mounts, other processes and new programs, which is what those namespaces would add.
public enum WorkerSandbox {
    /// System calls the worker uses after set-up (found with `strace -f -c` over the process tests).
    static let allowed = [
        // descriptors and I/O
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
        "close", "dup", "dup2", "dup3", "fcntl", "lseek", "fstat", "newfstatat", "statx", "ioctl",
        "fsync", "fdatasync", "fallocate", "ftruncate", "sync_file_range",
        // sockets already open (the link, the supervisor channel, control connections passed in)
        "sendmsg", "recvmsg", "sendto", "recvfrom", "accept", "accept4", "shutdown", "getsockopt", "setsockopt",
        "getsockname", "getpeername",
        // waiting and waking
        "poll", "ppoll", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd2", "futex",
        "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "sched_yield",
        // memory (guest memory of a new guest is a fresh sealed memfd)
        "mmap", "munmap", "mprotect", "mremap", "madvise", "brk", "memfd_create", "membarrier",
        // threads and the runtime
        "set_robust_list", "get_robust_list", "rseq", "prctl", "arch_prctl", "sched_getaffinity", "sched_setaffinity",
        "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getrandom", "uname", "sysinfo", "getrusage", "capget",
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall", "exit", "exit_group",
    ]

    /// System calls that have no business in a worker: making one kills it (SIGSYS).
    static let killed = [
        "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot",
        "unshare", "setns", "bpf", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
        "swapon", "swapoff", "userfaultfd", "perf_event_open", "keyctl", "add_key", "request_key", "iopl", "ioperm",
        "open_by_handle_at", "name_to_handle_at", "pidfd_getfd",
    ]

    /// Why confinement failed.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Confines the calling process.
    public static func apply() throws(Failure) {
        guard viridian_no_new_privs() == 0 else { throw Failure(description: "PR_SET_NO_NEW_PRIVS: \(String(cString: strerror(errno)))") }
        guard viridian_drop_capabilities() == 0 else { throw Failure(description: "dropping capabilities: \(String(cString: strerror(errno)))") }
        let rc = withCStrings(allowed) { allow in
            withCStrings(killed) { kill in
                viridian_seccomp_install(allow.baseAddress, Int32(allow.count), kill.baseAddress, Int32(kill.count), EPERM, getpid())
            }
        }
        guard rc == 0 else { throw Failure(description: "seccomp filter: \(String(cString: strerror(-rc)))") }
    }

    /// The capabilities the process holds now (0 once confined).
    public static var effectiveCapabilities: UInt64 { UInt64(viridian_effective_capabilities()) }

    private static func withCStrings<R>(_ strings: [String], _ body: (UnsafeBufferPointer<UnsafePointer<CChar>?>) -> R) -> R {
        let copies = strings.map { strdup($0) }
        defer { copies.forEach { free($0) } }
        let pointers = copies.map { UnsafePointer($0) }
        return pointers.withUnsafeBufferPointer(body)
    }
}
