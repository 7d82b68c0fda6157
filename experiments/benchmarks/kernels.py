r"""Speed of the core kernels against reference implementations, measured in one run.

  python -m experiments.benchmarks.kernels [--quick] [--repeats=3] [--out=FILE.md]

Mixture log-density (forward, and value + gradient w.r.t. points, means, factors and
logits) of ours vs TFP-on-JAX `MixtureSameFamily(MultivariateNormalTriL)`, distrax,
scikit-learn (`score_samples`, float64, forward only, precisions precomputed as after
`fit`) and a naive inverse-based jnp version; conditional inference (responsibilities,
conditional means and covariances) vs the naive jnp version and a float64 numpy/scipy
`cho_solve` version. Prints each reference's time / ours (> 1: ours faster), our GFLOP/s and
the fastest reference's against a jnp matmul measured in the same run, and the compiled
temporary memory of our gradient against the [K, N, D] whitened-residual bound.

Timing (`common.time_blocks`): the JAX implementations of one size are visited in shuffled
rounds; each visit runs one implementation alone, untimed for 0.2 s and then timed for 0.2 s,
so none pays for the BLAS threads the previous one left spinning, and load that drifts during
the run hits all alike. Each ratio is the median of per-round ratios; this is repeated
`--repeats` times and the median and range reported. glibc's mmap threshold is fixed first
(`common.configure_allocator`), which removes a slow mode of the references that otherwise
appeared in some processes and not others.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys

from . import common

POOL = common.configure_cpu_pool()
ALLOCATOR = common.configure_allocator()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import gje_jax  # noqa: E402

SIZES = [(4096, 1, 128), (4096, 1, 512), (4096, 16, 64), (4096, 64, 32), (1024, 256, 16), (8192, 8, 256)]
QUICK = [(1024, 1, 32), (1024, 8, 16)]
ROUNDS = 3  # per repeat


def _inputs(n, k, d, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    scale_tril = np.tril(a, -1) + np.eye(d) * rng.uniform(0.5, 1.5, size=(k, 1, d))
    return (
        rng.normal(size=(n, d)).astype(np.float32),
        rng.normal(size=k).astype(np.float32),
        rng.normal(size=(k, d)).astype(np.float32),
        scale_tril.astype(np.float32),
    )


def ours(z, logits, means, scale_tril):
    return gje_jax.GaussianMixture(logits, means, scale_tril).log_prob(z)


def naive(z, logits, means, scale_tril):
    cov = scale_tril @ jnp.swapaxes(scale_tril, 1, 2)
    prec = jnp.linalg.inv(cov)
    r = z[None] - means[:, None]
    maha = jnp.einsum("knd,kde,kne->kn", r, prec, r)
    logdet = jnp.linalg.slogdet(cov)[1]
    comp = -0.5 * (maha + logdet[:, None] + z.shape[1] * math.log(2 * math.pi))
    return jax.nn.logsumexp(jax.nn.log_softmax(logits)[:, None] + comp, axis=0)


def make_tfp():
    from tensorflow_probability.substrates import jax as tfp

    tfd = tfp.distributions

    def f(z, logits, means, scale_tril):
        return tfd.MixtureSameFamily(
            tfd.Categorical(logits=logits), tfd.MultivariateNormalTriL(loc=means, scale_tril=scale_tril)
        ).log_prob(z)

    return f


def make_distrax():
    import distrax

    def f(z, logits, means, scale_tril):
        return distrax.MixtureSameFamily(
            distrax.Categorical(logits=logits), distrax.MultivariateNormalTri(loc=means, scale_tri=scale_tril)
        ).log_prob(z)

    return f


def sklearn_fn(logits, means, scale_tril):
    from sklearn.mixture import GaussianMixture

    k, d = means.shape
    sk = GaussianMixture(k, covariance_type="full")
    w = np.exp(logits - logits.max())
    sk.weights_ = (w / w.sum()).astype(np.float64)
    sk.means_ = means.astype(np.float64)
    sk.covariances_ = (scale_tril @ np.swapaxes(scale_tril, 1, 2)).astype(np.float64)
    sk.precisions_cholesky_ = np.stack([np.linalg.inv(l.astype(np.float64)).T for l in scale_tril])
    return sk.score_samples


def _grad_of(fn):
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=(0, 1, 2, 3)))


def bench_log_density(sizes, ceiling, repeats):
    rows = []
    for n, k, d in sizes:
        args = tuple(jnp.asarray(a) for a in _inputs(n, k, d))
        nominal = k * (n * d * d + d**3 / 3)
        impls = {"ours": ours, "naive_inv": naive, "tfp": make_tfp(), "distrax": make_distrax()}
        fwd_calls, grad_calls, err = {}, {}, {}
        ref_val = None
        for name, fn in impls.items():
            fwd, _ = common.compile_time(jax.jit(fn), *args)
            grad, _ = common.compile_time(_grad_of(fn), *args)
            val = np.asarray(fwd(*args))
            ref_val = val if ref_val is None else ref_val
            err[name] = float(np.max(np.abs(val - ref_val) / (1 + np.abs(ref_val))))
            fwd_calls[name] = functools.partial(fwd, *args)
            grad_calls[name] = functools.partial(grad, *args)
            if name == "ours":
                temp = grad.memory_analysis().temp_size_in_bytes if grad.memory_analysis() else float("nan")
        fwd_calls["sklearn"] = functools.partial(sklearn_fn(*[np.asarray(a) for a in args[1:]]), np.asarray(args[0]))
        # Each implementation is timed in blocks of its own calls (see common.time_blocks);
        # ratios are medians of per-round ratios, then the median over `repeats` such
        # measurements (their spread is reported).
        fwd_r, grad_r, fwd_abs, grad_abs = [], [], [], []
        for rep in range(repeats):
            fwd_ms, fwd_t = common.time_blocks(fwd_calls, rounds=ROUNDS, seed=rep)
            grad_ms, grad_t = common.time_blocks(grad_calls, rounds=ROUNDS, seed=rep)
            fwd_r.append({r: common.ratio(fwd_t, r) for r in fwd_t if r != "ours"})
            grad_r.append({r: common.ratio(grad_t, r) for r in grad_t if r != "ours"})
            fwd_abs.append(fwd_ms)
            grad_abs.append(grad_ms)
        med = lambda dicts, key: float(np.median([x[key] for x in dicts]))
        fwd_ratio = {r: med(fwd_r, r) for r in fwd_r[0]}
        grad_ratio = {r: med(grad_r, r) for r in grad_r[0]}
        f_ours, g_ours = med(fwd_abs, "ours"), med(grad_abs, "ours")
        # The fastest reference is the one ours is slowest against (smallest ratio).
        best_fwd = min(fwd_ratio, key=fwd_ratio.get)
        best_grad = min(grad_ratio, key=grad_ratio.get)
        spread = [min(x[best_fwd] for x in fwd_r), max(x[best_fwd] for x in fwd_r)]
        spread += [min(x[best_grad] for x in grad_r), max(x[best_grad] for x in grad_r)]
        worst_err = max(err.values())
        rows.append(
            [
                n,
                k,
                d,
                f"{f_ours:.2f}",
                f"{g_ours:.2f}",
                *(
                    f"{fwd_ratio[r]:.2f} / " + (f"{grad_ratio[r]:.2f}" if r in grad_ratio else "—")
                    for r in ("tfp", "distrax", "sklearn", "naive_inv")
                ),
                f"{fwd_ratio[best_fwd]:.2f} ({best_fwd}) / {grad_ratio[best_grad]:.2f} ({best_grad})",
                f"{spread[0]:.2f}-{spread[1]:.2f} / {spread[2]:.2f}-{spread[3]:.2f}",
                f"{nominal / (f_ours * 1e-3) / 1e9:.1f} / {3 * nominal / (g_ours * 1e-3) / 1e9:.1f} of {ceiling:.0f}",
                # The fastest reference's rate at the same nominal flops (its time = ours x ratio;
                # sklearn's float64 runs are counted alike): how near it runs to the ceiling.
                f"{nominal / (f_ours * fwd_ratio[best_fwd] * 1e-3) / 1e9:.1f} / "
                f"{3 * nominal / (g_ours * grad_ratio[best_grad] * 1e-3) / 1e9:.1f}",
                f"{temp / 2**20:.1f} MiB ({temp / (4 * n * k * d):.1f}x KND)",
                f"{worst_err:.0e}",
            ]
        )
        print(f"  done N={n} K={k} D={d}", file=sys.stderr, flush=True)
    header = [
        "N",
        "K",
        "D",
        "ours fwd ms",
        "ours fwd+grad ms",
        "tfp",
        "distrax",
        "sklearn",
        "naive_inv",
        "fastest ref / ours",
        "its range over repeats",
        "ours GFLOP/s (fwd / grad)",
        "fastest ref GFLOP/s (fwd / grad)",
        "ours grad temp memory",
        "max rel diff of values",
    ]
    return common.markdown_table(header, rows)


def naive_condition(c, logits, means, scale_tril, split):
    cov = scale_tril @ jnp.swapaxes(scale_tril, 1, 2)
    s_cc, s_tc, s_tt = cov[:, :split, :split], cov[:, split:, :split], cov[:, split:, split:]
    gain = s_tc @ jnp.linalg.inv(s_cc)
    r = c[None] - means[:, None, :split]
    m = means[:, None, split:] + jnp.einsum("kde,kne->knd", gain, r)
    s = s_tt - gain @ jnp.swapaxes(s_tc, 1, 2)
    prec = jnp.linalg.inv(s_cc)
    logp = -0.5 * (jnp.einsum("knd,kde,kne->kn", r, prec, r) + jnp.linalg.slogdet(s_cc)[1][:, None])
    return jax.nn.softmax(jax.nn.log_softmax(logits)[:, None] + logp, axis=0), m, s


def ours_condition(c, logits, means, scale_tril, split):
    cm = gje_jax.GaussianMixture(logits, means, scale_tril).condition(c, split)
    return cm.log_weights, cm.means, cm.scale_tril


def numpy_condition(c, logits, means, scale_tril, split):
    import scipy.linalg

    out = []
    for j in range(len(logits)):
        cov = scale_tril[j].astype(np.float64) @ scale_tril[j].T.astype(np.float64)
        cf = scipy.linalg.cho_factor(cov[:split, :split], lower=True)
        r = c - means[j, :split]
        gain_t = scipy.linalg.cho_solve(cf, cov[:split, split:])
        out.append((means[j, split:] + r @ gain_t, cov[split:, split:] - cov[split:, :split] @ gain_t))
    return out


def bench_condition(sizes, ceiling, repeats):
    rows = []
    for n, k, d in sizes:
        if d < 2:
            continue
        split = d // 2
        z, logits, means, scale_tril = _inputs(n, k, d)
        args = (jnp.asarray(z[:, :split]), jnp.asarray(logits), jnp.asarray(means), jnp.asarray(scale_tril))
        f_ours = jax.jit(ours_condition, static_argnums=4)
        f_naive = jax.jit(naive_condition, static_argnums=4)
        c64 = z[:, :split].astype(np.float64)
        calls = {"ours": functools.partial(f_ours, *args, split), "naive_inv": functools.partial(f_naive, *args, split)}
        reps = [common.time_blocks(calls, rounds=ROUNDS, seed=rep) for rep in range(repeats)]
        t_ours = float(np.median([ms["ours"] for ms, _ in reps]))
        naive_ratios = [common.ratio(times, "naive_inv") for _, times in reps]
        t_np = common.time_call(functools.partial(numpy_condition, c64, logits, means, scale_tril, split))
        m_ours = np.swapaxes(np.asarray(f_ours(*args, split)[1]), 0, 1)
        m_ref = np.stack([m for m, _ in numpy_condition(c64, logits, means, scale_tril, split)])
        err = float(np.linalg.norm(m_ours - m_ref) / np.linalg.norm(m_ref))
        nominal = k * (3 * n * split**2 + split**3)
        rows.append(
            [
                n,
                k,
                d,
                f"{t_ours:.2f}",
                f"{np.median(naive_ratios):.2f} ({min(naive_ratios):.2f}-{max(naive_ratios):.2f})",
                f"{t_np / t_ours:.2f}",
                f"{nominal / (t_ours * 1e-3) / 1e9:.1f} of {ceiling:.0f}",
                f"{err:.1e}",
            ]
        )
    return common.markdown_table(
        [
            "N",
            "K",
            "D (d_c = D/2)",
            "ours ms",
            "naive_inv / ours (range over repeats)",
            "numpy f64 / ours",
            "ours GFLOP/s",
            "rel err of means vs f64",
        ],
        rows,
    )


def main():
    parser = argparse.ArgumentParser(description="Core kernel benchmark")
    parser.add_argument("--quick", action="store_true", help="two small sizes (smoke run)")
    parser.add_argument("--out", default=None, help="also write the report here (Markdown)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="measurements per size, each of 3 rounds (median reported)"
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else SIZES
    ceiling = common.matmul_gflops()
    import jaxlib

    head = (
        f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, backend {jax.default_backend()}, "
        f"devices {jax.device_count()}, cpu count {__import__('os').cpu_count()}, PJRT_NPROC={POOL}, "
        f"malloc: {ALLOCATOR}; "
        f"jnp matmul 2048^2: {ceiling:.1f} GFLOP/s"
    )
    report = [
        "# Core kernel benchmark",
        "",
        head,
        "",
        "## Mixture log-density: ratios are reference time / ours (fwd / fwd+grad); > 1 means ours is faster",
        "",
        bench_log_density(sizes, ceiling, args.repeats),
        "",
        "## Conditional inference p(t | c) (responsibilities, means, factors)",
        "",
        bench_condition(sizes, ceiling, args.repeats),
        "",
    ]
    text = "\n".join(report)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(
                text
                + "\n\nCommand: python -m experiments.benchmarks.kernels"
                + (" --quick" if args.quick else "")
                + (f" --repeats={args.repeats}" if args.repeats != 3 else "")
                + "\n"
            )


if __name__ == "__main__":
    main()
