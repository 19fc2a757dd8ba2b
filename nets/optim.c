/* optim.c — SGD with momentum and weight decay, Adam, learning-rate schedules
 * (see train.h), with torch.optim's update rules. */
#include "resbridge/train.h"

#include <math.h>
#include <string.h>

static const char *const kind_names[RB_OPT_COUNT] = {"sgd", "adam"};

const char *rb_optimizer_name(rb_optimizer_kind kind)
{
    return (unsigned)kind < RB_OPT_COUNT ? kind_names[kind] : "unknown";
}

rb_status rb_optimizer_parse(rb_context *ctx, const char *name, rb_optimizer_kind *kind)
{
    if (ctx == NULL) return RB_ENULL;
    if (name == NULL || kind == NULL) return rb_fail(ctx, RB_ENULL, "rb_optimizer_parse: %s is NULL", name ? "kind" : "name");
    for (int k = 0; k < RB_OPT_COUNT; k++)
        if (strcmp(name, kind_names[k]) == 0) {
            *kind = (rb_optimizer_kind)k;
            return RB_OK;
        }
    return rb_fail(ctx, RB_EINVAL, "unknown optimiser '%s' (sgd, adam)", name);
}

rb_optimizer_config rb_optimizer_config_default(rb_optimizer_kind kind)
{
    rb_optimizer_config c = {.kind = kind, .momentum = 0.9, .weight_decay = 0, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
    return c;
}

static rb_status check_config(rb_context *ctx, const rb_optimizer_config *c)
{
    static const char fn[] = "rb_optimizer_init";
    if ((unsigned)c->kind >= RB_OPT_COUNT) return rb_fail(ctx, RB_EINVAL, "%s: unknown optimiser kind %d", fn, (int)c->kind);
    if (!(c->weight_decay >= 0) || !isfinite(c->weight_decay))
        return rb_fail(ctx, RB_EINVAL, "%s: weight_decay = %g, must be finite and >= 0", fn, c->weight_decay);
    if (c->kind == RB_OPT_SGD && !(c->momentum >= 0 && c->momentum < 1))
        return rb_fail(ctx, RB_EINVAL, "%s: momentum = %g, must be in [0, 1)", fn, c->momentum);
    if (c->kind == RB_OPT_ADAM) {
        if (!(c->beta1 >= 0 && c->beta1 < 1)) return rb_fail(ctx, RB_EINVAL, "%s: beta1 = %g, must be in [0, 1)", fn, c->beta1);
        if (!(c->beta2 >= 0 && c->beta2 < 1)) return rb_fail(ctx, RB_EINVAL, "%s: beta2 = %g, must be in [0, 1)", fn, c->beta2);
        if (!(c->eps > 0) || !isfinite(c->eps)) return rb_fail(ctx, RB_EINVAL, "%s: eps = %g, must be finite and > 0", fn, c->eps);
    }
    return RB_OK;
}

rb_status rb_optimizer_init(rb_context *ctx, rb_optimizer *opt, const rb_optimizer_config *cfg, size_t nparams)
{
    if (ctx == NULL) return RB_ENULL;
    if (opt == NULL || cfg == NULL) return rb_fail(ctx, RB_ENULL, "rb_optimizer_init: %s is NULL", opt ? "cfg" : "opt");
    if (nparams == 0) return rb_fail(ctx, RB_EINVAL, "rb_optimizer_init: no parameters to optimise");
    rb_status st = check_config(ctx, cfg);
    if (st != RB_OK) return st;
    rb_optimizer o = {.cfg = *cfg, .n = nparams};
    o.m = rb_calloc(ctx, nparams, sizeof(double));
    if (o.m != NULL && cfg->kind == RB_OPT_ADAM) o.v = rb_calloc(ctx, nparams, sizeof(double));
    if (o.m == NULL || (cfg->kind == RB_OPT_ADAM && o.v == NULL)) {
        rb_free(ctx, o.m);
        return RB_ENOMEM;
    }
    *opt = o;
    return RB_OK;
}

rb_status rb_optimizer_step(rb_context *ctx, rb_optimizer *opt, double *params, const double *grad, double lr)
{
    if (ctx == NULL) return RB_ENULL;
    if (opt == NULL || opt->m == NULL || params == NULL || grad == NULL)
        return rb_fail(ctx, RB_ENULL, "rb_optimizer_step: optimiser (initialised), params and grad must not be NULL");
    if (!(lr > 0) || !isfinite(lr)) return rb_fail(ctx, RB_EINVAL, "rb_optimizer_step: lr = %g, must be finite and > 0", lr);
    for (size_t i = 0; i < opt->n; i++)
        if (!isfinite(grad[i]))
            return rb_fail(ctx, RB_EDIVERGED, "rb_optimizer_step: gradient entry %zu is %g (step %llu)", i, grad[i],
                           (unsigned long long)opt->steps + 1);
    const rb_optimizer_config *c = &opt->cfg;
    const double wd = c->weight_decay;
    double *m = opt->m, *v = opt->v;
    opt->steps++;
    if (c->kind == RB_OPT_SGD) {
        const double mu = c->momentum;
        const int fresh = opt->steps == 1 || mu == 0; /* torch: the buffer starts as the first gradient */
        for (size_t i = 0; i < opt->n; i++) {
            double g = grad[i] + wd * params[i];
            double b = fresh ? g : mu * m[i] + g;
            m[i] = b;
            params[i] -= lr * b;
        }
    } else {
        const double b1 = c->beta1, b2 = c->beta2, t = (double)opt->steps;
        const double c1 = 1 - pow(b1, t), c2 = 1 - pow(b2, t);
        for (size_t i = 0; i < opt->n; i++) {
            double g = grad[i] + wd * params[i];
            m[i] = b1 * m[i] + (1 - b1) * g;
            v[i] = b2 * v[i] + (1 - b2) * g * g;
            params[i] -= lr * (m[i] / c1) / (sqrt(v[i] / c2) + c->eps);
        }
    }
    return RB_OK;
}

void rb_optimizer_release(rb_context *ctx, rb_optimizer *opt)
{
    if (opt == NULL) return;
    rb_free(ctx, opt->m);
    rb_free(ctx, opt->v);
    memset(opt, 0, sizeof *opt);
}

rb_status rb_lr_check(rb_context *ctx, const rb_lr_schedule *s)
{
    if (ctx == NULL) return RB_ENULL;
    if (s == NULL) return rb_fail(ctx, RB_ENULL, "rb_lr_check: schedule is NULL");
    if ((unsigned)s->kind >= RB_LR_COUNT) return rb_fail(ctx, RB_EINVAL, "learning-rate schedule: unknown kind %d", (int)s->kind);
    if (!(s->base > 0) || !isfinite(s->base))
        return rb_fail(ctx, RB_EINVAL, "learning-rate schedule: base lr = %g, must be finite and > 0", s->base);
    if (s->kind != RB_LR_CONSTANT && s->period == 0)
        return rb_fail(ctx, RB_EINVAL, "learning-rate schedule: period is 0, must be >= 1 step");
    if (s->kind == RB_LR_STEP && !(s->gamma > 0 && s->gamma <= 1))
        return rb_fail(ctx, RB_EINVAL, "learning-rate schedule: gamma = %g, must be in (0, 1]", s->gamma);
    if (s->kind == RB_LR_COSINE && !(s->floor >= 0 && s->floor <= s->base))
        return rb_fail(ctx, RB_EINVAL, "learning-rate schedule: floor = %g, must be in [0, base lr]", s->floor);
    return RB_OK;
}

double rb_lr_at(const rb_lr_schedule *s, uint64_t t)
{
    if (s == NULL) return NAN;
    switch (s->kind) {
    case RB_LR_STEP:
        return s->base * pow(s->gamma, (double)(t / s->period));
    case RB_LR_COSINE: {
        double frac = t >= s->period ? 1.0 : (double)t / (double)s->period;
        return s->floor + (s->base - s->floor) * (1 + cos(3.14159265358979323846 * frac)) / 2;
    }
    default:
        return s->base;
    }
}
