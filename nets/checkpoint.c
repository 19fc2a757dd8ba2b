/* checkpoint.c — versioned, checksummed training checkpoints (see trainer.h).
 *
 * Layout (little-endian):
 *   "RBCKPT\r\n"  magic, 8 bytes
 *   u32 version (1 or 2), u32 header fields (29 in version 1, RB_CKPT_FIELDS = 30 in version 2)
 *   header: 64-bit words (model description, training configuration and progress, section
 *           sizes; doubles stored as their bits); version 2 adds the model's normalisation
 *           (MgNet's batch norms) and is written only for models that have one, so every
 *           other model's file is version 1, as before
 *   params [nparams], batch-norm running statistics [nstats],
 *   optimiser first moment [nparams], second moment [nparams if Adam]   (doubles)
 *   u32 CRC-32 (zlib) of every byte before it
 */
#include "resbridge/trainer.h"
#include "io_internal.h"

#include <string.h>

#define CKPT_MAGIC "RBCKPT\r\n"
#define CKPT_VERSION 2u
enum ckpt_field {
    F_KIND, F_BLOCK, F_DEPTH, F_WIDTH, F_IN_C, F_IN_H, F_IN_W, F_OUTPUTS, F_H, F_SEED,
    F_OPT_KIND, F_MOMENTUM, F_WD, F_BETA1, F_BETA2, F_EPS, F_LR, F_SCHEDULE, F_EPOCHS, F_STEP_EPOCHS, F_GAMMA,
    F_BATCH, F_DATA_SEED, F_STEP, F_EPOCH, F_OPT_STEPS, F_NPARAMS, F_NSTATS, F_NMOMENTS,
    F_NORM, /* version 2 */
    RB_CKPT_FIELDS
};
/* The header fields of a version. */
static int fields_of(uint32_t version) { return version == 1 ? F_NORM : RB_CKPT_FIELDS; }


static size_t nstats_of(const rb_model *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nbn; i++) n += m->bn[i]->nparams;
    return n;
}

/* The whole file in memory (models here are small: parameters plus two moments). */
typedef struct ckpt_buf {
    unsigned char *data;
    size_t len;
    size_t head; /* bytes before the parameters */
} ckpt_buf;

static void put_doubles(unsigned char **p, const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++, *p += 8) rb_io_put_u64(*p, rb_io_dbits(v[i]));
}

static int emit(int fd, void *user)
{
    const ckpt_buf *b = user;
    return rb_io_write_all(fd, b->data, b->len);
}

rb_status rb_checkpoint_save(rb_context *ctx, const char *path, const rb_trainer *tr)
{
    static const char fn[] = "rb_checkpoint_save";
    if (ctx == NULL) return RB_ENULL;
    if (path == NULL || tr == NULL || tr->model == NULL) return rb_fail(ctx, RB_ENULL, "%s: path or trainer is NULL", fn);
    if (path[0] == '\0') return rb_fail(ctx, RB_EINVAL, "%s: path is empty", fn);
    const rb_model *m = tr->model;
    const rb_model_desc *d = &m->desc;
    const rb_trainer_config *c = &tr->cfg;
    size_t np = m->net->nparams, ns = nstats_of(m), nm = tr->opt.m ? (tr->opt.v ? 2 : 1) : 0;
    uint64_t f[RB_CKPT_FIELDS] = {
        [F_KIND] = d->kind, [F_BLOCK] = d->block, [F_DEPTH] = d->depth, [F_WIDTH] = d->width, [F_IN_C] = d->in_channels,
        [F_IN_H] = d->in_h, [F_IN_W] = d->in_w, [F_OUTPUTS] = d->outputs, [F_H] = rb_io_dbits(d->h), [F_SEED] = d->seed,
        [F_OPT_KIND] = c->opt.kind, [F_MOMENTUM] = rb_io_dbits(c->opt.momentum), [F_WD] = rb_io_dbits(c->opt.weight_decay),
        [F_BETA1] = rb_io_dbits(c->opt.beta1), [F_BETA2] = rb_io_dbits(c->opt.beta2), [F_EPS] = rb_io_dbits(c->opt.eps), [F_LR] = rb_io_dbits(c->lr),
        [F_SCHEDULE] = c->schedule, [F_EPOCHS] = c->epochs, [F_STEP_EPOCHS] = c->step_epochs, [F_GAMMA] = rb_io_dbits(c->gamma),
        [F_BATCH] = c->batch, [F_DATA_SEED] = c->seed, [F_STEP] = tr->step, [F_EPOCH] = tr->epoch,
        [F_OPT_STEPS] = tr->opt.steps, [F_NPARAMS] = np, [F_NSTATS] = ns, [F_NMOMENTS] = nm, [F_NORM] = d->norm};
    const uint32_t version = d->norm != RB_NORM_NONE ? 2 : 1;
    const int fields = fields_of(version);
    ckpt_buf b;
    b.len = 8 + 8 + 8 * (size_t)fields + 8 * (np + ns + nm * np) + 4;
    b.data = rb_malloc(ctx, b.len);
    if (b.data == NULL) return rb_fail(ctx, RB_ENOMEM, "%s: no memory for %zu bytes", fn, b.len);
    unsigned char *p = b.data;
    memcpy(p, CKPT_MAGIC, 8), p += 8;
    rb_io_put_u32(p, version), rb_io_put_u32(p + 4, (uint32_t)fields), p += 8;
    for (int i = 0; i < fields; i++, p += 8) rb_io_put_u64(p, f[i]);
    put_doubles(&p, m->net->params, np);
    for (size_t i = 0; i < m->nbn; i++) put_doubles(&p, rb_op_batchnorm_running_mean(m->bn[i]), m->bn[i]->nparams);
    if (nm >= 1) put_doubles(&p, tr->opt.m, np);
    if (nm == 2) put_doubles(&p, tr->opt.v, np);
    rb_io_put_u32(p, rb_io_crc32(b.data, b.len - 4));
    rb_status st = rb_io_write_atomic(ctx, fn, path, emit, &b);
    rb_free(ctx, b.data);
    return st;
}

/* Read and verify a whole checkpoint: magic, version, length, checksum. */
static rb_status read_verified(rb_context *ctx, const char *fn, const char *path, ckpt_buf *out, uint64_t *f)
{
    unsigned char *data = NULL;
    size_t usize = 0;
    rb_status st = rb_io_read_file(ctx, fn, path, &data, &usize);
    if (st != RB_OK) return st;
    const long size = (long)usize;
    if ((size_t)size < 16 + 8 * (size_t)fields_of(1) + 4)
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s' is %ld bytes, too short for a checkpoint", fn, path, size);
    if (st == RB_OK && memcmp(data, CKPT_MAGIC, 8) != 0)
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s' is not a resbridge checkpoint (bad magic)", fn, path);
    const uint32_t version = st == RB_OK ? rb_io_get_u32(data + 8) : 0;
    if (st == RB_OK && (version < 1 || version > CKPT_VERSION))
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s' has format version %u; this resbridge reads versions 1 to %u", fn, path, version,
                     CKPT_VERSION);
    const int fields = fields_of(version);
    const size_t head = 16 + 8 * (size_t)fields;
    if (st == RB_OK && rb_io_get_u32(data + 12) != (uint32_t)fields)
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': header has %u fields, version %u has %d", fn, path, rb_io_get_u32(data + 12), version,
                     fields);
    if (st == RB_OK && (size_t)size < head + 4)
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s' is %ld bytes, too short for a checkpoint", fn, path, size);
    if (st == RB_OK) {
        for (int i = 0; i < RB_CKPT_FIELDS; i++) f[i] = i < fields ? rb_io_get_u64(data + 16 + 8 * i) : 0; /* version 1: no norm */
        uint64_t np = f[F_NPARAMS], ns = f[F_NSTATS], nm = f[F_NMOMENTS];
        if (np > ((uint64_t)1 << 32) || ns > ((uint64_t)1 << 32) || nm > 2 || (uint64_t)size != head + 8 * (np + ns + nm * np) + 4)
            st = rb_fail(ctx, RB_EFORMAT, "%s: '%s' is %ld bytes but its header describes %llu parameters, %llu statistics "
                                          "and %llu moments (truncated or corrupt)",
                         fn, path, size, (unsigned long long)np, (unsigned long long)ns, (unsigned long long)nm);
    }
    if (st == RB_OK && rb_io_get_u32(data + size - 4) != rb_io_crc32(data, (size_t)size - 4))
        st = rb_fail(ctx, RB_EFORMAT, "%s: '%s': checksum mismatch (the file is corrupt)", fn, path);
    if (st != RB_OK) {
        rb_free(ctx, data);
        return st;
    }
    out->data = data, out->len = (size_t)size, out->head = head;
    return RB_OK;
}

static rb_model_desc desc_of(const uint64_t *f)
{
    return (rb_model_desc){.kind = (rb_model_kind)f[F_KIND], .block = (rb_block_kind)f[F_BLOCK], .depth = f[F_DEPTH],
                           .width = f[F_WIDTH], .in_channels = f[F_IN_C], .in_h = f[F_IN_H], .in_w = f[F_IN_W],
                           .outputs = f[F_OUTPUTS], .h = rb_io_bitsd(f[F_H]), .seed = f[F_SEED], .norm = (rb_norm_kind)f[F_NORM]};
}

static rb_trainer_config config_of(const uint64_t *f)
{
    rb_trainer_config c = {.lr = rb_io_bitsd(f[F_LR]), .schedule = (rb_lr_kind)f[F_SCHEDULE], .epochs = f[F_EPOCHS],
                           .step_epochs = f[F_STEP_EPOCHS], .gamma = rb_io_bitsd(f[F_GAMMA]), .batch = f[F_BATCH],
                           .seed = f[F_DATA_SEED]};
    c.opt = (rb_optimizer_config){.kind = (rb_optimizer_kind)f[F_OPT_KIND], .momentum = rb_io_bitsd(f[F_MOMENTUM]),
                                  .weight_decay = rb_io_bitsd(f[F_WD]), .beta1 = rb_io_bitsd(f[F_BETA1]), .beta2 = rb_io_bitsd(f[F_BETA2]),
                                  .eps = rb_io_bitsd(f[F_EPS])};
    return c;
}

rb_status rb_checkpoint_peek(rb_context *ctx, const char *path, rb_model_desc *desc, rb_trainer_config *cfg)
{
    if (ctx == NULL) return RB_ENULL;
    if (path == NULL || desc == NULL) return rb_fail(ctx, RB_ENULL, "rb_checkpoint_peek: path or desc is NULL");
    ckpt_buf b;
    uint64_t f[RB_CKPT_FIELDS];
    rb_status st = read_verified(ctx, "rb_checkpoint_peek", path, &b, f);
    if (st != RB_OK) return st;
    rb_free(ctx, b.data);
    *desc = desc_of(f);
    if (cfg) *cfg = config_of(f);
    return RB_OK;
}

static void get_doubles(const unsigned char **p, double *v, size_t n)
{
    for (size_t i = 0; i < n; i++, *p += 8) v[i] = rb_io_bitsd(rb_io_get_u64(*p));
}

rb_status rb_checkpoint_load(rb_context *ctx, const char *path, rb_model *m, rb_trainer *tr)
{
    static const char fn[] = "rb_checkpoint_load";
    if (ctx == NULL) return RB_ENULL;
    if (path == NULL || m == NULL) return rb_fail(ctx, RB_ENULL, "%s: path or model is NULL", fn);
    if (tr != NULL && tr->model != m) return rb_fail(ctx, RB_EINVAL, "%s: the trainer trains another model", fn);
    ckpt_buf b;
    uint64_t f[RB_CKPT_FIELDS];
    rb_status st = read_verified(ctx, fn, path, &b, f);
    if (st != RB_OK) return st;
    rb_model_desc d = desc_of(f);
    const rb_model_desc *md = &m->desc;
    if (d.kind != md->kind || d.block != md->block || d.depth != md->depth || d.width != md->width ||
        d.in_channels != md->in_channels || d.in_h != md->in_h || d.in_w != md->in_w || d.outputs != md->outputs ||
        d.norm != md->norm || f[F_NPARAMS] != m->net->nparams || f[F_NSTATS] != nstats_of(m))
        st = rb_fail(ctx, RB_EINVAL, "%s: '%s' holds a %s (%s blocks, depth %zu, width %zu, norm %s, %llu parameters), not this %s "
                                     "(%s, depth %zu, width %zu, norm %s, %zu parameters)",
                     fn, path, rb_model_kind_name(d.kind), rb_block_kind_name(d.block), d.depth, d.width, rb_norm_kind_name(d.norm),
                     (unsigned long long)f[F_NPARAMS], rb_model_kind_name(md->kind), rb_block_kind_name(md->block),
                     md->depth, md->width, rb_norm_kind_name(md->norm), m->net->nparams);
    uint64_t want_moments = tr == NULL ? f[F_NMOMENTS] : (tr->opt.v ? 2 : 1);
    if (st == RB_OK && tr != NULL && (f[F_NMOMENTS] != want_moments || f[F_OPT_KIND] != (uint64_t)tr->opt.cfg.kind))
        st = rb_fail(ctx, RB_EINVAL, "%s: '%s' was written by the %s optimiser; this trainer uses %s", fn, path,
                     rb_optimizer_name((rb_optimizer_kind)f[F_OPT_KIND]), rb_optimizer_name(tr->opt.cfg.kind));
    if (st != RB_OK) {
        rb_free(ctx, b.data);
        return st;
    }
    /* everything checked: now, and only now, overwrite */
    const unsigned char *p = b.data + b.head;
    size_t np = m->net->nparams;
    get_doubles(&p, m->net->params, np);
    for (size_t i = 0; i < m->nbn; i++) get_doubles(&p, rb_op_batchnorm_running_mean(m->bn[i]), m->bn[i]->nparams);
    if (tr != NULL) {
        if (f[F_NMOMENTS] >= 1) get_doubles(&p, tr->opt.m, np);
        if (f[F_NMOMENTS] == 2) get_doubles(&p, tr->opt.v, np);
        tr->opt.steps = f[F_OPT_STEPS];
        tr->step = f[F_STEP];
        tr->epoch = f[F_EPOCH];
    }
    rb_free(ctx, b.data);
    return RB_OK;
}
