/*
 * qemu_insn_plugin.c - exact guest instruction counter for QEMU 7.2 (TCG plugin)
 *
 * Build (host shared object, no QEMU headers needed):
 *   gcc -shared -fPIC -O2 -Wall -Wextra -o libinsn.so qemu_insn_plugin.c
 *
 * Use (QEMU 7.2 takes plain key=value plugin arguments):
 *   qemu-system-arm ... -plugin ./libinsn.so,mark=0x<addr>,out=/path/counts.txt
 *
 * Arguments:
 *   mark=<hex addr>  guest address of a function; bit 0 (Thumb bit, as shown
 *                    by `nm`) is cleared. Every time the instruction at that
 *                    address executes, one line with the current instruction
 *                    count (decimal) is appended to the out file and flushed.
 *   out=<path>       text file to append to (opened in append mode).
 *                    Without out=, lines go to stderr.
 *   QEMU 7.2 also still accepts the deprecated `arg=mark=...` form (it warns
 *   and strips the "arg=" itself); a leftover "arg=" prefix is ignored here.
 *
 * Counting: every guest instruction gets its own inline ADD_U64(+1) on a
 * global counter, so the count stays exact even when a TB is left early
 * (exception, fault, semihosting trap). An instruction that faults is still
 * counted (its inline add runs before the instruction's own code).
 * QEMU 7.2 emits an instruction's exec callbacks before its inline ops, so
 * the value printed at the mark counts all instructions executed *before*
 * the mark instruction, not the mark instruction itself.
 * At exit (incl. semihosting SYS_EXIT and SIGTERM/SIGINT) a line
 * "total <count>" is appended.
 *
 * Single-vCPU use (e.g. mps2-an500): the counter is a plain global; with
 * several vCPUs the inline adds would race (counts would be approximate).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>

/* ---- Minimal declarations mirroring QEMU 7.2's include/qemu/qemu-plugin.h
 *      (plugin API version 1). Functions are resolved from the QEMU binary
 *      at dlopen time. ---- */
#define PLUGIN_EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;

typedef struct {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system;
    };
} qemu_info_t;

struct qemu_plugin_tb;
struct qemu_plugin_insn;

enum qemu_plugin_cb_flags {
    QEMU_PLUGIN_CB_NO_REGS,
    QEMU_PLUGIN_CB_R_REGS,
    QEMU_PLUGIN_CB_RW_REGS,
};

enum qemu_plugin_op {
    QEMU_PLUGIN_INLINE_ADD_U64,
};

typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index,
                                            void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id,
                                               struct qemu_plugin_tb *tb);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                           qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags,
                                            void *userdata);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn,
                                                enum qemu_plugin_op op,
                                                void *ptr, uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id,
                                    qemu_plugin_udata_cb_t cb,
                                    void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb,
                                                 size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);

/* QEMU_PLUGIN_VERSION of QEMU 7.2 */
PLUGIN_EXPORT int qemu_plugin_version = 1;
PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                      const qemu_info_t *info,
                                      int argc, char **argv);

/* ---- plugin state ---- */
static uint64_t insn_count;        /* target of the inline adds */
static uint64_t mark_addr;
static bool have_mark;
static FILE *out_fp;

static void emit_line(const char *prefix)
{
    FILE *fp = out_fp ? out_fp : stderr;
    fprintf(fp, "%s%" PRIu64 "\n", prefix, insn_count);
    fflush(fp);
}

static void mark_exec(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    emit_line("");
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    (void)id;

    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);

        /* QEMU 7.2 runs exec callbacks before inline ops of the same insn
         * (whatever the registration order), so the reported value excludes
         * the mark instruction itself. */
        if (have_mark && qemu_plugin_insn_vaddr(insn) == mark_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, mark_exec,
                                                   QEMU_PLUGIN_CB_NO_REGS,
                                                   NULL);
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn,
                                                   QEMU_PLUGIN_INLINE_ADD_U64,
                                                   &insn_count, 1);
    }
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    emit_line("total ");
    if (out_fp) {
        fclose(out_fp);
        out_fp = NULL;
    }
}

PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                      const qemu_info_t *info,
                                      int argc, char **argv)
{
    const char *out_path = NULL;
    (void)info;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];

        if (strncmp(a, "arg=", 4) == 0) {
            a += 4;
        }
        if (strncmp(a, "mark=", 5) == 0) {
            char *end;
            mark_addr = strtoull(a + 5, &end, 16);
            if (end == a + 5 || *end != '\0') {
                fprintf(stderr, "insn plugin: bad mark address '%s'\n", a + 5);
                return -1;
            }
            mark_addr &= ~(uint64_t)1;  /* clear Thumb bit */
            have_mark = true;
        } else if (strncmp(a, "out=", 4) == 0) {
            out_path = a + 4;
        } else {
            fprintf(stderr, "insn plugin: unknown argument '%s'\n", a);
            return -1;
        }
    }

    if (out_path) {
        out_fp = fopen(out_path, "a");
        if (!out_fp) {
            perror(out_path);
            return -1;
        }
    }

    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
