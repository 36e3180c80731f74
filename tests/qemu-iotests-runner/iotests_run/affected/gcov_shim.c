/*
 * iotests-run --coverage-map: preloaded into every process of a run (LD_PRELOAD).
 *
 * gcov writes a program's counters when it exits, so a QEMU that a test kills with SIGKILL
 * (common.qemu's _cleanup_qemu does, unless told to wait) leaves none, and the coverage map
 * would say that the run never executed what that QEMU did. Two halves:
 *
 * - in a gcov-instrumented program (its __gcov_dump, or __gcov_exit, found at the address the
 *   runner read from the program's symbol table, IOTESTS_RUN_GCOV_DUMP="PATH=ADDR;..."): a
 *   handler for DUMP_SIGNAL wakes a thread that writes the counters and then an
 *   acknowledgement file "$GCOV_PREFIX.ack.PID";
 * - in every process: kill(PID, SIGKILL) first sends DUMP_SIGNAL to PID when PID handles it,
 *   waits (at most ten seconds) for the acknowledgement, then kills as asked.
 *
 * A program that is already exiting (a QEMU told to `quit`, killed by the test's clean-up while it
 * still writes its counters) is running gcov's exit dump: a dump from the thread beside it crashed
 * QEMU in gcov's writer, and 312 lost most counters of its QEMU that way. So once exit() has begun
 * the thread dumps no more, and this helper's destructor, which runs after the program's own
 * destructors (gcov's exit dump among them), acknowledges.
 *
 * Nothing else changes: the signal a test sends is still delivered, only later.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DUMP_SIGNAL (SIGRTMIN + 7)

static int wake[2] = { -1, -1 };
static void (*dump)(void);
static pthread_mutex_t dumping = PTHREAD_MUTEX_INITIALIZER;
static int exiting; /* under `dumping` */

static void on_dump_signal(int sig)
{
    char c = 1;
    (void)sig;
    if (write(wake[1], &c, 1) < 0) {
        /* nothing to do: the kill goes ahead after its wait */
    }
}

static void ack_path(char *path, size_t size, pid_t pid)
{
    const char *prefix = getenv("GCOV_PREFIX");
    snprintf(path, size, "%s.ack.%d", prefix ? prefix : "/tmp/iotests-run-gcov", (int)pid);
}

static void acknowledge(void)
{
    char path[PATH_MAX];
    ack_path(path, sizeof(path), getpid());
    int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd >= 0) {
        close(fd);
    }
}

static void *dumper(void *arg)
{
    char c;
    sigset_t mine;
    (void)arg;
    /* the only thread that takes DUMP_SIGNAL: no other thread's system call is interrupted by it */
    sigemptyset(&mine);
    sigaddset(&mine, DUMP_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &mine, NULL);
    while (read(wake[0], &c, 1) == 1) {
        pthread_mutex_lock(&dumping);
        if (!exiting) { /* else the destructor below acknowledges, once gcov's exit dump is written */
            dump();
            acknowledge();
        }
        pthread_mutex_unlock(&dumping);
    }
    return NULL;
}

/* exit() runs the functions registered with atexit in reverse order, the destructors of every
 * object (_dl_fini, registered by __libc_start_main before main) among them: the program's, gcov's
 * exit dump there, then ours. This one is registered at the start of main, so it runs before them.
 * The lock keeps a dump of the thread and gcov's exit dump apart: both writing at once crashed
 * QEMU (gcov's one file state; a test's SIGKILL right after `quit`). */
static void on_exit_begins(void)
{
    pthread_mutex_lock(&dumping);
    exiting = 1;
    pthread_mutex_unlock(&dumping);
}

typedef int (*main_function)(int, char **, char **);
static main_function program_main;

static int main_after_registering(int argc, char **argv, char **envp)
{
    if (dump) {
        atexit(on_exit_begins);
    }
    return program_main(argc, argv, envp);
}

int __libc_start_main(main_function main, int argc, char **argv, void (*init)(void), void (*fini)(void),
                      void (*rtld_fini)(void), void *stack_end)
{
    int (*real_start)(main_function, int, char **, void (*)(void), void (*)(void), void (*)(void), void *) =
        (int (*)(main_function, int, char **, void (*)(void), void (*)(void), void (*)(void), void *))
            dlsym(RTLD_NEXT, "__libc_start_main");
    program_main = main;
    return real_start(main_after_registering, argc, argv, init, fini, rtld_fini, stack_end);
}

__attribute__((destructor)) static void after_exit_dump(void)
{
    if (dump) {
        acknowledge();
    }
}

static int main_program(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    *(ElfW(Addr) *)data = info->dlpi_addr;
    return 1; /* the first object is the program itself */
}

static uintptr_t dump_address(void)
{
    char exe[PATH_MAX];
    const char *table = getenv("IOTESTS_RUN_GCOV_DUMP");
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (!table || n <= 0) {
        return 0;
    }
    exe[n] = '\0';
    size_t len = strlen(exe);
    for (const char *p = table; *p; ) {
        const char *end = strchr(p, ';');
        size_t item = end ? (size_t)(end - p) : strlen(p);
        if (item > len && strncmp(p, exe, len) == 0 && p[len] == '=') {
            return (uintptr_t)strtoull(p + len + 1, NULL, 16);
        }
        p += item + (end ? 1 : 0);
    }
    return 0;
}

__attribute__((constructor)) static void start(void)
{
    uintptr_t offset = dump_address();
    ElfW(Addr) base = 0;
    pthread_t thread;
    struct sigaction action;

    if (!offset || pipe2(wake, O_CLOEXEC) != 0) {
        return;
    }
    dl_iterate_phdr(main_program, &base);
    dump = (void (*)(void))(base + offset);
    memset(&action, 0, sizeof(action));
    action.sa_handler = on_dump_signal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, DUMP_SIGNAL);
    /* blocked here, before main(): every thread the program starts inherits it */
    pthread_sigmask(SIG_BLOCK, &blocked, NULL);
    sigaction(DUMP_SIGNAL, &action, NULL);
    if (pthread_create(&thread, NULL, dumper, NULL) == 0) {
        pthread_detach(thread);
    } else {
        signal(DUMP_SIGNAL, SIG_DFL);
    }
}

/* Whether PID catches DUMP_SIGNAL (SigCgt in /proc/PID/status). */
static int handles_dump_signal(pid_t pid)
{
    char path[64], line[256];
    int found = 0;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f) {
        return 0;
    }
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "SigCgt:", 7) == 0) {
            unsigned long long mask = strtoull(line + 7, NULL, 16);
            found = (mask >> (DUMP_SIGNAL - 1)) & 1;
            break;
        }
    }
    fclose(f);
    return found;
}

int kill(pid_t pid, int sig)
{
    static int (*real_kill)(pid_t, int);
    if (!real_kill) {
        real_kill = (int (*)(pid_t, int))dlsym(RTLD_NEXT, "kill");
    }
    if (sig == SIGKILL && pid > 0 && handles_dump_signal(pid)) {
        char path[PATH_MAX];
        ack_path(path, sizeof(path), pid);
        unlink(path);
        if (real_kill(pid, DUMP_SIGNAL) == 0) {
            struct timespec step = { 0, 10 * 1000 * 1000 };
            for (int i = 0; i < 1000 && access(path, F_OK) != 0; i++) {
                nanosleep(&step, NULL);
            }
        }
        unlink(path);
    }
    return real_kill(pid, sig);
}
