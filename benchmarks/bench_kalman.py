"""Kalman filter and RTS smoother: kalmax against dynamax, cuthbert, pykalman and filterpy.

    .venv/bin/python benchmarks/bench_kalman.py            # full run (about 15-20 min on 2 cores)
    .venv/bin/python benchmarks/bench_kalman.py --quick    # dx 4 and 32, T = 1,000, 3 repeats

What is timed, on identical random stable problems (state dim dx, obs dim
dx/2, T cycles, float32 and float64):

- filter: filtered means, covariances (or their Cholesky factors, for the
  square-root filters) and the total log-likelihood;
- smoother: RTS-smoothed means and covariances (and the filter under them);
- grad: `jax.grad` of the log-likelihood with respect to every model array
  (dx = 32, T = 1,000) for the JAX libraries;
- matmul: this machine's dense matmul rate (`jnp.dot` in a jitted loop), to
  read kalmax's FLOP rate at dx = 128 against.

Each JAX function is `jax.jit`-compiled with the model arrays as arguments;
the first call is timed separately (its excess over the median is the compile
time), then the median of `--repeats` calls, each ended by
`jax.block_until_ready`. Each library runs in its own worker process with a
per-job timeout (`--timeout`); a hang is recorded as `timeout`.

Identical problems. kalmax (and cuthbert, and filterpy with `predict` before
`update`) use v_0 ~ N(m_0, C_0) with y_1 observing v_1 = M v_0 + xi. dynamax
and pykalman observe their initial state; they are given the law of v_1,
N(M m_0, M C_0 M^T + Q), computed from the same arrays inside the timed (and
differentiated) function. Before timing counts, every library's filtered
means, log-likelihood and smoothed means are compared with kalmax's float64
run (`maxdiff` columns in the JSON, `check` table in the report).

Results: benchmarks/results/kalman.md (tables) and kalman.json (raw numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent

JAX_SEQ = ["kalmax", "kalmax-sqrt", "dynamax", "cuthbert"]
JAX_PAR = ["kalmax-par", "dynamax-par", "cuthbert-par"]
NUMPY = ["pykalman", "filterpy"]
# diagnostics: no outer jit; no steady state; no steady state and no covariance history; a bare scan
EXTRA = ["kalmax-api", "kalmax-full", "kalmax-lean", "jax-minimal"]
JAX_PEERS_SEQ = ["dynamax", "cuthbert"]
JAX_PEERS_PAR = ["dynamax-par", "cuthbert-par"]
GRAD_LIBS = ["kalmax", "kalmax-sqrt", "dynamax", "cuthbert", "kalmax-par", "dynamax-par", "cuthbert-par"]
NOTES = {
    "kalmax": "covariance form, `kx.assimilate` (sequential `lax.scan`)",
    "kalmax-sqrt": "`KalmanFilter(square_root=True)`, Cholesky factors by QR",
    "kalmax-lean": "`KalmanFilter(steady_state=False)` with `Save()`: the full recursion keeping means and "
    "log-likelihood terms only (every other row returns the T filtered covariances too, whose writing costs "
    "~200 µs per cycle at dx = 128 here: fresh memory and strided copies, not FLOPs); the FLOP rate of the "
    "recursion itself",
    "kalmax-full": "`KalmanFilter(steady_state=False)` / `rts_smoother(..., steady_state=False)`: the covariance "
    "recursion at every cycle (the default `kalmax` row reuses the converged covariances and gains of these "
    "time-invariant models; see `kalmax.filters.steady_state`)",
    "kalmax-par": "`parallel=True` (associative scan)",
    "kalmax-api": "`kx.assimilate(model, ...)` called directly (no outer `jax.jit`): input checks + status check each call",
    "jax-minimal": "a bare hand-written covariance-form `lax.scan` filter (no checks, no missing-data masking): the floor",
    "dynamax": "`dynamax.linear_gaussian_ssm.lgssm_filter` / `lgssm_smoother` (covariance form)",
    "dynamax-par": "`dynamax.linear_gaussian_ssm.parallel_inference` (associative scan)",
    "cuthbert": "`cuthbert.gaussian.kalman` via `cuthbert.filter/smoother` (square-root form)",
    "cuthbert-par": "the same with `parallel=True` (associative scan)",
    "pykalman": "NumPy float64; filter = `pykalman.standard._filter` + `_loglikelihoods` (one pass, what `loglikelihood()` runs), smoother = `KalmanFilter.smooth`",
    "filterpy": "NumPy float64; filter = `predict`/`update` loop reading `log_likelihood`, smoother = `batch_filter` + `rts_smoother`",
}


# ======================================================================================
# problems (parent, NumPy only)
# ======================================================================================


def make_problem(dx: int, T: int, seed: int) -> dict:
    """A random stable linear-Gaussian model and T observations simulated from it (float64)."""
    rng = np.random.default_rng(seed)
    dy = max(dx // 2, 1)
    G = rng.normal(size=(dx, dx))
    M = 0.95 * G / np.max(np.abs(np.linalg.eigvals(G)))  # spectral radius 0.95
    H = rng.normal(size=(dy, dx)) / np.sqrt(dx)
    A = rng.normal(size=(dx, dx)) / np.sqrt(dx)
    Q = 0.1 * (A @ A.T + 0.5 * np.eye(dx))
    B = rng.normal(size=(dy, dy)) / np.sqrt(dy)
    R = 0.2 * (B @ B.T + 0.5 * np.eye(dy))
    Q, R = (Q + Q.T) / 2, (R + R.T) / 2
    m0 = rng.normal(size=dx)
    C0 = np.eye(dx)
    v = m0 + np.linalg.cholesky(C0) @ rng.normal(size=dx)
    LQ, LR = np.linalg.cholesky(Q), np.linalg.cholesky(R)
    ys = np.empty((T, dy))
    for n in range(T):
        v = M @ v + LQ @ rng.normal(size=dx)
        ys[n] = H @ v + LR @ rng.normal(size=dy)
    return dict(M=M, H=H, Q=Q, R=R, m0=m0, C0=C0, ys=ys)


def kalman_step_flops(dx: int, dy: int) -> dict:
    """FLOPs of one covariance-form Kalman step as kalmax computes it (multiply-add = 2).

    forecast: M C (2 dx^3), (M C) M^T (2 dx^3); analysis: H C (2 dy dx^2),
    (H C) H^T (2 dy^2 dx), Cholesky of S (dy^3 / 3), W = L^{-1} H C (dy^2 dx),
    C - W^T W (2 dx^2 dy); the vector work is O(dx^2) and left out.
    """
    parts = {
        "M C": 2 * dx**3,
        "(M C) M^T": 2 * dx**3,
        "H C": 2 * dy * dx**2,
        "(H C) H^T": 2 * dy**2 * dx,
        "chol(S)": dy**3 / 3,
        "L^-1 (H C)": dy**2 * dx,
        "W^T W": 2 * dx**2 * dy,
    }
    return {"parts": parts, "total": float(sum(parts.values()))}


# ======================================================================================
# worker side: one library (and dtype) per process
# ======================================================================================


def _load(job):
    data = np.load(Path(job["workdir"]) / f"problem_dx{job['dx']}.npz")
    dtype = np.dtype(job["dtype"])
    p = tuple(data[k].astype(dtype) for k in ("M", "H", "Q", "R", "m0", "C0"))
    ys = data["ys"][: job["T"]].astype(dtype)
    return p, ys


def _jax_fns(lib: str, task: str):
    """(function of (params, ys), extract) for a JAX library; extract maps outputs to NumPy."""
    import jax
    import jax.numpy as jnp

    def law_of_v1(p):
        M, H, Q, R, m0, C0 = p
        return M @ m0, M @ C0 @ M.T + Q

    if lib.startswith("kalmax"):
        import kalmax as kx

        sqrt = lib == "kalmax-sqrt"
        par = lib == "kalmax-par"
        steady = lib not in ("kalmax-full", "kalmax-lean")
        if par:
            import kalmax.filters.parallel_kalman  # noqa: F401  (ImportError: not there yet)
        flt = kx.KalmanFilter(square_root=sqrt, steady_state=steady)
        save = kx.Save(mean=False, state=True) if sqrt else (kx.Save() if lib == "kalmax-lean" else kx.Save(cov=True))

        if task == "filter":

            def f(p, ys):
                _, h = kx.assimilate(kx.LinearGaussianSSM(*p), flt, ys, save=save, parallel=par)
                if sqrt:
                    return h.state.mean, h.state.chol, jnp.sum(h.info.log_likelihood)
                if h.cov is None:
                    return h.mean, jnp.sum(h.info.log_likelihood), jnp.sum(h.info.log_likelihood)
                return h.mean, h.cov, jnp.sum(h.info.log_likelihood)

            return f, lambda o: dict(mean=o[0], loglik=o[2])
        if task == "smoother":

            def f(p, ys):
                s = kx.rts_smoother(kx.LinearGaussianSSM(*p), ys, parallel=par, square_root=sqrt, steady_state=steady)
                return s.mean, s.cov, s.log_likelihood, s.filtered.mean

            return f, lambda o: dict(smooth_mean=o[0], loglik=o[2], mean=o[3])
        if task == "grad":

            def loss(p, ys):
                return kx.log_likelihood(kx.LinearGaussianSSM(*p), flt, ys, parallel=par)

            return jax.grad(loss), lambda g: dict(grad=g)

    if lib == "jax-minimal" and task == "filter":
        from jax.scipy.linalg import solve_triangular

        def f(p, ys):
            M, H, Q, R, m0, C0 = p
            dy = H.shape[0]

            def step(carry, y):
                m, C = carry
                m = M @ m
                C = M @ C @ M.T + Q
                HC = H @ C
                L = jnp.linalg.cholesky(HC @ H.T + R)
                W = solve_triangular(L, HC, lower=True)
                e = solve_triangular(L, y - H @ m, lower=True)
                m = m + W.T @ e
                C = C - W.T @ W
                ll = -0.5 * (e @ e) - jnp.sum(jnp.log(jnp.diag(L))) - 0.5 * dy * math.log(2 * math.pi)
                return (m, C), (m, C, ll)

            _, (ms, Cs, lls) = jax.lax.scan(step, (m0, C0), ys)
            return ms, Cs, jnp.sum(lls)

        return f, lambda o: dict(mean=o[0], loglik=o[2])

    if lib.startswith("dynamax"):
        from dynamax.linear_gaussian_ssm import inference as seq
        from dynamax.linear_gaussian_ssm import parallel_inference as par_inf

        mod = par_inf if lib == "dynamax-par" else seq

        def params(p):
            M, H, Q, R, m0, C0 = p
            m1, C1 = law_of_v1(p)
            return seq.make_lgssm_params(m1, C1, M, Q, H, R)

        if task == "filter":

            def f(p, ys):
                post = mod.lgssm_filter(params(p), ys)
                return post.filtered_means, post.filtered_covariances, post.marginal_loglik

            return f, lambda o: dict(mean=o[0], loglik=o[2])
        if task == "smoother":

            def f(p, ys):
                post = mod.lgssm_smoother(params(p), ys)
                return post.smoothed_means, post.smoothed_covariances, post.marginal_loglik, post.filtered_means

            return f, lambda o: dict(smooth_mean=o[0], loglik=o[2], mean=o[3])
        if task == "grad":
            return jax.grad(lambda p, ys: mod.lgssm_filter(params(p), ys).marginal_loglik), lambda g: dict(grad=g)

    if lib.startswith("cuthbert"):
        import cuthbert
        from cuthbert.gaussian import kalman as ck

        par = lib == "cuthbert-par"

        def run(p, ys, smooth):
            M, H, Q, R, m0, C0 = p
            dx, dy = M.shape[0], H.shape[0]
            chol_q, chol_r = jnp.linalg.cholesky(Q), jnp.linalg.cholesky(R)
            zx, zy = jnp.zeros(dx, M.dtype), jnp.zeros(dy, M.dtype)
            dynamics = lambda inputs: (M, zx, chol_q)  # noqa: E731
            flt = ck.build_filter(m0, jnp.linalg.cholesky(C0), dynamics, lambda y: (H, zy, chol_r, y))
            states = cuthbert.filter(flt, ys, flt.init_prepare(), parallel=par)
            out = (states.mean[1:], states.chol_cov[1:], states.log_normalizing_constant[-1])
            if smooth:
                smoothed = cuthbert.smoother(ck.build_smoother(dynamics), states, parallel=par)
                out = (smoothed.mean[1:], smoothed.chol_cov[1:], out[2], out[0])
            return out

        if task == "filter":
            return (lambda p, ys: run(p, ys, False)), lambda o: dict(mean=o[0], loglik=o[2])
        if task == "smoother":
            return (lambda p, ys: run(p, ys, True)), lambda o: dict(smooth_mean=o[0], loglik=o[2], mean=o[3])
        if task == "grad":
            return jax.grad(lambda p, ys: run(p, ys, False)[2]), lambda g: dict(grad=g)

    raise ValueError(f"no {task} for {lib}")


def _numpy_fn(lib: str, task: str, p, ys):
    M, H, Q, R, m0, C0 = p
    dx, dy = M.shape[0], H.shape[0]
    if lib == "pykalman":
        from pykalman import KalmanFilter
        from pykalman.standard import _filter, _loglikelihoods

        m1, C1 = M @ m0, M @ C0 @ M.T + Q
        kf = KalmanFilter(
            transition_matrices=M, observation_matrices=H, transition_covariance=Q,
            observation_covariance=R, initial_state_mean=m1, initial_state_covariance=C1,
            transition_offsets=np.zeros(dx), observation_offsets=np.zeros(dy),
        )  # fmt: skip
        if task == "filter":

            def f():
                Z = kf._parse_observations(ys)
                pm, pC, _, fm, fC = _filter(M, H, Q, R, np.zeros(dx), np.zeros(dy), m1, C1, Z)
                return fm, fC, float(np.sum(_loglikelihoods(H, np.zeros(dy), R, pm, pC, Z)))

            return f, lambda o: dict(mean=o[0], loglik=o[2])

        def f():
            return kf.smooth(ys)

        return f, lambda o: dict(smooth_mean=o[0])
    if lib == "filterpy":
        from filterpy.kalman import KalmanFilter

        def new():
            kf = KalmanFilter(dim_x=dx, dim_z=dy)
            kf.F, kf.H, kf.Q, kf.R = M.copy(), H.copy(), Q.copy(), R.copy()
            kf.x, kf.P = m0.copy(), C0.copy()
            return kf

        if task == "filter":

            def f():
                kf = new()
                T = ys.shape[0]
                means, covs, ll = np.empty((T, dx)), np.empty((T, dx, dx)), 0.0
                for n in range(T):
                    kf.predict()
                    kf.update(ys[n])
                    means[n], covs[n] = kf.x, kf.P
                    ll += kf.log_likelihood
                return means, covs, ll

            return f, lambda o: dict(mean=o[0], loglik=o[2])

        def f():
            kf = new()
            mu, cov, _, _ = kf.batch_filter(ys)  # predict, then update (update_first=False)
            return kf.rts_smoother(mu, cov)

        return f, lambda o: dict(smooth_mean=o[0])
    raise ValueError(lib)


def _compare(out: dict, ref: dict | None) -> dict:
    """Max abs differences of means / smoothed means / gradients, and the log-likelihood difference."""
    if ref is None:
        return {}
    d = {}
    for k in ("mean", "smooth_mean"):
        if k in out and k in ref:
            d[f"maxdiff_{k}"] = float(np.max(np.abs(np.asarray(out[k], np.float64) - ref[k])))
    if "loglik" in out and "loglik" in ref:
        d["diff_loglik"] = float(abs(float(out["loglik"]) - float(ref["loglik"])))
        d["rel_diff_loglik"] = d["diff_loglik"] / max(abs(float(ref["loglik"])), 1.0)
    if "grad" in out and "grad0" in ref:
        worst = 0.0
        for i, g in enumerate(out["grad"]):
            g = np.asarray(g, np.float64)
            r = ref[f"grad{i}"]
            if g.ndim == 2 and g.shape[0] == g.shape[1] and i in (2, 3, 5):  # covariances: symmetric part
                g, r = (g + g.T) / 2, (r + r.T) / 2
            worst = max(worst, float(np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-300)))
        d["rel_maxdiff_grad"] = worst
    return d


def _ref_path(job):
    return Path(job["workdir"]) / f"ref_{job['task']}_dx{job['dx']}_T{job['T']}.npz"


def _matmul_job(job):
    import jax
    import jax.numpy as jnp

    dtype = job["dtype"]
    rows = []
    for n in job["sizes"]:
        rng = np.random.default_rng(n)
        a = np.linalg.qr(rng.normal(size=(n, n)))[0].astype(dtype)  # orthogonal: no growth
        x = rng.normal(size=(n, n)).astype(dtype)
        k = max(2, int(4e9 / (2 * n**3)))
        loop = jax.jit(lambda a, x, k=k: jax.lax.fori_loop(0, k, lambda i, x: a @ x, x))
        timing, _ = common.time_call(loop, (jnp.asarray(a), jnp.asarray(x)), repeats=job["repeats"])
        rows.append({"n": n, "iters": k, "gflops": 2 * n**3 * k / timing["median_s"] / 1e9, **timing})
    return {"matmul": rows}


def worker() -> None:
    jobs = json.loads(sys.stdin.read())
    per_step: dict = {}
    for job in jobs:
        common.emit(common.START, job["id"])
        result = dict(job)
        try:
            if job["task"] == "matmul":
                result.update(status="ok", **_matmul_job(job))
            else:
                result.update(status="ok", per_lib=_run_row(job, per_step))
        except Exception as e:  # noqa: BLE001 - report and go on with the next job
            traceback.print_exc()
            result.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
        common.emit(common.RESULT, result)


def _prepare(lib, job, p, ys):
    """(fn, args, extract) for one library on one row."""
    task = job["task"]
    if lib in NUMPY:
        fn, extract = _numpy_fn(lib, task, p, ys)
        return fn, (), extract, {}
    import jax
    import jax.numpy as jnp

    pj, ysj = tuple(jnp.asarray(a) for a in p), jnp.asarray(ys)
    if lib == "matmul":  # dense n x n products, as many FLOPs as kalmax's filter on this row
        n, T = job["dx"], job["T"]
        k = max(1, round(T * kalman_step_flops(n, max(n // 2, 1))["total"] / (2 * n**3)))
        rng = np.random.default_rng(n)
        a = jnp.asarray(np.linalg.qr(rng.normal(size=(n, n)))[0].astype(job["dtype"]))  # orthogonal: no growth
        x = jnp.asarray(rng.normal(size=(n, n)).astype(job["dtype"]))
        loop = jax.jit(lambda a, x: jax.lax.fori_loop(0, k, lambda i, x: a @ x, x))
        return loop, (a, x), lambda o: {}, {"matmul_flops": 2.0 * n**3 * k}
    if lib == "kalmax-api":  # the model is built once, outside; each call is the public API
        import kalmax as kx

        model, flt, save = kx.LinearGaussianSSM(*pj), kx.KalmanFilter(), kx.Save(cov=True)

        def fn(ysj):
            _, h = kx.assimilate(model, flt, ysj, save=save)
            return h.mean, h.cov, jnp.sum(h.info.log_likelihood)

        return fn, (ysj,), lambda o: dict(mean=o[0], loglik=o[2]), {}
    f, extract = _jax_fns(lib, task)
    return jax.jit(f), (pj, ysj), extract, {}


def _estimate(per_step, lib, task, dx, T, dtype) -> float | None:
    """Seconds one run will take, from the rows already measured (cost per step ~ dx^3 for dx >= 32)."""
    known = per_step.get((lib, task, dtype), {})
    if dx in known:
        return known[dx] * T
    below = [d for d in known if 32 <= d < dx]
    if below:
        d = max(below)
        return known[d] * (dx / d) ** 3 * T
    return None


def _run_row(job, per_step) -> dict:
    """Time every library of `job["libs"]` on one row, interleaving their timed calls.

    Each library is compiled and run once (the first call), then the timed calls
    go round-robin over the libraries, so that a change of load on a shared
    machine hits all of them alike. A library stops repeating once its timed
    calls took `max_repeat_s` (after at least one).
    """
    task, T = job["task"], job["T"]
    p, ys = _load(job)
    out: dict = {}
    live: dict = {}
    for lib in job["libs"]:
        est = _estimate(per_step, lib, task, job["dx"], T, job["dtype"])
        if est is not None and est > job["max_run_s"]:
            out[lib] = {"status": "skipped", "reason": f"est. {est:.0f} s a run > {job['max_run_s']:.0f} s"}
            continue
        try:
            fn, args, extract, meta = _prepare(lib, job, p, ys)
            t0 = time.perf_counter()
            res = common._block(fn(*args))
            first = time.perf_counter() - t0
        except ImportError as e:
            out[lib] = {"status": "unavailable", "error": f"{type(e).__name__}: {e}"}
            continue
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            out[lib] = {"status": "error", "error": f"{type(e).__name__}: {str(e)[:300]}"}
            continue
        res = extract(res)
        res = {k: (v if k == "grad" else np.asarray(v)) for k, v in res.items()}
        if lib == "kalmax" and job.get("is_ref"):
            ref = {k: np.asarray(v, np.float64) for k, v in res.items() if k != "grad"}
            if "grad" in res:
                ref.update({f"grad{i}": np.asarray(g, np.float64) for i, g in enumerate(res["grad"])})
            np.savez(_ref_path(job), **ref)
        finite = all(np.all(np.isfinite(np.asarray(v, np.float64))) for k, v in res.items() if k != "grad")
        out[lib] = {"status": "ok", "first_s": first, "finite": bool(finite),
                    "loglik": float(res["loglik"]) if "loglik" in res else None, **meta}  # fmt: skip
        out[lib]["_res"] = res
        if job.get("ref_only"):
            continue
        live[lib] = (fn, args)
        out[lib]["times"] = []
    for _ in range(job["repeats"]):
        for lib, (fn, args) in list(live.items()):
            t0 = time.perf_counter()
            common._block(fn(*args))
            out[lib]["times"].append(time.perf_counter() - t0)
            if sum(out[lib]["times"]) > job["max_repeat_s"]:
                del live[lib]
    ref_file = _ref_path(job)
    ref = dict(np.load(ref_file)) if ref_file.exists() else None
    for lib, r in out.items():
        if r["status"] != "ok":
            continue
        r.update(_compare(r.pop("_res"), ref))
        if r.get("times"):
            med = statistics.median(r["times"])
            r.update(median_s=med, min_s=min(r["times"]), compile_s=max(r["first_s"] - med, 0.0), repeats=len(r["times"]))
            per_step[(lib, task, job["dtype"])] = {**per_step.get((lib, task, job["dtype"]), {}), job["dx"]: med / T}
    return out


# ======================================================================================
# parent: plan, run the workers, write the report
# ======================================================================================


def plan(args) -> list[list[dict]]:
    """Jobs grouped by worker process.

    float64 runs first (kalmax's float64 run is the reference every library is
    checked against). The sequential JAX libraries share one worker per dtype
    and are timed together row by row; each parallel library and each NumPy
    library has its own worker, with one job per row, so a hang costs one row.
    """
    groups_skip.clear()
    fields = dict(workdir=str(args.workdir), repeats=args.repeats, max_repeat_s=args.max_repeat_s)
    rows = [(dx, T) for dx in args.dx for T in args.T]
    seq_libs = [lib for lib in [*JAX_SEQ, *EXTRA] if lib in args.libs]
    groups = []

    def job(task, libs, dx, T, dtype, **extra):
        name = libs[0] if len(libs) == 1 else "seq"
        return dict(id=f"{name}/{task}/dx{dx}/T{T}/{dtype}", task=task, libs=libs, dx=dx, T=T, dtype=dtype,
                    **{**fields, **extra})  # fmt: skip

    if "float64" not in args.dtypes:  # the reference, untimed
        groups.append(
            [job(t, ["kalmax"], dx, T, "float64", ref_only=True, is_ref=True, max_run_s=1e9)
             for t in ("filter", "smoother") for dx, T in rows]
            + ([job("grad", ["kalmax"], args.grad_dx, args.grad_T, "float64", ref_only=True, is_ref=True,
                    max_run_s=1e9)] if args.grad else [])  # fmt: skip
        )
    dtypes = sorted(args.dtypes, key=lambda d: d != "float64")
    for dtype in dtypes:  # sequential JAX libraries, interleaved per row
        jobs = []
        for task in ("filter", "smoother"):
            libs = [lib for lib in seq_libs if task == "filter" or lib not in EXTRA or lib == "kalmax-full"]
            for dx, T in rows:
                if args.matmul and dx == max(args.dx) and not any(j["task"] == "matmul" for j in jobs):
                    jobs.append(dict(id=f"machine/matmul/{dtype}", task="matmul", libs=["machine"], dx=None,
                                     T=None, dtype=dtype, sizes=args.matmul_sizes, **fields))  # fmt: skip
                row_libs = libs
                if (dx, T) in args.long_rows:  # 20-90 s a run for each library here: not by default
                    row_libs = []
                    for lib in libs:
                        groups_skip.append((lib, task, dx, T, dtype, LONG_ROW_REASON))
                if task == "filter" and dx >= 64 and "kalmax" in row_libs and args.matmul:
                    row_libs = [*row_libs, "matmul"]  # the matmul rate, timed in turn with the filters
                if row_libs:
                    jobs.append(job(task, row_libs, dx, T, dtype, max_run_s=args.max_run_s,
                                    is_ref=dtype == "float64"))  # fmt: skip
        if args.grad:
            libs = [lib for lib in JAX_SEQ if lib in args.libs]
            jobs.append(job("grad", libs, args.grad_dx, args.grad_T, dtype, max_run_s=args.max_run_s,
                            is_ref=dtype == "float64"))  # fmt: skip
        groups.append(jobs)
    if "float64" in args.dtypes:  # NumPy libraries compute in float64
        for lib in [lib for lib in NUMPY if lib in args.libs]:
            jobs = []
            for task in ("filter", "smoother"):
                for dx, T in rows:
                    if dx >= 128 and T >= 10_000:
                        groups_skip.append((lib, task, dx, T, "float64", "NumPy at dx=128, T=10,000: not run (> 30 s a run)"))
                        continue
                    jobs.append(job(task, [lib], dx, T, "float64", max_run_s=args.numpy_max_run_s))
            groups.append(jobs)
    for lib in [lib for lib in JAX_PAR if lib in args.libs]:
        for dtype in dtypes:
            jobs = []
            if dtype in args.par_dtypes:
                for task in ("filter", "smoother"):
                    for dx, T in rows:
                        if (dx, T) in args.par_rows[task]:
                            jobs.append(job(task, [lib], dx, T, dtype, max_run_s=args.max_run_s))
            if args.grad and dtype in args.par_grad_dtypes:
                jobs.append(job("grad", [lib], args.grad_dx, args.grad_T, dtype, max_run_s=args.max_run_s))
            if jobs:
                groups.append(jobs)
    return groups


groups_skip: list = []  # (lib, task, dx, T, dtype, reason): rows not run by design
LONG_ROW_REASON = ("not run by default at dx=128, T=10,000 (20-90 s a run for each library on this shared "
                   "2-core machine; the cost per step does not depend on T, see T=1,000; --full-128 runs it)")  # fmt: skip


def run_all(args) -> list[dict]:
    """Run every worker group; return one flat record per (library, task, row, dtype)."""
    results = []
    log_path = args.workdir / "workers.log"
    with open(log_path, "a") as log:
        for jobs in plan(args):
            env = dict(os.environ)
            env["JAX_ENABLE_X64"] = "1" if jobs[0]["dtype"] == "float64" else "0"
            env.setdefault("PYTHONWARNINGS", "ignore")
            if args.blas_threads > 0:
                for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                    env[var] = str(args.blas_threads)
            label = f"{jobs[0]['id'].split('/')[0]} {jobs[0]['dtype']}"
            for r in common.run_jobs(Path(__file__), jobs, env, args.timeout, log, label):
                base = {k: v for k, v in r.items() if k not in ("per_lib", "libs", "workdir")}
                if r["task"] == "matmul":
                    recs = [{**base, "lib": "machine"}]
                elif r["status"] == "ok":
                    recs = [{**base, **rec, "lib": lib, "id": _rid(lib, r)} for lib, rec in r["per_lib"].items()]
                else:  # the whole job timed out, crashed or failed
                    recs = [{**base, "lib": lib, "id": _rid(lib, r)} for lib in r["libs"]]
                for rec in recs:
                    results.append(rec)
                    if not rec.get("ref_only"):
                        print("  " + _progress(rec), flush=True)
    for lib, task, dx, T, dtype, reason in groups_skip:
        rec = dict(lib=lib, task=task, dx=dx, T=T, dtype=dtype, status="skipped", reason=reason)
        rec["id"] = _rid(lib, rec)
        results.append(rec)
    return results


def _rid(lib, r) -> str:
    return f"{lib}/{r['task']}/dx{r['dx']}/T{r['T']}/{r['dtype']}"


def _progress(r) -> str:
    s = f"{r['id']:<44} {r['status']:<8}"
    if r["status"] == "ok" and r["task"] == "matmul":
        s += " " + ", ".join(f"n={m['n']}: {m['gflops']:.1f} GFLOP/s" for m in r["matmul"])
    elif r["status"] == "ok":
        if "median_s" in r:
            s += f" median {common.fmt_time(r['median_s']):>9} (n={r['repeats']})  first call {common.fmt_time(r['first_s']):>9}"
        for k in ("maxdiff_mean", "maxdiff_smooth_mean", "rel_diff_loglik", "rel_maxdiff_grad"):
            if k in r:
                s += f"  {k}={r[k]:.1e}"
        if not r.get("finite", True):
            s += "  NON-FINITE OUTPUT"
    else:
        s += " " + str(r.get("reason") or r.get("error") or "")
    return s


# -- report ----------------------------------------------------------------------------


def _tolerance(dtype: str) -> tuple[float, float]:
    """(max abs mean difference, relative log-likelihood difference) counted as agreement."""
    return (1e-6, 1e-6) if dtype == "float64" else (5e-2, 1e-3)


def _agrees(r) -> bool | None:
    if r.get("status") != "ok":
        return None
    tol_mean, tol_ll = _tolerance(r["dtype"])
    checks = []
    for k in ("maxdiff_mean", "maxdiff_smooth_mean"):
        if k in r:
            checks.append(r[k] <= tol_mean)
    if "rel_diff_loglik" in r:
        checks.append(r["rel_diff_loglik"] <= tol_ll)
    if "rel_maxdiff_grad" in r:
        checks.append(r["rel_maxdiff_grad"] <= (1e-6 if r["dtype"] == "float64" else 5e-2))
    return all(checks) if checks else None


def _cell(r, base=None) -> str:
    if r is None:
        return "—"
    if r["status"] != "ok":
        return {"skipped": "skipped", "timeout": "timeout", "unavailable": "n/a"}.get(r["status"], r["status"])
    s = common.fmt_time(r["median_s"])
    if base is not None and base.get("status") == "ok" and r is not base:
        s += f" ({common.fmt_ratio(r['median_s'] / base['median_s'])})"
    if _agrees(r) is False:
        s += " ≠"
    return s


def report(args, machine, results) -> str:
    by = {(r["lib"], r["task"], r.get("dx"), r.get("T"), r["dtype"]): r for r in results if not r.get("ref_only")}
    rows = [(dx, T) for dx in args.dx for T in args.T]
    out = [
        "# Kalman filter and smoother benchmark",
        "",
        "Generated by `benchmarks/bench_kalman.py`"
        + (" `--quick`" if args.quick else "")
        + f" (median of {args.repeats} calls after a first, compiling call; "
        "`jax.block_until_ready`). Cells: time (peer time / kalmax time; > 1 means kalmax is faster). "
        "`≠` marks a result that does not agree with kalmax's float64 run within tolerance. "
        "Every JAX function is `jax.jit`-compiled with the model arrays as arguments.",
        "",
        "## Machine",
        "",
        common.machine_markdown(
            machine,
            "the machine was shared: other processes (test suites of colleagues) ran during this "
            "benchmark, so timings are noisy (a few tens of per cent); ratios measured close in time are "
            "more reliable than absolute times.",
        ),
        "",
        "## What runs",
        "",
        *[f"- **{lib}**: {NOTES[lib]}" for lib in NOTES if lib in args.libs],
        "",
        "Identical problems: random stable M (spectral radius 0.95), H, Q, R; dy = dx/2; "
        "observations simulated from the model. dynamax and pykalman observe their initial state, so they "
        "are given N(M m0, M C0 M^T + Q), the law of v_1 (computed inside the timed function).",
        "",
    ]
    for task in ("filter", "smoother"):
        for dtype in args.dtypes:
            libs = [lib for lib in [*JAX_SEQ, *NUMPY, *(EXTRA if task == "filter" else ["kalmax-full"])] if lib in args.libs]
            if dtype != "float64":
                libs = [lib for lib in libs if lib not in NUMPY]
            title = "filter + log-likelihood" if task == "filter" else "RTS smoother (filter + backward pass)"
            out += [f"## {title}, sequential, {dtype}", ""]
            header = ["dx", "T", *libs, "fastest JAX peer / kalmax"]
            body = []
            for dx, T in rows:
                base = by.get(("kalmax", task, dx, T, dtype))
                cells = [_cell(by.get((lib, task, dx, T, dtype)), base) for lib in libs]
                peers = [by.get((lib, task, dx, T, dtype)) for lib in JAX_PEERS_SEQ]
                peers = [p for p in peers if p and p["status"] == "ok"]
                best = ""
                if peers and base and base["status"] == "ok":
                    fastest = min(peers, key=lambda p: p["median_s"])
                    best = f"{common.fmt_ratio(fastest['median_s'] / base['median_s'])} ({fastest['lib']})"
                body.append([dx, f"{T:,}", *cells, best])
            out += [common.markdown_table(header, body), ""]
    for task in ("filter", "smoother"):
        for dtype in args.dtypes:
            libs = [lib for lib in JAX_PAR if lib in args.libs]
            par_rows = [(dx, T) for dx, T in rows if (dx, T) in args.par_rows[task]]
            if not libs or dtype not in args.par_dtypes or not par_rows:
                continue
            out += [f"## parallel (associative scan) {task}, {dtype}", "",
                    "Ratios to kalmax-par; the last column is kalmax-par's time over kalmax's sequential one "
                    "(> 1: the parallel form is slower on this CPU, as expected: it does about twice the "
                    "work, and a CPU gains nothing from its O(log T) depth).", ""]  # fmt: skip
            header = ["dx", "T", *libs, "kalmax-par / kalmax (sequential)"]
            body = []
            for dx, T in par_rows:
                base = by.get(("kalmax-par", task, dx, T, dtype))
                seq = by.get(("kalmax", task, dx, T, dtype))
                vs = ""
                if base and seq and base["status"] == "ok" and seq["status"] == "ok":
                    vs = common.fmt_ratio(base["median_s"] / seq["median_s"])
                body.append([dx, f"{T:,}", *[_cell(by.get((lib, task, dx, T, dtype)), base) for lib in libs], vs])
            out += [common.markdown_table(header, body), ""]
    # compile times
    out += ["## compile time (first call minus median), seconds", ""]
    comp_libs = [lib for lib in [*JAX_SEQ, *JAX_PAR] if lib in args.libs]
    header = ["task", "dtype", "dx", "T", *comp_libs]
    body = []
    for task in ("filter", "smoother"):
        for dtype in args.dtypes:
            for dx, T in rows:
                cells = []
                for lib in comp_libs:
                    r = by.get((lib, task, dx, T, dtype))
                    cells.append(f"{r['compile_s']:.2f}" if r and r["status"] == "ok" else (r["status"] if r else "—"))
                if any(c not in ("—", "skipped") for c in cells):
                    body.append([task, dtype, dx, f"{T:,}", *cells])
    out += [common.markdown_table(header, body), ""]
    # gradients
    if args.grad:
        out += [f"## `jax.grad` of the log-likelihood (dx={args.grad_dx}, T={args.grad_T:,})", "",
                "With respect to all six model arrays; ratios to kalmax (sequential). Compile time in brackets.", ""]  # fmt: skip
        libs = [lib for lib in GRAD_LIBS if lib in args.libs]
        body = []
        for dtype in args.dtypes:
            base = by.get(("kalmax", "grad", args.grad_dx, args.grad_T, dtype))
            cells = []
            for lib in libs:
                r = by.get((lib, "grad", args.grad_dx, args.grad_T, dtype))
                c = _cell(r, base)
                if r and r["status"] == "ok":
                    c += f" [{r['compile_s']:.1f} s]"
                cells.append(c)
            body.append([dtype, *cells])
        out += [common.markdown_table(["dtype", *libs], body), ""]
    out += _targets(args, by)
    out += _flop_section(args, by)
    # checks
    out += ["## agreement with kalmax (float64 run)", "",
            "Largest over the rows: max |Δ filtered mean|, max |Δ smoothed mean|, |Δ log-lik| / max(|log-lik|, 1), "
            "and for gradients max |Δ| / max |grad| (symmetric parts for the covariances). "
            "Tolerances: float64 1e-6 (means and relative log-lik); float32 5e-2 and 1e-3.", ""]  # fmt: skip
    body = []
    for dtype in args.dtypes:
        for lib in [*JAX_SEQ, *EXTRA, *JAX_PAR, *NUMPY]:
            rs = [r for r in results if r["lib"] == lib and r["dtype"] == dtype and r["status"] == "ok" and not r.get("ref_only")]
            if not rs:
                continue
            cols = []
            for k in ("maxdiff_mean", "maxdiff_smooth_mean", "rel_diff_loglik", "rel_maxdiff_grad"):
                vals = [r[k] for r in rs if k in r]
                cols.append(f"{max(vals):.1e}" if vals else "—")
            ok = [_agrees(r) for r in rs]
            verdict = "ok" if all(a is not False for a in ok) else "MISMATCH"
            body.append([lib, dtype, *cols, verdict])
    out += [common.markdown_table(["library", "dtype", "mean", "smoothed mean", "log-lik (rel)", "grad (rel)", ""], body), ""]
    failed = [r for r in results if r["status"] not in ("ok", "skipped") and not r.get("ref_only")]
    skipped = [r for r in results if r["status"] == "skipped"]
    if failed or skipped:
        out += ["## not measured", ""]
        out += [f"- {r['id']}: {r['status']} {r.get('reason') or r.get('error') or ''}".rstrip() for r in [*failed, *skipped]]
        out += [""]
    return "\n".join(out)


def _targets(args, by) -> list[str]:
    """The issue's targets, row by row: met or missed, by median and by fastest call."""
    out = ["## targets", "",
           "Targets: kalmax at least as fast as the fastest sequential JAX peer on every row; at least 10x "
           "faster than pykalman and filterpy at dx <= 32; at dx = 128, at least 70% of the matmul rate. "
           "Ratio = peer time / kalmax time, by median and (in brackets) by the fastest call, which is less "
           "sensitive to other processes on a shared machine.", ""]  # fmt: skip
    body = []

    def ratio(peer, base, key):
        return peer[key] / base[key]

    for task in ("filter", "smoother", "grad"):
        for dtype in args.dtypes:
            task_rows = [(args.grad_dx, args.grad_T)] if task == "grad" else [(dx, T) for dx in args.dx for T in args.T]
            for dx, T in task_rows:
                base = by.get(("kalmax", task, dx, T, dtype))
                if not base or base["status"] != "ok":
                    continue
                peers = [by.get((lib, task, dx, T, dtype)) for lib in JAX_PEERS_SEQ]
                peers = [p for p in peers if p and p["status"] == "ok"]
                if peers:
                    fast = min(peers, key=lambda p: p["median_s"])
                    r, rmin = ratio(fast, base, "median_s"), ratio(fast, base, "min_s")
                    body.append([task, dtype, dx, f"{T:,}", f"fastest JAX peer ({fast['lib']})", ">= 1",
                                 f"{r:.2f} ({rmin:.2f})", "met" if r >= 1 else ("within noise" if rmin >= 1 else "MISSED")])  # fmt: skip
                if dx <= 32 and dtype == "float64":
                    for lib in NUMPY:
                        peer = by.get((lib, task, dx, T, dtype))
                        if peer and peer["status"] == "ok":
                            r, rmin = ratio(peer, base, "median_s"), ratio(peer, base, "min_s")
                            body.append([task, dtype, dx, f"{T:,}", lib, ">= 10", f"{r:.1f} ({rmin:.1f})",
                                         "met" if r >= 10 else "MISSED"])  # fmt: skip
    for dtype in args.dtypes:
        for dx, T in [(dx, T) for dx in args.dx for T in args.T if dx >= 128]:
            rate, how = _matmul_rate(by, dx, T, dtype)
            for lib in ("kalmax-lean", "kalmax-full"):
                r = by.get((lib, "filter", dx, T, dtype))
                if rate and r and r["status"] == "ok":
                    g = kalman_step_flops(dx, dx // 2)["total"] * T / r["median_s"] / 1e9
                    body.append(["filter", dtype, dx, f"{T:,}", f"share of the matmul rate ({how}; {lib})", ">= 70%",
                                 f"{100 * g / rate:.0f}%", "met" if g >= 0.7 * rate else "MISSED"])  # fmt: skip
    out += [common.markdown_table(["task", "dtype", "dx", "T", "against", "target", "ratio", ""], body), ""]
    return out


def _matmul_rate(by, dx, T, dtype):
    """(GFLOP/s, how) of dense dx x dx products: timed in turn with the filters on this row if it was."""
    r = by.get(("matmul", "filter", dx, T, dtype))
    if r and r.get("status") == "ok" and r.get("median_s"):
        return r["matmul_flops"] / r["median_s"] / 1e9, f"n={dx}, timed in turn with the filters"
    mm = by.get(("machine", "matmul", None, None, dtype))
    if mm and mm.get("status") == "ok":
        rates = {m["n"]: m["gflops"] for m in mm["matmul"]}
        n = dx if dx in rates else max(rates)
        return rates[n], f"n={n}, separate loop"
    return None, ""


def _flop_section(args, by) -> list[str]:
    out = ["## FLOP rate against this machine's matmul rate", "",
           "matmul: `a @ x` with n x n matrices iterated in a jitted `fori_loop` (2 n^3 FLOPs each): first a "
           "sweep over n, then, on the dx >= 128 filter rows, as many n = dx products as the filter's FLOPs, "
           "timed in turn with the filters (so both see the same load). kalmax's FLOPs per covariance-form step: "
           "M C M^T 4 dx^3, H C 2 dy dx^2, H C H^T 2 dy^2 dx, chol(S) dy^3/3, L^-1 H C dy^2 dx, W^T W 2 dx^2 dy "
           "(vector work left out). These counts hold for the full recursion: the rows below are kalmax-lean and "
           "kalmax-full (`steady_state=False`, without and with the covariance history); the default kalmax row "
           "skips the covariance recursion once it has converged and does far fewer FLOPs.", ""]  # fmt: skip
    n0 = len(out)
    for dtype in args.dtypes:
        mm = by.get(("machine", "matmul", None, None, dtype))
        if mm and mm["status"] == "ok":
            out += [f"- {dtype}: matmul sweep " + ", ".join(f"n={m['n']}: {m['gflops']:.1f}" for m in mm["matmul"])
                    + " GFLOP/s"]  # fmt: skip
        for dx, T in [(dx, T) for dx in args.dx for T in args.T if dx >= 32]:
            flops = kalman_step_flops(dx, max(dx // 2, 1))["total"]
            rate, how = _matmul_rate(by, dx, T, dtype)
            if rate and ("matmul", "filter", dx, T, dtype) in by:
                out.append(f"  - matmul n={dx} (T={T:,} row): {rate:.1f} GFLOP/s")
            for lib in ("kalmax-lean", "kalmax-full", "jax-minimal", "dynamax"):
                r = by.get((lib, "filter", dx, T, dtype))
                if not r or r["status"] != "ok" or not rate:
                    continue
                g = flops * T / r["median_s"] / 1e9
                out.append(
                    f"  - {lib} filter dx={dx}, T={T:,}: {flops / 1e6:.2f} MFLOP/step, "
                    f"{r['median_s'] / T * 1e6:.1f} µs/step, {g:.1f} GFLOP/s = {100 * g / rate:.0f}% of the "
                    f"matmul rate ({how})"
                )
    return out + [""] if len(out) > n0 else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="dx 4 and 32, T=1,000, 3 repeats (a smoke test)")
    ap.add_argument("--dx", type=int, nargs="+", default=None, help="state dimensions (default 4 32 128)")
    ap.add_argument("--T", type=int, nargs="+", default=None, help="numbers of cycles (default 1000 10000)")
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    ap.add_argument("--libs", nargs="+", default=[*JAX_SEQ, *EXTRA, *JAX_PAR, *NUMPY],
                    help="libraries to run (default all): " + " ".join([*JAX_SEQ, *EXTRA, *JAX_PAR, *NUMPY]))  # fmt: skip
    ap.add_argument("--repeats", type=int, default=None, help="timed calls after the first (default 5; 3 with --quick)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per job before it counts as a hang")
    ap.add_argument("--max-run-s", type=float, default=60.0, help="skip a JAX row whose estimated single run exceeds this")
    ap.add_argument("--numpy-max-run-s", type=float, default=30.0, help="the same for pykalman and filterpy")
    ap.add_argument("--max-repeat-s", type=float, default=30.0, help="stop repeating once the repeats took this long")
    ap.add_argument("--all-parallel-rows", action="store_true",
                    help="run the parallel filters on every row and dtype (default: a subset, float64; "
                    "each of their compiles takes 20-45 s on a 2-core CPU)")
    ap.add_argument("--full-128", action="store_true",
                    help="also run the row dx=128, T=10,000 (20-90 s a run for each library on a 2-core CPU)")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="OPENBLAS/OMP/MKL_NUM_THREADS for every worker (default 1; 0 leaves the environment). "
                    "jax's CPU LAPACK calls (triangular solves, Cholesky) go to OpenBLAS, whose threads are "
                    "10-30x slower on small matrices when the 2 cores are shared")
    ap.add_argument("--no-grad", dest="grad", action="store_false", help="skip the jax.grad timings")
    ap.add_argument("--no-matmul", dest="matmul", action="store_false", help="skip the matmul-rate measurement")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for kalman.md and kalman.json")
    ap.add_argument("--name", default="kalman", help="base name of the result files")
    args = ap.parse_args()
    if args.worker:
        worker()
        return
    args.dx = args.dx or ([4, 32] if args.quick else [4, 32, 128])
    args.T = args.T or ([1000] if args.quick else [1000, 10_000])
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.grad_dx, args.grad_T = 32, 1000
    args.long_rows = set() if args.full_128 else {(128, 10_000)}
    if args.all_parallel_rows:
        every = {(dx, T) for dx in args.dx for T in args.T}
        args.par_rows = {"filter": every, "smoother": every}
        args.par_dtypes = args.par_grad_dtypes = list(args.dtypes)
    elif args.quick:
        args.par_rows = {"filter": {(4, 1000)}, "smoother": {(4, 1000)}}
        args.par_dtypes, args.par_grad_dtypes = ["float64"], []
    else:
        args.par_rows = {"filter": {(4, 1000), (32, 1000), (32, 10_000)}, "smoother": {(4, 1000), (32, 1000)}}
        args.par_dtypes, args.par_grad_dtypes = ["float64"], ["float64"]
    args.matmul_sizes = [n for n in (32, 64, 128, 256, 512, 1024) if args.quick is False or n <= 256]
    machine = common.describe_machine(["jax", "jaxlib", "numpy", "equinox", "dynamax", "cuthbert", "pykalman", "filterpy"])
    t_start = time.time()
    print(f"Kalman benchmark on {machine['cpu']}, {machine['cores']} cores; load {machine['load_average_at_start']}")
    print(f"rows dx={args.dx} T={args.T} dtypes={args.dtypes}; {args.repeats} repeats; timeout {args.timeout:.0f} s per job")
    print(f"{'job':<44} {'status':<8} timings and max differences to kalmax float64", flush=True)
    with tempfile.TemporaryDirectory(prefix="kalmax-bench-") as tmp:
        args.workdir = Path(tmp)
        for dx in sorted(set([*args.dx, args.grad_dx])):
            np.savez(args.workdir / f"problem_dx{dx}.npz", **make_problem(dx, max([*args.T, args.grad_T]), seed=dx))
        results = run_all(args)
        log_text = (args.workdir / "workers.log").read_text()
    machine["wall_time_s"] = round(time.time() - t_start, 1)
    machine["blas_threads"] = args.blas_threads or os.environ.get("OPENBLAS_NUM_THREADS", "default")
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    md = report(args, machine, results)
    md = md.replace("- load average at start:", f"- wall time {machine['wall_time_s']:.0f} s; load average at end "
                    f"{machine['load_average_at_end']}, at start:")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(md)
    flops = {dx: kalman_step_flops(dx, max(dx // 2, 1)) for dx in args.dx}
    arg_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    arg_dict["par_rows"] = {k: sorted(v) for k, v in args.par_rows.items()}
    arg_dict["long_rows"] = sorted(args.long_rows)
    payload = {"machine": machine, "args": arg_dict,
               "kalman_step_flops": flops, "results": results}  # fmt: skip
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=1, default=str))
    if "Traceback" in log_text:
        (args.out / f"{args.name}.log").write_text(log_text)
    print()
    print(md)
    print(f"\nwrote {args.out / (args.name + '.md')} and {args.name}.json ({machine['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
