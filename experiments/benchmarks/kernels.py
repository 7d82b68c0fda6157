r"""Speed of the core kernels against reference implementations, measured in one run.

  python -m experiments.benchmarks.kernels [--quick] [--out=FILE.md]

Mixture log-density (forward, and value + gradient w.r.t. points, means, factors and
logits) of ours vs TFP-on-JAX `MixtureSameFamily(MultivariateNormalTriL)`, distrax,
scikit-learn (`score_samples`, float64, forward only, precisions precomputed as after
`fit`) and a naive inverse-based jnp version; conditional inference (responsibilities,
conditional means and covariances) vs the naive jnp version and a float64 numpy/scipy
`cho_solve` version. Prints each reference's time / ours (> 1: ours faster), our GFLOP/s
against a jnp matmul measured in the same run, and the compiled temporary memory of our
gradient against the [K, N, D] whitened-residual bound.
"""

from __future__ import annotations

import argparse
import math
import sys

from experiments.benchmarks import common

POOL = common.configure_cpu_pool()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import gje_jax  # noqa: E402

SIZES = [(4096, 1, 128), (4096, 1, 512), (4096, 16, 64), (4096, 64, 32), (1024, 256, 16), (8192, 8, 256)]
QUICK = [(1024, 1, 32), (1024, 8, 16)]


def _inputs(n, k, d, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    chols = np.tril(a, -1) + np.eye(d) * rng.uniform(0.5, 1.5, size=(k, 1, d))
    return (
        rng.normal(size=(n, d)).astype(np.float32),
        rng.normal(size=k).astype(np.float32),
        rng.normal(size=(k, d)).astype(np.float32),
        chols.astype(np.float32),
    )


def ours(z, logits, means, chols):
    return gje_jax.GaussianMixture(logits, means, chols).log_prob(z)


def naive(z, logits, means, chols):
    cov = chols @ jnp.swapaxes(chols, 1, 2)
    prec = jnp.linalg.inv(cov)
    r = z[None] - means[:, None]
    maha = jnp.einsum("knd,kde,kne->kn", r, prec, r)
    logdet = jnp.linalg.slogdet(cov)[1]
    comp = -0.5 * (maha + logdet[:, None] + z.shape[1] * math.log(2 * math.pi))
    return jax.nn.logsumexp(jax.nn.log_softmax(logits)[:, None] + comp, axis=0)


def make_tfp():
    from tensorflow_probability.substrates import jax as tfp

    tfd = tfp.distributions

    def f(z, logits, means, chols):
        return tfd.MixtureSameFamily(
            tfd.Categorical(logits=logits), tfd.MultivariateNormalTriL(loc=means, scale_tril=chols)
        ).log_prob(z)

    return f


def make_distrax():
    import distrax

    def f(z, logits, means, chols):
        return distrax.MixtureSameFamily(
            distrax.Categorical(logits=logits), distrax.MultivariateNormalTri(loc=means, scale_tri=chols)
        ).log_prob(z)

    return f


def sklearn_fn(logits, means, chols):
    from sklearn.mixture import GaussianMixture

    k, d = means.shape
    sk = GaussianMixture(k, covariance_type="full")
    w = np.exp(logits - logits.max())
    sk.weights_ = (w / w.sum()).astype(np.float64)
    sk.means_ = means.astype(np.float64)
    sk.covariances_ = (chols @ np.swapaxes(chols, 1, 2)).astype(np.float64)
    sk.precisions_cholesky_ = np.stack([np.linalg.inv(l.astype(np.float64)).T for l in chols])
    return sk.score_samples


def _grad_of(fn):
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=(0, 1, 2, 3)))


def bench_log_density(sizes, ceiling):
    rows = []
    for n, k, d in sizes:
        args = tuple(jnp.asarray(a) for a in _inputs(n, k, d))
        nominal = k * (n * d * d + d**3 / 3)
        impls = {"ours": ours, "naive_inv": naive, "tfp": make_tfp(), "distrax": make_distrax()}
        res = {}
        ref_val = None
        for name, fn in impls.items():
            fwd, _ = common.compile_time(jax.jit(fn), *args)
            grad, _ = common.compile_time(_grad_of(fn), *args)
            val = np.asarray(fwd(*args))
            ref_val = val if ref_val is None else ref_val
            res[name] = (
                common.time_call(fwd, *args),
                common.time_call(grad, *args),
                float(np.max(np.abs(val - ref_val) / (1 + np.abs(ref_val)))),
            )
            if name == "ours":
                temp = grad.memory_analysis().temp_size_in_bytes if grad.memory_analysis() else float("nan")
        sk = sklearn_fn(*[np.asarray(a) for a in args[1:]])
        z64 = np.asarray(args[0])
        res["sklearn"] = (common.time_call(lambda: sk(z64)), float("nan"), 0.0)
        f_ours, g_ours, _ = res["ours"]
        best_fwd = min(v[0] for kk, v in res.items() if kk != "ours")
        best_grad = min(v[1] for kk, v in res.items() if kk not in ("ours", "sklearn"))
        rows.append(
            [
                n,
                k,
                d,
                f"{f_ours:.2f}",
                f"{g_ours:.2f}",
                *(
                    f"{res[r][0] / f_ours:.2f} / " + ("—" if math.isnan(res[r][1]) else f"{res[r][1] / g_ours:.2f}")
                    for r in ("tfp", "distrax", "sklearn", "naive_inv")
                ),
                f"{best_fwd / f_ours:.2f} / {best_grad / g_ours:.2f}",
                f"{nominal / (f_ours * 1e-3) / 1e9:.1f} / {3 * nominal / (g_ours * 1e-3) / 1e9:.1f} of {ceiling:.0f}",
                f"{temp / 2**20:.1f} MiB ({temp / (4 * n * k * d):.1f}x KND)",
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
        "ours GFLOP/s (fwd / grad)",
        "ours grad temp memory",
    ]
    return common.markdown_table(header, rows)


def naive_condition(c, logits, means, chols, split):
    cov = chols @ jnp.swapaxes(chols, 1, 2)
    s_cc, s_tc, s_tt = cov[:, :split, :split], cov[:, split:, :split], cov[:, split:, split:]
    gain = s_tc @ jnp.linalg.inv(s_cc)
    r = c[None] - means[:, None, :split]
    m = means[:, None, split:] + jnp.einsum("kde,kne->knd", gain, r)
    s = s_tt - gain @ jnp.swapaxes(s_tc, 1, 2)
    prec = jnp.linalg.inv(s_cc)
    logp = -0.5 * (jnp.einsum("knd,kde,kne->kn", r, prec, r) + jnp.linalg.slogdet(s_cc)[1][:, None])
    return jax.nn.softmax(jax.nn.log_softmax(logits)[:, None] + logp, axis=0), m, s


def ours_condition(c, logits, means, chols, split):
    cm = gje_jax.GaussianMixture(logits, means, chols).condition(c, split)
    return cm.log_weights, cm.means, cm.chols


def numpy_condition(c, logits, means, chols, split):
    import scipy.linalg

    out = []
    for j in range(len(logits)):
        cov = chols[j].astype(np.float64) @ chols[j].T.astype(np.float64)
        cf = scipy.linalg.cho_factor(cov[:split, :split], lower=True)
        r = c - means[j, :split]
        gain_t = scipy.linalg.cho_solve(cf, cov[:split, split:])
        out.append((means[j, split:] + r @ gain_t, cov[split:, split:] - cov[split:, :split] @ gain_t))
    return out


def bench_condition(sizes, ceiling):
    rows = []
    for n, k, d in sizes:
        if d < 2:
            continue
        split = d // 2
        z, logits, means, chols = _inputs(n, k, d)
        args = (jnp.asarray(z[:, :split]), jnp.asarray(logits), jnp.asarray(means), jnp.asarray(chols))
        f_ours = jax.jit(ours_condition, static_argnums=4)
        f_naive = jax.jit(naive_condition, static_argnums=4)
        t_ours = common.time_call(f_ours, *args, split)
        t_naive = common.time_call(f_naive, *args, split)
        c64 = z[:, :split].astype(np.float64)
        t_np = common.time_call(lambda: numpy_condition(c64, logits, means, chols, split))
        m_ours = np.swapaxes(np.asarray(f_ours(*args, split)[1]), 0, 1)
        m_ref = np.stack([m for m, _ in numpy_condition(c64, logits, means, chols, split)])
        err = float(np.linalg.norm(m_ours - m_ref) / np.linalg.norm(m_ref))
        nominal = k * (3 * n * split**2 + split**3)
        rows.append(
            [
                n,
                k,
                d,
                f"{t_ours:.2f}",
                f"{t_naive / t_ours:.2f}",
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
            "naive_inv / ours",
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
    args = parser.parse_args()
    sizes = QUICK if args.quick else SIZES
    ceiling = common.matmul_gflops()
    import jaxlib

    head = (
        f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, backend {jax.default_backend()}, "
        f"devices {jax.device_count()}, cpu count {__import__('os').cpu_count()}, PJRT_NPROC={POOL}; "
        f"jnp matmul 2048^2: {ceiling:.1f} GFLOP/s"
    )
    report = [
        "# Core kernel benchmark",
        "",
        head,
        "",
        "## Mixture log-density: ratios are reference time / ours (fwd / fwd+grad); > 1 means ours is faster",
        "",
        bench_log_density(sizes, ceiling),
        "",
        "## Conditional inference p(t | c) (responsibilities, means, factors)",
        "",
        bench_condition(sizes, ceiling),
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
                + "\n"
            )


if __name__ == "__main__":
    main()
