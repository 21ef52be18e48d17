"""Ensemble Kalman inversion and sampling: speed and accuracy (`make bench`, or run directly).

    .venv/bin/python benchmarks/bench_inversion.py            # full size (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench_inversion.py --quick    # small sizes (~3 min)

Parts (results in benchmarks/results/inversion[-quick].md / .json):

1. Darcy flow, 32 x 32 grid, 16 KL modes, J = 100, one stochastic EKI iteration:
   kalmax's `EKI.step` (the forward model vmapped over the members and the update,
   one compiled call) against the ask/tell loop a user of a library without a
   batched forward model writes: the same compiled single-member Darcy solve
   called member by member from Python, then the (compiled) update. Both give the
   same ensemble (checked). Medians of several iterations; ratio loop / kalmax.
2. ETKI (and stochastic EKI) with data dimension p = 10^4 .. 10^6 (J = 50, d = 8,
   a smooth basis-expansion forward model, diagonal noise): seconds per iteration
   per data dimension (target < 1e-5) and XLA's peak temporary memory of the
   compiled step against J (d + p) numbers (target O(J (d + p)), never p x p).
3. Darcy EKI with the discrepancy principle: relative error of the log-permeability
   per iteration, where and why it stopped.
4. Darcy EKS (and UKI) against a long MCMC reference (blackjax NUTS with window
   adaptation, several chains; the Darcy solve is differentiable): posterior mean
   and standard deviation per KL mode; target: EKS means within two posterior
   standard deviations of the MCMC means, variances reported as ratios. Then every
   method on the same problem (finite-time EKI and ETKI, ES-MDA with 4 and 8
   assimilations, EnRML, UKI, EKS): relative error of the log-permeability, data
   misfit, and the spread against NUTS.
5. Linear Gaussian (d = 10, p = 20) accuracy summary against the exact posterior:
   UKI with the prior imposed, EKS (J = 200, time-averaged), finite-time EKI.

Every process runs single-threaded OpenBLAS (set below before JAX loads), as
the tests do: the machine is a shared 2-core VM.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import kalmax as kx  # noqa: E402
from kalmax.covariance import DiagonalCovariance  # noqa: E402
from kalmax.inversion.eki import EKI, ETKI  # noqa: E402
from kalmax.inversion.eks import EKS  # noqa: E402
from kalmax.inversion.uki import UKI  # noqa: E402
from kalmax.problems.darcy import darcy_problem  # noqa: E402
from kalmax.problems.linear import linear_gaussian  # noqa: E402


def _median_time(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


# -- 1. Darcy: vmapped forward + update vs a member-by-member loop -------------------------


def darcy_speed(args) -> dict:
    key = jax.random.key(0)
    vmapped = darcy_problem(key, grid_size=args.darcy_grid, n_modes=16, noise_std=0.1)
    mapped = darcy_problem(key, grid_size=args.darcy_grid, n_modes=16, noise_std=0.1, map_batch_size=1)
    problem, model = vmapped.problem, vmapped.model
    method = EKI(args.darcy_members)
    state0 = method.init(problem, jax.random.key(1))
    keys = jax.random.split(jax.random.key(2), 64)
    single = eqx.filter_jit(lambda theta: model(theta))
    tell = eqx.filter_jit(lambda s, outputs, k: method.tell(problem, s, outputs, k))

    def loop_iteration(s, key):
        points = np.asarray(method.ask(s))
        outputs = np.stack([np.asarray(single(jnp.asarray(p))) for p in points])
        return tell(s, outputs, key)

    runs = {}
    for name, iteration in (
        ("vmap", eqx.filter_jit(lambda s, k: method.step(vmapped.problem, s, k))),
        ("map", eqx.filter_jit(lambda s, k: method.step(mapped.problem, s, k))),
        ("loop", loop_iteration),
    ):
        t0 = time.perf_counter()
        jax.block_until_ready(iteration(state0, keys[0]).members)
        first = time.perf_counter() - t0
        holder = {"s": state0, "i": 0}

        def run(iteration=iteration, holder=holder):
            holder["s"] = iteration(holder["s"], keys[holder["i"] % 64])
            holder["i"] += 1
            return holder["s"].members

        median, times, _ = _median_time(run, args.repeats)
        runs[name] = dict(first_s=first, median_s=median, times=times, members_after=iteration(state0, keys[5]).members)
    # the same iteration three ways (same state and key) gives the same ensemble
    agreement = max(float(jnp.max(jnp.abs(runs[a]["members_after"] - runs["loop"]["members_after"]))) for a in ("vmap", "map"))
    for r in runs.values():
        del r["members_after"]
    members = state0.members
    forward = {}
    for name, prob in (("vmap", vmapped.problem), ("map", mapped.problem)):
        f = eqx.filter_jit(lambda m, prob=prob: prob.evaluate(m))
        jax.block_until_ready(f(members))
        forward[name], _, _ = _median_time(lambda f=f: f(members), args.repeats)
    forward["loop"], _, _ = _median_time(
        lambda: np.stack([np.asarray(single(m)) for m in problem.constrain(members)]), max(3, args.repeats // 2)
    )
    return dict(grid=args.darcy_grid, n_modes=16, members=args.darcy_members, data_dim=problem.data_dim, runs=runs,
                ratio_vmap=runs["loop"]["median_s"] / runs["vmap"]["median_s"],
                ratio_map=runs["loop"]["median_s"] / runs["map"]["median_s"], max_abs_diff=agreement,
                forward=forward)  # fmt: skip


# -- 2. ETKI / EKI with large data vectors ---------------------------------------------------


class _Basis(eqx.Module):
    """G(u)(x_i) = sum_k u_k cos(pi k x_i) on p points of [0, 1], computed on the fly (no p x d matrix)."""

    points: jax.Array

    def __call__(self, u):
        k = jnp.arange(u.shape[0], dtype=u.dtype)
        return jnp.cos(jnp.pi * self.points[:, None] * k[None, :]) @ u


def large_data(args) -> dict:
    rows = []
    d, size = 8, 50
    for p in args.data_dims:
        points = jnp.linspace(0.0, 1.0, p)
        forward = _Basis(points)
        truth = jnp.linspace(1.0, -1.0, d)
        noise = 0.05
        y = forward(truth) + noise * jax.random.normal(jax.random.key(3), (p,))
        problem = kx.InverseProblem(forward, y, DiagonalCovariance(jnp.full(p, noise**2)), kx.Prior(jnp.zeros(d), jnp.eye(d)))
        for name, method in (("ETKI", ETKI(size)), ("EKI (stochastic)", EKI(size))):
            state = method.init(problem, jax.random.key(4))
            step = jax.jit(lambda s, k, method=method, problem=problem: method.step(problem, s, k))
            try:
                analysis = step.lower(state, jax.random.key(5)).compile().memory_analysis()
                memory = dict(temp=int(analysis.temp_size_in_bytes), arguments=int(analysis.argument_size_in_bytes),
                              outputs=int(analysis.output_size_in_bytes))  # fmt: skip
            except Exception:  # noqa: BLE001 - not every backend reports it
                memory = None
            t0 = time.perf_counter()
            jax.block_until_ready(step(state, jax.random.key(5)))
            first = time.perf_counter() - t0
            holder = {"s": state, "i": 0}

            def run(step=step, holder=holder):
                holder["s"] = step(holder["s"], jax.random.key(holder["i"]))
                holder["i"] += 1
                return holder["s"].members

            median, times, _ = _median_time(run, args.repeats)
            error = float(jnp.max(jnp.abs(holder["s"].members.mean(0) - truth)))
            rows.append(dict(method=name, data_dim=p, members=size, parameter_dim=d, first_s=first, median_s=median,
                             per_data_dim_s=median / p, memory=memory, ensemble_numbers_bytes=8 * size * (d + p),
                             p_by_p_bytes=8 * p * p, mean_abs_error_after=error, iterations=holder["i"]))  # fmt: skip
            print(f"  {name} p={p}: {common.fmt_time(median)}/iteration, {median / p:.2e} s per data dim", flush=True)
    return dict(rows=rows)


# -- 3. Darcy EKI with the discrepancy principle ---------------------------------------------


def darcy_eki(args) -> dict:
    darcy = darcy_problem(jax.random.key(10), grid_size=args.darcy_grid, n_modes=16, noise_std=0.1)
    method = EKI(args.darcy_members)
    t0 = time.perf_counter()
    result = kx.invert(darcy.problem, method, jax.random.key(11), stop=kx.DiscrepancyPrinciple(), max_steps=50)
    jax.block_until_ready(result.state.members)
    wall = time.perf_counter() - t0
    n = int(result.n_iterations)
    errors = [float(darcy.relative_error(darcy.field(result.history.mean[i]))) for i in range(n + 1)]
    misfit = np.asarray(result.history.misfit[: n + 1]).tolist()
    return dict(grid=args.darcy_grid, members=args.darcy_members, code=int(result.code), message=result.message,
                iterations=n, relative_error=errors, misfit=misfit, data_dim=darcy.problem.data_dim,
                level=1.25**2 * darcy.problem.data_dim, wall_s=wall)  # fmt: skip


# -- 4. Darcy EKS / UKI against NUTS ---------------------------------------------------------


def darcy_posterior(args) -> dict:
    import blackjax

    modes = args.posterior_modes
    darcy = darcy_problem(jax.random.key(20), grid_size=16, n_modes=modes, noise_std=args.posterior_noise)
    problem, model = darcy.problem, darcy.model
    y, noise = problem.y, args.posterior_noise

    def logdensity(theta):
        return -0.5 * jnp.sum(theta**2) - 0.5 * jnp.sum(((y - model(theta)) / noise) ** 2)

    chains, n_samples, n_warmup = args.mcmc_chains, args.mcmc_samples, args.mcmc_warmup
    t0 = time.perf_counter()

    @jax.jit
    def run_chain(key):
        key_init, key_warm, key_run = jax.random.split(key, 3)
        warmup = blackjax.window_adaptation(blackjax.nuts, logdensity)
        (state, parameters), _ = warmup.run(key_warm, jax.random.normal(key_init, (modes,)) * 0.1, num_steps=n_warmup)
        kernel = blackjax.nuts(logdensity, **parameters).step

        def one(state, key):
            state, info = kernel(key, state)
            return state, (state.position, info.is_divergent, info.acceptance_rate)

        _, (samples, divergent, acceptance) = jax.lax.scan(one, state, jax.random.split(key_run, n_samples))
        return samples, divergent, acceptance

    outs = [run_chain(k) for k in jax.random.split(jax.random.key(21), chains)]
    samples = np.stack([np.asarray(o[0]) for o in outs])  # (chains, n, d)
    mcmc_wall = time.perf_counter() - t0
    flat = samples.reshape(-1, modes)
    mcmc_mean, mcmc_sd = flat.mean(0), flat.std(0, ddof=1)
    # split-R-hat per mode (Gelman et al.) to show the chains agree
    halves = samples.reshape(chains * 2, n_samples // 2, modes)
    within = halves.var(axis=1, ddof=1).mean(0)
    between = (n_samples // 2) * halves.mean(axis=1).var(axis=0, ddof=1)
    rhat = np.sqrt(((n_samples // 2 - 1) / (n_samples // 2) * within + between / (n_samples // 2)) / within)

    # EKS: time average over the second half of the run
    method = EKS(args.eks_members)
    t0 = time.perf_counter()
    result = kx.invert(problem, method, jax.random.key(22), args.eks_steps)
    jax.block_until_ready(result.state.members)
    eks_wall = time.perf_counter() - t0
    burn = args.eks_steps // 2
    eks_mean = np.asarray(result.history.mean[burn:]).mean(0)
    eks_sd = np.sqrt(np.asarray(result.history.variance[burn:]).mean(0))
    z = np.abs(eks_mean - mcmc_mean) / mcmc_sd
    # UKI (Gaussian approximation, prior imposed)
    uki = kx.invert(problem, UKI(), None, args.uki_steps)
    uki_mean = np.asarray(uki.state.mean)
    uki_sd = np.sqrt(np.diag(np.asarray(uki.state.cov)))
    table = method_table(args, darcy, mcmc_mean, mcmc_sd, dict(EKS=(eks_mean, eks_sd, eks_wall)))
    return dict(grid=16, modes=modes, noise_std=noise, data_dim=problem.data_dim, methods=table,
                mcmc=dict(sampler="blackjax NUTS + window adaptation", chains=chains, samples=n_samples, warmup=n_warmup,
                          wall_s=mcmc_wall, mean=mcmc_mean.tolist(), sd=mcmc_sd.tolist(), rhat=rhat.tolist(),
                          divergences=int(sum(int(np.sum(o[1])) for o in outs)),
                          acceptance=float(np.mean([np.mean(o[2]) for o in outs]))),
                eks=dict(members=args.eks_members, steps=args.eks_steps, burn_in=burn, wall_s=eks_wall,
                         final_time=float(result.state.time), mean=eks_mean.tolist(), sd=eks_sd.tolist(),
                         z=z.tolist(), max_z=float(z.max()), sd_ratio=(eks_sd / mcmc_sd).tolist()),
                uki=dict(steps=args.uki_steps, mean=uki_mean.tolist(), sd=uki_sd.tolist(),
                         z=(np.abs(uki_mean - mcmc_mean) / mcmc_sd).tolist(), sd_ratio=(uki_sd / mcmc_sd).tolist()),
                truth=np.asarray(darcy.truth).tolist())  # fmt: skip


def method_table(args, darcy, mcmc_mean, mcmc_sd, done: dict) -> list[dict]:
    """Each inversion method on the Darcy problem of part 4: relative error of the
    log-permeability and data misfit of its mean, and its spread against NUTS."""
    problem = darcy.problem
    J = args.eks_members
    quarter = kx.FixedStep(0.25, end=1.0)
    methods = [
        ("EKI (stochastic, 4 steps of 1/4)", EKI(J, quarter), jax.random.key(40), None),
        ("ETKI (4 steps of 1/4)", ETKI(J, quarter), jax.random.key(41), None),
        ("ES-MDA, 4 assimilations (alpha = 4)", kx.ESMDA(J, 4), jax.random.key(42), None),
        ("ES-MDA, 8 assimilations (alpha = 8)", kx.ESMDA(J, 8), jax.random.key(43), None),
        ("EnRML, 8 Gauss-Newton iterations", kx.EnRML(J, n_iter=8), jax.random.key(44), None),
        ("UKI (prior imposed)", UKI(), None, args.uki_steps),
    ]
    rows = []

    def row(name, mean, sd, wall):
        outputs = problem.forward(jnp.asarray(mean))
        misfit = float(jnp.sum(problem.whiten((problem.y - outputs)[None, :]) ** 2))
        z = np.abs(mean - mcmc_mean) / mcmc_sd
        return dict(method=name, relative_error=float(darcy.relative_error(darcy.field(jnp.asarray(mean)))),
                    misfit_per_datum=misfit / problem.data_dim, max_z=float(z.max()),
                    sd_ratio=(sd / mcmc_sd).tolist(), wall_s=wall)  # fmt: skip

    for name, method, key, n_steps in methods:
        t0 = time.perf_counter()
        result = kx.invert(problem, method, key, n_steps)
        jax.block_until_ready(result.state)
        wall = time.perf_counter() - t0
        if isinstance(method, UKI):
            mean, sd = np.asarray(result.state.mean), np.sqrt(np.diag(np.asarray(result.state.cov)))
        else:
            members = np.asarray(result.state.members)
            mean, sd = members.mean(0), members.std(0, ddof=1)
        rows.append(row(name, mean, sd, wall))
    for name, (mean, sd, wall) in done.items():
        rows.append(row(f"{name} (part 4, time-averaged)", mean, sd, wall))
    rows.append(row("NUTS (reference)", mcmc_mean, mcmc_sd, float("nan")))
    return rows


# -- 5. linear Gaussian summary ----------------------------------------------------------------


def linear_summary(args) -> dict:
    lin = linear_gaussian(jax.random.key(30), parameter_dim=10, data_dim=20)
    problem, post = lin.problem, lin.posterior
    mean, cov = np.asarray(post.mean), np.asarray(post.cov)
    rows = []
    uki = kx.invert(problem, UKI(), None, 50)
    rows.append(dict(method="UKI (prior imposed), 50 iterations",
                     mean_rel=float(np.linalg.norm(np.asarray(uki.state.mean) - mean) / np.linalg.norm(mean)),
                     cov_rel=float(np.linalg.norm(np.asarray(uki.state.cov) - cov) / np.linalg.norm(cov)),
                     target="1e-6 / 1e-6"))  # fmt: skip
    eks = kx.invert(problem, EKS(200), jax.random.key(31), args.linear_eks_steps)
    burn = args.linear_eks_steps // 2
    eks_mean = np.asarray(eks.history.mean[burn:]).mean(0)
    rows.append(dict(method=f"EKS J=200, {args.linear_eks_steps} steps, time average of the 2nd half",
                     mean_rel=float(np.linalg.norm(eks_mean - mean) / np.linalg.norm(mean)),
                     cov_rel=None, target="5% / 15%"))  # fmt: skip
    eki = jax.vmap(lambda k: kx.invert(problem, EKI(400, kx.FixedStep(0.25, end=1.0)), k).state.members)(
        jax.random.split(jax.random.key(32), 8)
    )
    eki_means = np.asarray(eki.mean(axis=1))
    rows.append(dict(method="finite-time stochastic EKI J=400 (4 steps of 1/4), 8 seeds",
                     mean_rel=float(np.linalg.norm(eki_means.mean(0) - mean) / np.linalg.norm(mean)),
                     cov_rel=float(np.linalg.norm(np.mean([np.cov(m.T) for m in np.asarray(eki)], 0) - cov) / np.linalg.norm(cov)),
                     target="within Monte-Carlo error"))  # fmt: skip
    return dict(rows=rows)


# -- report --------------------------------------------------------------------------------


def report(res: dict, machine: dict, quick: bool) -> str:
    out = ["# Ensemble Kalman inversion and sampling: speed and accuracy", "",
           "Generated by `benchmarks/bench_inversion.py`" + (" --quick" if quick else "") + "; float64; single-threaded OpenBLAS.",
           "", "## Machine", "", common.machine_markdown(machine, "shared 2-core VM: medians of several runs; ratios"), ""]  # fmt: skip
    s = res["darcy_speed"]
    r, f = s["runs"], s["forward"]
    out += ["## 1. Darcy: one EKI iteration, forward + update in one compiled call vs a member-by-member loop", "",
            f"Grid {s['grid']} x {s['grid']}, {s['n_modes']} KL modes, {s['data_dim']} observations, J = {s['members']}, "
            f"stochastic EKI. Same ensemble all three ways: max |diff| {s['max_abs_diff']:.1e}. The loop is how a user "
            "of a library without batched forward models runs it: the compiled single-member solve called J times "
            "from Python, then the compiled update.", "",
            common.markdown_table(["run", "first call (compile)", "median per iteration", "loop / this",
                                   "forward only", "loop / this (forward)"], [
                ["kalmax `EKI.step`, members vmapped (`InverseProblem` default)", common.fmt_time(r["vmap"]["first_s"]),
                 common.fmt_time(r["vmap"]["median_s"]), common.fmt_ratio(s["ratio_vmap"]), common.fmt_time(f["vmap"]),
                 common.fmt_ratio(f["loop"] / f["vmap"])],
                ["kalmax `EKI.step`, members by `lax.map` (`map_batch_size=1`)", common.fmt_time(r["map"]["first_s"]),
                 common.fmt_time(r["map"]["median_s"]), common.fmt_ratio(s["ratio_map"]), common.fmt_time(f["map"]),
                 common.fmt_ratio(f["loop"] / f["map"])],
                ["ask/tell loop (Python loop over members + compiled tell)", common.fmt_time(r["loop"]["first_s"]),
                 common.fmt_time(r["loop"]["median_s"]), "1", common.fmt_time(f["loop"]), "1"],
            ]), "",
            "On this CPU the batched (vmapped) block-Thomas solve runs its many small Cholesky factorisations "
            "as batched LAPACK calls, which XLA:CPU executes more slowly than the same calls one member at a "
            "time; `map_batch_size=1` keeps the whole iteration in one compiled program and removes the per-member "
            "Python dispatch of the loop. On a GPU the vmapped form is the one to use.", ""]  # fmt: skip
    rows = []
    for r in res["large_data"]["rows"]:
        mem = r["memory"]
        rows.append([r["method"], f"{r['data_dim']:,}", common.fmt_time(r["first_s"]), common.fmt_time(r["median_s"]),
                     f"{r['per_data_dim_s']:.2e}", "pass" if r["per_data_dim_s"] < 1e-5 else "MISSED",
                     f"{mem['temp'] / 2**20:.0f} MiB" if mem else "—",
                     f"{mem['temp'] / r['ensemble_numbers_bytes']:.1f}" if mem else "—",
                     f"{r['p_by_p_bytes'] / 2**30:,.0f} GiB", f"{r['mean_abs_error_after']:.1e}"])  # fmt: skip
    out += ["## 2. Large data vectors: cost per data dimension and memory", "",
            "J = 50, d = 8, diagonal noise; one iteration = forward (vmapped) + update. Memory: XLA's temporary buffers "
            "of the compiled iteration, in units of the J (d + p) float64 numbers of one ensemble and its outputs.", "",
            common.markdown_table(["method", "p", "first call", "median per iteration", "s per data dim per iteration",
                                   "< 1e-5", "XLA temp memory", "temp / (J (d + p) x 8 B)", "a p x p matrix would be",
                                   "max |mean - truth| after the timed iterations"], rows), ""]  # fmt: skip
    e = res["darcy_eki"]
    errs = e["relative_error"]
    out += ["## 3. Darcy EKI stopped by the discrepancy principle", "",
            f"Grid {e['grid']}, 16 modes, J = {e['members']}, noise std 0.1, tau = 1.25: {e['message']} after "
            f"{e['iterations']} iterations ({e['wall_s']:.1f} s incl. compile). Misfit {e['misfit'][-1]:.1f} <= "
            f"tau^2 p = {e['level']:.1f}. Relative L2 error of the log-permeability (mean of the unconstrained "
            f"ensemble): {', '.join(f'{x:.3f}' for x in errs)}.", ""]  # fmt: skip
    p = res["darcy_posterior"]
    m = p["mcmc"]
    rows = []
    for i in range(p["modes"]):
        rows.append([str(i + 1), f"{m['mean'][i]:+.3f} ± {m['sd'][i]:.3f}", f"{m['rhat'][i]:.3f}",
                     f"{p['eks']['mean'][i]:+.3f}", f"{p['eks']['sd'][i]:.3f}", f"{p['eks']['z'][i]:.2f}",
                     f"{p['eks']['sd_ratio'][i]:.2f}", f"{p['uki']['mean'][i]:+.3f}", f"{p['uki']['sd'][i]:.3f}",
                     f"{p['uki']['z'][i]:.2f}", f"{p['truth'][i]:+.3f}"])  # fmt: skip
    verdict = "pass" if p["eks"]["max_z"] <= 2 else "MISSED"
    out += ["## 4. Darcy posterior: EKS and UKI against NUTS", "",
            f"Grid 16, {p['modes']} KL modes, {p['data_dim']} observations, noise std {p['noise_std']}. Reference: "
            f"{m['sampler']}, {m['chains']} chains x {m['samples']:,} samples after {m['warmup']:,} warm-up steps "
            f"({m['wall_s']:.0f} s; mean acceptance {m['acceptance']:.2f}, {m['divergences']} divergences). EKS: "
            f"J = {p['eks']['members']}, {p['eks']['steps']} steps (EKSStableStep), moments averaged over the last "
            f"{p['eks']['steps'] - p['eks']['burn_in']} iterations ({p['eks']['wall_s']:.1f} s incl. compile). "
            f"UKI: {p['uki']['steps']} iterations. z = |mean - MCMC mean| / MCMC sd.", "",
            common.markdown_table(["mode", "NUTS mean ± sd", "split R-hat", "EKS mean", "EKS sd", "EKS z",
                                   "EKS sd / NUTS sd", "UKI mean", "UKI sd", "UKI z", "truth"], rows), "",
            f"Target (EKS means within 2 posterior sd of the MCMC means, every mode): max z = {p['eks']['max_z']:.2f}: {verdict}.", ""]  # fmt: skip
    rows = [[r["method"], f"{r['relative_error']:.3f}", f"{r['misfit_per_datum']:.2f}", f"{r['max_z']:.2f}",
             f"{np.min(r['sd_ratio']):.2f} - {np.max(r['sd_ratio']):.2f}", f"{np.mean(r['sd_ratio']):.2f}",
             "" if r["wall_s"] != r["wall_s"] else f"{r['wall_s']:.1f} s"] for r in p["methods"]]
    out += ["### Every method on the same Darcy problem", "",
            f"J = {p['eks']['members']} for the ensemble methods. Relative L2 error of the log-permeability field of "
            "the mean (against the truth), data misfit |Gamma^{-1/2}(y - G(mean))|^2 per observation (about 1 at the "
            "right fit), max over the modes of |mean - NUTS mean| / NUTS sd, and the spread: the ratio of each "
            "method's marginal sd to NUTS's (1 is right; the range over the modes and its mean). Wall time includes "
            "compilation (UKI's program was compiled in the table above).", "",
            common.markdown_table(["method", "relative error", "misfit / datum", "max z vs NUTS", "sd / NUTS sd (range)",
                                   "sd / NUTS sd (mean)", "wall"], rows), ""]  # fmt: skip
    rows = [[r["method"], f"{r['mean_rel']:.2e}", "—" if r["cov_rel"] is None else f"{r['cov_rel']:.2e}", r["target"]]
            for r in res["linear"]["rows"]]  # fmt: skip
    out += ["## 5. Linear Gaussian (d = 10, p = 20) against the exact posterior", "",
            common.markdown_table(["method", "relative error of the mean", "relative Frobenius error of the covariance",
                                   "target"], rows), ""]  # fmt: skip
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    q = args.quick
    args.repeats = 3 if q else 7
    args.darcy_grid, args.darcy_members = 32, 100
    args.data_dims = [10_000, 100_000] if q else [10_000, 100_000, 1_000_000]
    args.posterior_modes, args.posterior_noise = 8, 1.0
    args.mcmc_chains, args.mcmc_samples, args.mcmc_warmup = (2, 1000, 500) if q else (4, 5000, 1000)
    args.eks_members, args.eks_steps, args.uki_steps = (100, 200, 30) if q else (200, 600, 50)
    args.linear_eks_steps = 400 if q else 2000
    machine = common.describe_machine(("jax", "jaxlib", "numpy", "equinox", "blackjax"))
    machine["blas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS")
    res = {}
    for name, fn in (("darcy_speed", darcy_speed), ("large_data", large_data), ("darcy_eki", darcy_eki),
                     ("darcy_posterior", darcy_posterior), ("linear", linear_summary)):  # fmt: skip
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        res[name] = fn(args)
        print(f"   {time.perf_counter() - t0:.0f} s", flush=True)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = report(res, machine, q)
    stem = "inversion-quick" if q else "inversion"
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / f"{stem}.md").write_text(text + "\n")
    (common.RESULTS / f"{stem}.json").write_text(json.dumps(dict(machine=machine, results=res), indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
