/*
 * selftrain._sandbox: start a model-written program under confinement.
 *
 * The Python side (selftrain/sandbox.py) prepares the temporary directory, the argv and the
 * environment, then calls spawn().  spawn() forks with a raw clone() (no pthread_atfork handlers
 * from torch/OpenMP run, and no child ever touches Python objects or malloc) a supervisor, which
 * forks the program.  The supervisor (root side, never exec'd) is a child subreaper that kills the
 * program's process group and reaps every process of it (see supervisor_main).  The program
 * confines itself before execve():
 *
 *   setsid -> fds 0/1/2 = pipes, everything else closed -> signal dispositions/mask reset ->
 *   [root: private mount namespace that makes the interpreter's prefix reachable] ->
 *   rlimits -> [root: setgroups([]), setresgid, setresuid to the unprivileged uid] ->
 *   PR_SET_PDEATHSIG -> chdir(tmpdir) -> PR_SET_NO_NEW_PRIVS -> Landlock -> seccomp -> execve
 *
 * Every step's return value is checked.  On any failure the child writes a line to its stderr,
 * reports {step, errno} on a close-on-exec pipe and _exit(126)s, so nothing ever runs less
 * confined than asked; the parent turns the report into OSError.
 *
 * Linux only; seccomp needs x86_64 or aarch64 (other architectures get SECCOMP_SUPPORTED=False
 * and spawn() refuses).
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SECCOMP_RET_KILL_PROCESS
#define SECCOMP_RET_KILL_PROCESS 0x80000000U
#endif
#ifndef PR_SET_CHILD_SUBREAPER
#define PR_SET_CHILD_SUBREAPER 36
#endif
#ifndef PR_SET_NO_NEW_PRIVS
#define PR_SET_NO_NEW_PRIVS 38
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

/* ---- Landlock UAPI, spelled out here because distribution headers lag the kernel ---- */
struct sb_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net; /* ABI >= 4 */
    uint64_t scoped;             /* ABI >= 6 */
};
struct sb_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

#define LL_CREATE_RULESET_VERSION (1U << 0)
#define LL_RULE_PATH_BENEATH 1
#define LL_FS_WRITE_FILE (1ULL << 1)
#define LL_FS_REMOVE_DIR (1ULL << 4)
#define LL_FS_REMOVE_FILE (1ULL << 5)
#define LL_FS_MAKE_CHAR (1ULL << 6)
#define LL_FS_MAKE_DIR (1ULL << 7)
#define LL_FS_MAKE_REG (1ULL << 8)
#define LL_FS_MAKE_SOCK (1ULL << 9)
#define LL_FS_MAKE_FIFO (1ULL << 10)
#define LL_FS_MAKE_BLOCK (1ULL << 11)
#define LL_FS_MAKE_SYM (1ULL << 12)
#define LL_FS_REFER (1ULL << 13)    /* ABI 2 */
#define LL_FS_TRUNCATE (1ULL << 14) /* ABI 3 */
#define LL_NET_BIND_TCP (1ULL << 0)    /* ABI 4 */
#define LL_NET_CONNECT_TCP (1ULL << 1) /* ABI 4 */
#define LL_SCOPE_ABSTRACT_UNIX (1ULL << 0) /* ABI 6 */
#define LL_SCOPE_SIGNAL (1ULL << 1)        /* ABI 6 */

/* ---- seccomp: architecture of this build ---- */
#if defined(__x86_64__)
#define SB_AUDIT_ARCH AUDIT_ARCH_X86_64
#define SB_ARCH_NAME "x86_64"
#define SB_SECCOMP 1
#elif defined(__aarch64__) && defined(__AARCH64EL__)
#define SB_AUDIT_ARCH AUDIT_ARCH_AARCH64
#define SB_ARCH_NAME "aarch64"
#define SB_SECCOMP 1
#else
#define SB_SECCOMP 0
#define SB_ARCH_NAME "unsupported"
#endif

/* Child set-up steps, reported to the parent on failure (index into STEP_NAMES). */
enum {
    ST_SETSID, ST_FDS, ST_SIGNALS, ST_MOUNT_NS, ST_MOUNT_BIND, ST_MOUNT_TMPFS, ST_MKDIR,
    ST_MOUNT_MOVE, ST_RLIMIT_CPU, ST_RLIMIT_AS, ST_RLIMIT_FSIZE, ST_RLIMIT_NOFILE, ST_RLIMIT_NPROC,
    ST_RLIMIT_CORE, ST_SETGROUPS, ST_SETGID, ST_SETUID, ST_PDEATHSIG, ST_CHDIR, ST_NO_NEW_PRIVS,
    ST_LANDLOCK_RULESET, ST_LANDLOCK_RULE, ST_LANDLOCK_RESTRICT, ST_SECCOMP, ST_EXEC, ST_COUNT
};
static const char *const STEP_NAMES[ST_COUNT] = {
    "setsid", "fd setup", "signal reset", "unshare(CLONE_NEWNS)", "bind-mount interpreter prefix",
    "tmpfs over unreadable ancestor", "mkdir in tmpfs", "move interpreter mount",
    "setrlimit(RLIMIT_CPU)", "setrlimit(RLIMIT_AS)", "setrlimit(RLIMIT_FSIZE)",
    "setrlimit(RLIMIT_NOFILE)", "setrlimit(RLIMIT_NPROC)", "setrlimit(RLIMIT_CORE)", "setgroups",
    "setresgid", "setresuid", "prctl(PR_SET_PDEATHSIG)", "chdir(tmpdir)",
    "prctl(PR_SET_NO_NEW_PRIVS)", "landlock_create_ruleset", "landlock_add_rule",
    "landlock_restrict_self", "seccomp(SECCOMP_SET_MODE_FILTER)", "execve",
};

struct child_report {
    int32_t step;
    int32_t err;
};

/* Everything the child needs, prepared by the parent before clone(): the child only reads it. */
struct spawn_plan {
    char **argv;
    char **envp;
    const char *cwd;
    long uid, gid; /* -1: keep */
    long long cpu_soft, cpu_hard, as_bytes, fsize, nofile, nproc; /* -1: leave alone */
    int landlock;
    /* mount reveal (root only): blocked ancestor, interpreter prefix, staging dir; NULL = skip */
    const char *reveal_blocked, *reveal_prefix, *reveal_stage;
    /* "/a/b/c" components of reveal_prefix below reveal_blocked, to mkdir in the tmpfs */
    char **reveal_mkdirs;
    pid_t parent_pid;
    int fd_in, fd_out, fd_err, fd_report; /* child ends */
    int fd_status;                        /* supervisor -> parent */
};

#if SB_SECCOMP
/* Syscalls refused with EPERM: networking, leaving the process group (so the whole program can
 * be killed with one killpg), namespaces/mounts, and kernel interfaces that bypass or widen the
 * filter (io_uring runs socket ops outside seccomp's view; bpf, ptrace, keyrings, modules). */
static const int DENIED_SYSCALLS[] = {
    SYS_socket, SYS_connect, SYS_bind, SYS_listen, SYS_accept, SYS_accept4,
#ifdef SYS_socketcall
    SYS_socketcall,
#endif
    SYS_setsid, SYS_setpgid, SYS_unshare, SYS_setns, SYS_mount, SYS_umount2, SYS_pivot_root,
    SYS_chroot, SYS_ptrace, SYS_bpf, SYS_perf_event_open, SYS_keyctl, SYS_add_key,
    SYS_request_key, SYS_userfaultfd, SYS_kexec_load, SYS_init_module, SYS_finit_module,
    SYS_delete_module, SYS_reboot, SYS_swapon, SYS_swapoff, SYS_acct, SYS_quotactl,
    SYS_open_by_handle_at,
#ifdef SYS_kexec_file_load
    SYS_kexec_file_load,
#endif
#ifdef SYS_io_uring_setup
    SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register,
#else
    425, 426, 427,
#endif
#ifdef SYS_open_tree
    SYS_open_tree, SYS_move_mount, SYS_fsopen, SYS_fsconfig, SYS_fsmount, SYS_fspick,
#else
    428, 429, 430, 431, 432, 433,
#endif
#ifdef SYS_mount_setattr
    SYS_mount_setattr,
#else
    442,
#endif
};
#define N_DENIED ((int)(sizeof(DENIED_SYSCALLS) / sizeof(DENIED_SYSCALLS[0])))
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#define NS_CLONE_FLAGS                                                                        \
    (CLONE_NEWNS | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | \
     CLONE_NEWCGROUP | CLONE_NEWTIME)
#define RET_ERRNO(e) (SECCOMP_RET_ERRNO | ((e) & SECCOMP_RET_DATA))
/* 4 (arch) + 2 (x32) + 1 (nr) + 2 per denied + 2 (clone3) + 5 (clone) + 1 (allow) */
#define FILTER_MAX (16 + 2 * N_DENIED)
static struct sock_filter FILTER[FILTER_MAX];
static unsigned short FILTER_LEN = 0;

static void add_insn(struct sock_filter insn) { FILTER[FILTER_LEN++] = insn; }

/* Built once at import; read-only afterwards (the child only passes a pointer to the kernel). */
static void build_filter(void) {
    FILTER_LEN = 0;
    add_insn((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                          offsetof(struct seccomp_data, arch)));
    /* Another ABI (i386 via int 0x80, 32-bit arm) has other syscall numbers: kill it outright. */
    add_insn((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SB_AUDIT_ARCH, 1, 0));
    add_insn((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    add_insn((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                          offsetof(struct seccomp_data, nr)));
#if defined(__x86_64__)
    /* x32 syscalls share AUDIT_ARCH_X86_64 but set bit 30: refuse them all. */
    add_insn((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000U, 0, 1));
    add_insn((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, RET_ERRNO(EPERM)));
#endif
    for (int i = 0; i < N_DENIED; i++) {
        add_insn((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                                              (uint32_t)DENIED_SYSCALLS[i], 0, 1));
        add_insn((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, RET_ERRNO(EPERM)));
    }
    /* clone3 passes its flags in memory the filter cannot read: ENOSYS makes libc fall back to
     * clone(), whose flags (argument 0, low word on little-endian) are checked below. */
    add_insn((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1));
    add_insn((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, RET_ERRNO(ENOSYS)));
    add_insn((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 3));
    add_insn((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                          offsetof(struct seccomp_data, args[0])));
    add_insn((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, NS_CLONE_FLAGS, 0, 1));
    add_insn((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, RET_ERRNO(EPERM)));
    add_insn((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
}
#endif

/* ------------------------------------------------------------------------------------------ */
/* Child side: only raw syscalls and async-signal-safe calls from here until execve.           */

static size_t c_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        p += w;
        len -= (size_t)w;
    }
}

static void child_fail(const struct spawn_plan *plan, int report_fd, int step, int err)
    __attribute__((noreturn));
static void child_fail(const struct spawn_plan *plan, int report_fd, int step, int err) {
    (void)plan;
    struct child_report rep = {step, err};
    write_all(report_fd, &rep, sizeof rep);
    const char *prefix = "selftrain sandbox: confinement failed at ";
    write_all(2, prefix, c_strlen(prefix));
    write_all(2, STEP_NAMES[step], c_strlen(STEP_NAMES[step]));
    write_all(2, "; program not run\n", 18);
    _exit(126);
}

#define CHECK(cond, step)                                         \
    do {                                                          \
        if (!(cond)) child_fail(plan, report_fd, (step), errno);  \
    } while (0)

static int set_limit(int resource, long long soft, long long hard) {
    struct rlimit rl;
    rl.rlim_cur = (rlim_t)soft;
    rl.rlim_max = (rlim_t)hard;
    return setrlimit(resource, &rl);
}

static int landlock_confine(const struct spawn_plan *plan, int *failed_step) {
    int abi = (int)syscall(SYS_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
    if (abi < 1) {
        *failed_step = ST_LANDLOCK_RULESET;
        return -1;
    }
    uint64_t write_rights = LL_FS_WRITE_FILE | LL_FS_REMOVE_DIR | LL_FS_REMOVE_FILE |
                            LL_FS_MAKE_CHAR | LL_FS_MAKE_DIR | LL_FS_MAKE_REG | LL_FS_MAKE_SOCK |
                            LL_FS_MAKE_FIFO | LL_FS_MAKE_BLOCK | LL_FS_MAKE_SYM;
    uint64_t file_rights = LL_FS_WRITE_FILE; /* the only write right valid on a non-directory */
    if (abi >= 2) write_rights |= LL_FS_REFER;
    if (abi >= 3) {
        write_rights |= LL_FS_TRUNCATE;
        file_rights |= LL_FS_TRUNCATE;
    }
    /* Reads and execution are not handled, hence allowed everywhere DAC allows them. */
    struct sb_ruleset_attr attr = {write_rights, 0, 0};
    size_t attr_size = sizeof(uint64_t);
    if (abi >= 4) {
        attr.handled_access_net = LL_NET_BIND_TCP | LL_NET_CONNECT_TCP; /* no rule: no TCP */
        attr_size = 2 * sizeof(uint64_t);
    }
    if (abi >= 6) {
        attr.scoped = LL_SCOPE_ABSTRACT_UNIX | LL_SCOPE_SIGNAL;
        attr_size = sizeof attr;
    }
    int rs = (int)syscall(SYS_landlock_create_ruleset, &attr, attr_size, 0);
    if (rs < 0) {
        *failed_step = ST_LANDLOCK_RULESET;
        return -1;
    }
    const char *paths[2] = {plan->cwd, "/dev/null"};
    uint64_t rights[2] = {write_rights, file_rights};
    for (int i = 0; i < 2; i++) {
        int fd = open(paths[i], O_PATH | O_CLOEXEC);
        if (fd < 0) {
            *failed_step = ST_LANDLOCK_RULE;
            return -1;
        }
        struct sb_path_beneath_attr pb = {rights[i], fd};
        long r = syscall(SYS_landlock_add_rule, rs, LL_RULE_PATH_BENEATH, &pb, 0);
        int saved = errno;
        close(fd);
        if (r < 0) {
            errno = saved;
            *failed_step = ST_LANDLOCK_RULE;
            return -1;
        }
    }
    if (syscall(SYS_landlock_restrict_self, rs, 0) < 0) {
        *failed_step = ST_LANDLOCK_RESTRICT;
        return -1;
    }
    close(rs);
    return 0;
}

/* Make the interpreter usable by the unprivileged uid when one of its ancestors (e.g. /root,
 * mode 0700) is not searchable: in a private mount namespace, put an empty tmpfs over that
 * ancestor and move a bind mount of the interpreter's prefix back to the same path.  Paths stay
 * identical (rpaths, sys.prefix), and the rest of the ancestor is hidden from the program. */
static void reveal_prefix(const struct spawn_plan *plan, int report_fd) {
    CHECK(unshare(CLONE_NEWNS) == 0, ST_MOUNT_NS);
    CHECK(mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0, ST_MOUNT_NS);
    CHECK(mount(plan->reveal_prefix, plan->reveal_stage, NULL, MS_BIND | MS_REC, NULL) == 0,
          ST_MOUNT_BIND);
    CHECK(mount("tmpfs", plan->reveal_blocked, "tmpfs", MS_NOSUID | MS_NODEV,
                "mode=0755,size=64k") == 0,
          ST_MOUNT_TMPFS);
    for (char **d = plan->reveal_mkdirs; *d; d++) {
        CHECK(mkdir(*d, 0755) == 0 || errno == EEXIST, ST_MKDIR);
    }
    CHECK(mount(plan->reveal_stage, plan->reveal_prefix, NULL, MS_MOVE, NULL) == 0,
          ST_MOUNT_MOVE);
    /* Read-only: the program must not modify the interpreter even where DAC would allow it. */
    CHECK(mount(NULL, plan->reveal_prefix, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) == 0,
          ST_MOUNT_MOVE);
}

static void child_main(const struct spawn_plan *plan) __attribute__((noreturn));
static void child_main(const struct spawn_plan *plan) {
    int report_fd = plan->fd_report;

    /* Own session and process group: killpg() reaches every descendant (seccomp below stops
     * them from leaving it). */
    CHECK(setsid() >= 0, ST_SETSID);

    /* Move the four fds above 10 first so dup2 onto 0..3 cannot clobber one another. */
    int hi[4];
    int src[4] = {plan->fd_in, plan->fd_out, plan->fd_err, plan->fd_report};
    for (int i = 0; i < 4; i++) {
        hi[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 10);
        CHECK(hi[i] >= 0, ST_FDS);
    }
    report_fd = hi[3];
    for (int i = 0; i < 4; i++) CHECK(dup2(hi[i], i) == i, ST_FDS);
    report_fd = 3;
    CHECK(fcntl(3, F_SETFD, FD_CLOEXEC) == 0, ST_FDS); /* closes itself on successful exec */
    if (syscall(SYS_close_range, 4U, ~0U, 0U) != 0) {
        struct rlimit rl;
        CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0, ST_FDS);
        long top = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 1048576 ? 1048576
                                                                          : (long)rl.rlim_cur;
        for (long fd = 4; fd < top; fd++) close((int)fd);
    }

    /* Dispositions the parent ignores (Python ignores SIGPIPE, SIGXFSZ) survive execve: reset
     * every signal, then unblock them (the parent blocked all signals around clone()). */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        (void)sigaction(sig, &dfl, NULL); /* libc-reserved real-time signals answer EINVAL */
    }
    sigset_t empty;
    sigemptyset(&empty);
    CHECK(sigprocmask(SIG_SETMASK, &empty, NULL) == 0, ST_SIGNALS);

    if (plan->reveal_prefix) reveal_prefix(plan, report_fd);

    if (plan->cpu_soft >= 0) CHECK(set_limit(RLIMIT_CPU, plan->cpu_soft, plan->cpu_hard) == 0,
                                   ST_RLIMIT_CPU);
    if (plan->as_bytes >= 0) CHECK(set_limit(RLIMIT_AS, plan->as_bytes, plan->as_bytes) == 0,
                                   ST_RLIMIT_AS);
    if (plan->fsize >= 0) CHECK(set_limit(RLIMIT_FSIZE, plan->fsize, plan->fsize) == 0,
                                ST_RLIMIT_FSIZE);
    if (plan->nofile >= 0) CHECK(set_limit(RLIMIT_NOFILE, plan->nofile, plan->nofile) == 0,
                                 ST_RLIMIT_NOFILE);
    if (plan->nproc >= 0) CHECK(set_limit(RLIMIT_NPROC, plan->nproc, plan->nproc) == 0,
                                ST_RLIMIT_NPROC);
    CHECK(set_limit(RLIMIT_CORE, 0, 0) == 0, ST_RLIMIT_CORE);

    if (plan->uid >= 0) {
        /* Raw syscalls: they change only this (single-threaded) process, no libc broadcast. */
        CHECK(syscall(SYS_setgroups, 0, NULL) == 0, ST_SETGROUPS);
        CHECK(syscall(SYS_setresgid, (gid_t)plan->gid, (gid_t)plan->gid, (gid_t)plan->gid) == 0,
              ST_SETGID);
        CHECK(syscall(SYS_setresuid, (uid_t)plan->uid, (uid_t)plan->uid, (uid_t)plan->uid) == 0,
              ST_SETUID);
        errno = EPERM;
        CHECK(getuid() == (uid_t)plan->uid && geteuid() == (uid_t)plan->uid &&
                  getgid() == (gid_t)plan->gid && getegid() == (gid_t)plan->gid,
              ST_SETUID);
    }
    /* After the uid change (which clears it): die with the parent; and if the parent already
     * died before this point, do not run at all. */
    CHECK(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) == 0, ST_PDEATHSIG);
    errno = ESRCH;
    CHECK(getppid() == plan->parent_pid, ST_PDEATHSIG);

    CHECK(chdir(plan->cwd) == 0, ST_CHDIR);
    CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, ST_NO_NEW_PRIVS);

    if (plan->landlock) {
        int step = ST_LANDLOCK_RULESET;
        CHECK(landlock_confine(plan, &step) == 0, step);
    }

#if SB_SECCOMP
    struct sock_fprog prog = {FILTER_LEN, FILTER};
    CHECK(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0, ST_SECCOMP);
#else
    errno = ENOSYS;
    CHECK(0, ST_SECCOMP);
#endif

    execve(plan->argv[0], plan->argv, plan->envp);
    child_fail(plan, report_fd, ST_EXEC, errno);
}


/* Close every fd >= 3 except those in keep (sorted ascending, all >= 3). */
static int close_all_except(const int *keep, int n) {
    unsigned int lo = 3;
    for (int i = 0; i <= n; i++) {
        unsigned int hi = i < n ? (unsigned int)keep[i] : ~0U;
        if (hi > lo && syscall(SYS_close_range, lo, hi - 1, 0U) != 0) {
            if (errno != ENOSYS && errno != EINVAL) return -1;
            /* pre-5.9 kernel: close one by one up to the fd limit */
            struct rlimit rl;
            if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
            unsigned int top = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 1048576
                                   ? 1048576U : (unsigned int)rl.rlim_cur;
            for (unsigned int fd = lo; fd < hi && fd < top; fd++) close((int)fd);
        }
        if (i < n) lo = (unsigned int)keep[i] + 1;
    }
    return 0;
}

static void sort_ints(int *a, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && a[j - 1] > a[j]; j--) {
            int t = a[j];
            a[j] = a[j - 1];
            a[j - 1] = t;
        }
}

/* The supervisor: a root-side process (never exec'd, all signals blocked) between the caller
 * and the program.  It is a child subreaper, so every orphan of the program is re-parented to it
 * and reaped here (the init of a container often does not reap, and zombies of the sandbox uid
 * would keep counting against its RLIMIT_NPROC).  When the program's main process exits, or the
 * caller asks with SIGTERM (timeout, output flood), or the caller dies (PDEATHSIG = SIGTERM), it
 * SIGKILLs the program's process group while the leader is still unreaped (so the pgid cannot
 * have been reused), reaps everything until no child is left, reports the leader's wait status
 * on the status pipe and exits.  So: supervisor gone => no process of the program is left. */
static void supervisor_main(struct spawn_plan *plan) __attribute__((noreturn));
static void supervisor_main(struct spawn_plan *plan) {
    int32_t msg[2];
    int keep[5] = {plan->fd_in, plan->fd_out, plan->fd_err, plan->fd_report, plan->fd_status};
    sort_ints(keep, 5);
    /* Drop the caller's other fds, notably other concurrent runs' pipe ends. */
    if (close_all_except(keep, 5) != 0) goto fail;
    if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) != 0) goto fail;
    if (getppid() != plan->parent_pid) { /* caller already gone: start nothing */
        errno = ESRCH;
        goto fail;
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) goto fail;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK); /* signals stay blocked */
    if (sfd < 0) goto fail;

    plan->parent_pid = getpid();
    pid_t prog = (pid_t)syscall(SYS_clone, (unsigned long)SIGCHLD, NULL, NULL, NULL, NULL);
    if (prog == 0) child_main(plan);
    if (prog < 0) goto fail;
    close(plan->fd_in);
    close(plan->fd_out);
    close(plan->fd_err);
    close(plan->fd_report);
    msg[0] = prog;
    write_all(plan->fd_status, msg, sizeof msg[0]);

    int prog_done = 0, prog_status = 0, group_killed = 0;
    for (;;) {
        for (;;) { /* collect everything that has exited */
            siginfo_t si;
            memset(&si, 0, sizeof si);
            if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0) {
                if (errno == EINTR) continue;
                goto finished; /* ECHILD: nothing of the program is left */
            }
            if (si.si_pid == 0) break;
            if (si.si_pid == prog && !group_killed) {
                kill(-prog, SIGKILL); /* the leader is a zombie: pgid still ours */
                group_killed = 1;
            }
            int st = 0;
            while (waitpid(si.si_pid, &st, 0) < 0 && errno == EINTR) {
            }
            if (si.si_pid == prog) {
                prog_done = 1;
                prog_status = st;
            }
        }
        struct pollfd pfd = {sfd, POLLIN, 0};
        /* The timeout also covers exits whose SIGCHLD was coalesced with an earlier one. */
        (void)poll(&pfd, 1, 50);
        struct signalfd_siginfo info;
        while (read(sfd, &info, sizeof info) == (ssize_t)sizeof info) {
            if (info.ssi_signo == SIGTERM && !group_killed) {
                kill(-prog, SIGKILL); /* leader not reaped yet (group_killed == 0) */
                group_killed = 1;
            }
        }
    }
finished:
    msg[0] = prog_status;
    msg[1] = prog_done;
    write_all(plan->fd_status, msg, sizeof msg);
    _exit(0);
fail:
    msg[0] = -errno;
    write_all(plan->fd_status, msg, sizeof msg[0]);
    _exit(1);
}

/* ------------------------------------------------------------------------------------------ */
/* Parent side.                                                                                */

/* NULL-terminated array of char* borrowed from a list of bytes (list kept alive by caller). */
static char **bytes_list_to_array(PyObject *seq, const char *what) {
    if (!PyList_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of bytes", what);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(seq);
    char **arr = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (!arr) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            PyMem_Free(arr);
            PyErr_Format(PyExc_TypeError, "%s[%zd] must be bytes", what, i);
            return NULL;
        }
        if ((Py_ssize_t)strlen(PyBytes_AS_STRING(item)) != PyBytes_GET_SIZE(item)) {
            PyMem_Free(arr);
            PyErr_Format(PyExc_ValueError, "%s[%zd] contains a NUL byte", what, i);
            return NULL;
        }
        arr[i] = PyBytes_AS_STRING(item);
    }
    arr[n] = NULL;
    return arr;
}

static void close_quiet(int fd) {
    if (fd >= 0) close(fd);
}

PyDoc_STRVAR(spawn_doc,
"spawn(argv, envp, cwd, uid, gid, cpu_soft, cpu_hard, as_bytes, fsize, nofile, nproc,\n"
"      landlock, reveal) -> (supervisor_pid, program_pid, stdin_w, stdout_r, stderr_r, status_r)\n\n"
"Start argv[0] (an absolute path) confined as described in the module docstring, under a\n"
"supervisor process.  argv and envp are lists of bytes, cwd bytes (must exist and be writable\n"
"by uid).  uid/gid -1 keep the caller's ids; a limit of -1 is left unchanged.  reveal is None\n"
"or a tuple (blocked_ancestor, prefix, staging_dir, [dirs to create]) of bytes (root only).\n"
"The fds are the caller's pipe ends (close-on-exec).  The program leads its own process group\n"
"(pgid == program_pid).  SIGTERM to the supervisor kills the whole group; the supervisor exits\n"
"once no process of the program is left, after writing two int32 (the program's wait status,\n"
"1 if it was collected) to status_r.  Raises OSError (errno of the failed step) if confinement\n"
"or exec failed; nothing is left running then.");

static PyObject *sb_spawn(PyObject *self, PyObject *args) {
    PyObject *argv_o, *envp_o, *reveal_o;
    const char *cwd;
    long uid, gid;
    long long cpu_soft, cpu_hard, as_bytes, fsize, nofile, nproc;
    int landlock;
    if (!PyArg_ParseTuple(args, "O!O!yllLLLLLLpO:spawn", &PyList_Type, &argv_o, &PyList_Type,
                          &envp_o, &cwd, &uid, &gid, &cpu_soft, &cpu_hard, &as_bytes, &fsize,
                          &nofile, &nproc, &landlock, &reveal_o))
        return NULL;
#if !SB_SECCOMP
    PyErr_SetString(PyExc_OSError, "selftrain sandbox: seccomp filter not available on this "
                                   "architecture (only x86_64 and aarch64); refusing to run");
    return NULL;
#endif
    if (PyList_GET_SIZE(argv_o) < 1) {
        PyErr_SetString(PyExc_ValueError, "argv must not be empty");
        return NULL;
    }
    struct spawn_plan plan;
    memset(&plan, 0, sizeof plan);
    plan.cwd = cwd;
    plan.uid = uid;
    plan.gid = gid;
    plan.cpu_soft = cpu_soft;
    plan.cpu_hard = cpu_hard;
    plan.as_bytes = as_bytes;
    plan.fsize = fsize;
    plan.nofile = nofile;
    plan.nproc = nproc;
    plan.landlock = landlock;
    PyObject *mkdirs_o = NULL;
    if (reveal_o != Py_None) {
        if (!PyArg_ParseTuple(reveal_o, "yyyO!:reveal", &plan.reveal_blocked,
                              &plan.reveal_prefix, &plan.reveal_stage, &PyList_Type, &mkdirs_o))
            return NULL;
    }
    plan.argv = bytes_list_to_array(argv_o, "argv");
    if (!plan.argv) return NULL;
    plan.envp = bytes_list_to_array(envp_o, "envp");
    if (!plan.envp) {
        PyMem_Free(plan.argv);
        return NULL;
    }
    if (mkdirs_o) {
        plan.reveal_mkdirs = bytes_list_to_array(mkdirs_o, "reveal dirs");
        if (!plan.reveal_mkdirs) {
            PyMem_Free(plan.argv);
            PyMem_Free(plan.envp);
            return NULL;
        }
    }
    plan.parent_pid = getpid();

    int p_in[2] = {-1, -1}, p_out[2] = {-1, -1}, p_err[2] = {-1, -1}, p_rep[2] = {-1, -1},
        p_stat[2] = {-1, -1};
    PyObject *result = NULL;
    long sup = -1;
    if (pipe2(p_in, O_CLOEXEC) || pipe2(p_out, O_CLOEXEC) || pipe2(p_err, O_CLOEXEC) ||
        pipe2(p_rep, O_CLOEXEC) || pipe2(p_stat, O_CLOEXEC)) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    plan.fd_in = p_in[0];
    plan.fd_out = p_out[1];
    plan.fd_err = p_err[1];
    plan.fd_report = p_rep[1];
    plan.fd_status = p_stat[1];

    /* Block every signal around clone(): the supervisor keeps them blocked (it reads SIGCHLD and
     * SIGTERM through a signalfd), the program resets dispositions and mask before exec, so no
     * Python-level handler ever runs in either. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    sup = syscall(SYS_clone, (unsigned long)SIGCHLD, NULL, NULL, NULL, NULL);
    if (sup == 0) supervisor_main(&plan); /* never returns */
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (sup < 0) {
        errno = clone_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    close(p_in[0]);
    close(p_out[1]);
    close(p_err[1]);
    close(p_rep[1]);
    close(p_stat[1]);
    p_in[0] = p_out[1] = p_err[1] = p_rep[1] = p_stat[1] = -1;

    /* EOF on the report pipe: the program exec'd (close-on-exec) or failed (report first). */
    struct child_report rep;
    size_t got = 0;
    int32_t prog = 0;
    size_t got_prog = 0;
    ssize_t r;
    Py_BEGIN_ALLOW_THREADS
    while (got < sizeof rep) {
        r = read(p_rep[0], (char *)&rep + got, sizeof rep - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    while (got_prog < sizeof prog) {
        r = read(p_stat[0], (char *)&prog + got_prog, sizeof prog - got_prog);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got_prog += (size_t)r;
    }
    Py_END_ALLOW_THREADS
    close(p_rep[0]);
    p_rep[0] = -1;
    if (got == 0 && got_prog == sizeof prog && prog > 0) {
        result = Py_BuildValue("(llllll)", sup, (long)prog, (long)p_in[1], (long)p_out[0],
                               (long)p_err[0], (long)p_stat[0]);
        if (result) {
            PyMem_Free(plan.argv);
            PyMem_Free(plan.envp);
            PyMem_Free(plan.reveal_mkdirs);
            return result;
        }
    }
    /* Failure: the supervisor ends by itself once the program is gone; reap it. */
    kill((pid_t)sup, SIGTERM);
    {
        int status;
        Py_BEGIN_ALLOW_THREADS
        while (waitpid((pid_t)sup, &status, 0) < 0 && errno == EINTR) {
        }
        Py_END_ALLOW_THREADS
    }
    if (PyErr_Occurred()) {
        /* keep the Python error (Py_BuildValue failed) */
    } else if (got == sizeof rep && rep.step >= 0 && rep.step < ST_COUNT) {
        /* OSError(errno, message): callers see .errno of the failed step. */
        PyObject *msg = PyUnicode_FromFormat("selftrain sandbox: confinement failed at %s: %s",
                                             STEP_NAMES[rep.step], strerror(rep.err));
        PyObject *exc = msg ? PyObject_CallFunction(PyExc_OSError, "iO", (int)rep.err, msg)
                            : NULL;
        Py_XDECREF(msg);
        if (exc) {
            PyErr_SetObject(PyExc_OSError, exc);
            Py_DECREF(exc);
        }
    } else if (got_prog == sizeof prog && prog < 0) {
        PyErr_Format(PyExc_OSError, "selftrain sandbox: supervisor set-up failed: %s",
                     strerror(-prog));
    } else {
        PyErr_SetString(PyExc_OSError, "selftrain sandbox: program ended before exec without a "
                                       "report");
    }
fail:
    close_quiet(p_in[1]);
    close_quiet(p_out[0]);
    close_quiet(p_err[0]);
    close_quiet(p_stat[0]);
    close_quiet(p_in[0]);
    close_quiet(p_out[1]);
    close_quiet(p_err[1]);
    close_quiet(p_rep[0]);
    close_quiet(p_rep[1]);
    close_quiet(p_stat[1]);
    PyMem_Free(plan.argv);
    PyMem_Free(plan.envp);
    PyMem_Free(plan.reveal_mkdirs);
    return NULL;
}

PyDoc_STRVAR(landlock_abi_doc,
"landlock_abi() -> int\n\nThe kernel's Landlock ABI version, or 0 if Landlock is missing or "
"disabled.");

static PyObject *sb_landlock_abi(PyObject *self, PyObject *unused) {
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
    return PyLong_FromLong(abi < 0 ? 0 : abi);
}

PyDoc_STRVAR(kill_uid_doc,
"kill_uid(uid) -> int\n\nSIGKILL every process running as uid (root only): a helper process\n"
"takes that uid and calls kill(-1, SIGKILL) until nothing is left (at most 50 rounds).\n"
"Returns the number of rounds that hit something.  uid must not be 0.");

static PyObject *sb_kill_uid(PyObject *self, PyObject *args) {
    long uid;
    if (!PyArg_ParseTuple(args, "l:kill_uid", &uid)) return NULL;
    if (uid <= 0 || uid >= 4294967295L) {
        PyErr_SetString(PyExc_ValueError, "kill_uid: uid must be an unprivileged uid (> 0)");
        return NULL;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    long pid = syscall(SYS_clone, (unsigned long)SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid == 0) {
        if (syscall(SYS_setgroups, 0, NULL) != 0 ||
            syscall(SYS_setresgid, (gid_t)uid, (gid_t)uid, (gid_t)uid) != 0 ||
            syscall(SYS_setresuid, (uid_t)uid, (uid_t)uid, (uid_t)uid) != 0)
            _exit(255);
        int hits = 0;
        for (int round = 0; round < 50; round++) {
            if (kill(-1, SIGKILL) != 0) break; /* ESRCH: nothing left to signal */
            hits++;
            sched_yield();
        }
        _exit(hits);
    }
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int status = 0;
    pid_t w;
    Py_BEGIN_ALLOW_THREADS
    while ((w = waitpid((pid_t)pid, &status, 0)) < 0 && errno == EINTR) {
    }
    Py_END_ALLOW_THREADS
    if (w < 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (!WIFEXITED(status) || WEXITSTATUS(status) == 255) {
        PyErr_SetString(PyExc_OSError, "kill_uid: helper could not switch to the uid");
        return NULL;
    }
    return PyLong_FromLong(WEXITSTATUS(status));
}

static PyMethodDef methods[] = {
    {"spawn", sb_spawn, METH_VARARGS, spawn_doc},
    {"landlock_abi", sb_landlock_abi, METH_NOARGS, landlock_abi_doc},
    {"kill_uid", sb_kill_uid, METH_VARARGS, kill_uid_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_sandbox",
    "Native confinement for selftrain.sandbox (fork/exec with rlimits, uid drop, Landlock, "
    "seccomp).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__sandbox(void) {
#if SB_SECCOMP
    build_filter();
#endif
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (PyModule_AddStringConstant(m, "ARCH", SB_ARCH_NAME) < 0 ||
        PyModule_AddObject(m, "SECCOMP_SUPPORTED", PyBool_FromLong(SB_SECCOMP)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
