"""Smoothers and iterative ensemble methods: kalmax against DAPPER's own runs, its published
scores and its speed (the issue titled 08).

    .venv/bin/python benchmarks/bench_smoothers.py            # full run (about 15 min on 2 cores)
    .venv/bin/python benchmarks/bench_smoothers.py --quick    # smoke test (a few minutes)

Three parts:

1. Exact reproduction (float64). DAPPER (1.7.1) simulates Lorenz-96 (its
   mods/Lorenz96/sakov2008.py, dko = 1, Ko + 1 cycles, seeded) and runs
   iEnKS('Sqrt', N=20, Lag=2, nIter=3, infl=1.02), EnKS('Sqrt', N=25, Lag=4,
   infl=1.02) and EnRTS('Sqrt', N=25, DeCorr=0.99, infl=1.02), rot=False. Its
   initial ensemble is captured by wrapping `HMM.X0.sample` (the draw itself is
   DAPPER's). kalmax runs `IEnKS(20, 2, n_iter=3, inflation=1.02)`, `EnKS(25, 4,
   inflation=1.02)` and `EnRTS(25, 0.99, inflation=1.02)` through `kx.smooth` from
   `init_state=kx.Ensemble(E0)` on DAPPER's observations (cycle n of kalmax is
   DAPPER's ko = n). Reported: max |difference| of the analysis means (DAPPER's
   `stats.mu.a`) and of the smoothed means (`stats.mu.s`) over all cycles; target 1e-8.

2. Accuracy, kalmax only, several seeds, against the scores DAPPER lists in its
   set-up files (rmse.a: the filtered analysis, averaged after the burn-in):
   Lorenz-63 of Sakov et al. (2012, observations every 25 steps of 0.01, R = 2I)
   iEnKS('Sqrt', N=10, infl=1.02, rot=True) 0.31 (the EnKF there 0.60); Bocquet &
   Sakov (2012: R = I) the same iEnKS 0.22 with observations every 25 steps and 0.13
   every 5; Lorenz-96 of Sakov & Oke (2008) observed every 12 steps (0.6 time units)
   iEnKS('Sqrt', N=25, Lag=1, nIter=10, infl=1.2, rot=True) 0.46; the same Lorenz-96
   observed every 4 steps (Bocquet & Sakov 2013, Fig. 4), Var4D with Lag 1 / 2 / 4 and
   xB = 0.2 / 0.1 / 0.02: 0.46 / 0.39 / 0.37 (B = xB times the climatology of a long free
   run). Pass: the mean over seeds within 10% of the published value.

3. Speed on the problems of part 1 and on Lorenz-63 (Sakov et al. 2012, the iEnKF with
   10 iterations): DAPPER's `xp.assimilate` with its statistics, as its users run it;
   DAPPER's own building blocks (`iEnKS_update`, `EnKF_analysis`, `post_process`, its
   model) in a bare loop without statistics; kalmax's compiled `kx.smooth`, the first
   call (compile included) and the median of repeats (excluded). Ratios are DAPPER's
   CPU time over kalmax's. Every library runs in its own worker process with one BLAS
   thread (`common.run_jobs`).

Results: benchmarks/results/smoothers.md (tables) and smoothers.json (raw numbers);
`--quick` writes smoothers-quick.md/json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()

METHODS = {
    "ienks": dict(label="iEnKS('Sqrt', N=20, Lag=2, nIter=3, infl=1.02)", N=20, lag=2, n_iter=3, infl=1.02),
    "enks": dict(label="EnKS('Sqrt', N=25, Lag=4, infl=1.02)", N=25, lag=4, infl=1.02),
    "enrts": dict(label="EnRTS('Sqrt', N=25, DeCorr=0.99, infl=1.02)", N=25, decorr=0.99, infl=1.02),
    "ienkf-l63": dict(label="iEnKS('Sqrt', N=10, Lag=1, nIter=10, infl=1.02) on Lorenz-63", N=10, lag=1, n_iter=10,
                      infl=1.02),
}

ACCURACY = [
    dict(id="l63-sakov2012", label="Lorenz-63, Sakov et al. 2012 (dko 25, R = 2I)", model="l63", dko=25, obs_var=2.0,
         N=10, lag=1, n_iter=10, infl=1.02, rotate=True, published=0.31),
    dict(id="l63-bocquet2012-dko25", label="Lorenz-63, Bocquet & Sakov 2012 (dko 25, R = I)", model="l63", dko=25,
         obs_var=1.0, N=10, lag=1, n_iter=10, infl=1.02, rotate=True, published=0.22),
    dict(id="l63-bocquet2012-dko5", label="Lorenz-63, Bocquet & Sakov 2012 (dko 5, R = I)", model="l63", dko=5,
         obs_var=1.0, N=10, lag=1, n_iter=10, infl=1.02, rotate=True, published=0.13),
    dict(id="l96-sakov2008-dko12", label="Lorenz-96, Sakov & Oke 2008 observed every 12 steps", model="l96", dko=12,
         obs_var=1.0, N=25, lag=1, n_iter=10, infl=1.2, rotate=True, published=0.46),
    # 4D-Var, Bocquet & Sakov 2013 Fig. 4 (DAPPER's mods/Lorenz96/sakov2008.py: dto = 0.2), B = xB x climatology
    dict(id="l96-4dvar-lag1", label="Lorenz-96, every 4 steps: Var4D(Lag=1, xB=0.2)", model="l96", dko=4,
         obs_var=1.0, method="4dvar", lag=1, n_iter=10, xb=0.2, published=0.46),
    dict(id="l96-4dvar-lag2", label="Lorenz-96, every 4 steps: Var4D(Lag=2, xB=0.1)", model="l96", dko=4,
         obs_var=1.0, method="4dvar", lag=2, n_iter=10, xb=0.1, published=0.39),
    dict(id="l96-4dvar-lag4", label="Lorenz-96, every 4 steps: Var4D(Lag=4, xB=0.02)", model="l96", dko=4,
         obs_var=1.0, method="4dvar", lag=4, n_iter=10, xb=0.02, published=0.37),
]


# ======================================================================================
# DAPPER worker jobs (NumPy; no JAX imported)
# ======================================================================================


def _dapper():
    import dapper as dpr
    import dapper.tools.progressbar as pb

    dpr.rc.liveplotting = False
    pb.disable_progbar = True
    return dpr


def _dapper_hmm(case: str, ko: int):
    import importlib

    _dapper()
    module = {"l96": "dapper.mods.Lorenz96.sakov2008", "l63": "dapper.mods.Lorenz63.sakov2012"}[case]
    hmm = importlib.import_module(module).HMM.copy()
    hmm.tseq.Ko = ko
    return hmm


def _dapper_method(name):
    import dapper.da_methods as da

    spec = METHODS[name]
    if name in ("ienks", "ienkf-l63"):
        return da.iEnKS("Sqrt", N=spec["N"], Lag=spec["lag"], nIter=spec["n_iter"], infl=spec["infl"])
    if name == "enks":
        return da.EnKS("Sqrt", N=spec["N"], Lag=spec["lag"], infl=spec["infl"])
    return da.EnRTS("Sqrt", N=spec["N"], DeCorr=spec["decorr"], infl=spec["infl"])


class _NoStats:
    """What DAPPER's update functions write their diagnostics to, in the bare loops."""

    def __init__(self):
        self.iters, self.infl, self.trHK = {}, {}, {}

    def assess(self, *args, **kwargs):
        return None


def _bare_ienks(hmm, yy, spec):
    """DAPPER's iEnKS.assimilate without statistics: the same calls in the same order."""
    from dapper.da_methods.ensemble import post_process
    from dapper.da_methods.variational import iEnKS_update

    stats, lag, n_iter = _NoStats(), spec["lag"], spec["n_iter"]
    E = hmm.X0.sample(spec["N"])
    Ko = hmm.tseq.Ko
    k, t = 0, 0.0
    smoothed = np.full((Ko + 1, hmm.Nx), np.nan)
    for ko in range(0, Ko + lag + 1):
        kLag = ko - lag
        DAW = range(max(0, kLag + 1), min(ko, Ko) + 1)
        if ko <= Ko:
            obs = hmm.Obs(ko)
            E = iEnKS_update("Sqrt", E, DAW, hmm, stats, 1.0, yy[ko], (k, ko, t), obs.noise.C.sym_sqrt_inv, None,
                             False, (n_iter, 0))
            E = post_process(E, spec["infl"], False)
        if kLag >= 0:
            smoothed[kLag] = E.mean(0)
        for kCycle in range(max(kLag + 1, 0), min(max(kLag + 1 + 1, 0), Ko + 1)):
            for k, t, dt in hmm.tseq.cycle(kCycle):
                E = hmm.Dyn(E, t - dt, dt)
    return smoothed


def _bare_enks(hmm, yy, spec):
    from dapper.da_methods.ensemble import EnKF_analysis, post_process

    tseq, N, lag = hmm.tseq, spec["N"], spec["lag"]
    E = np.zeros((tseq.K + 1, N, hmm.Nx))
    E[0] = hmm.X0.sample(N)
    for k, ko, t, dt in tseq.ticker:
        E[k] = hmm.Dyn(E[k - 1], t - dt, dt)
        if ko is not None:
            kk = range(max(0, k - lag * tseq.dko), k + 1)
            EE = E[kk].transpose([1, 0, 2]).reshape((N, -1))
            EE = EnKF_analysis(EE, hmm.Obs(ko)(E[k]), hmm.Obs(ko).noise, yy[ko], "Sqrt", None, ko)
            E[kk] = EE.reshape((N, len(kk), hmm.Nx)).transpose([1, 0, 2])
            E[k] = post_process(E[k], spec["infl"], False)
    return E[tseq.kko].mean(1)


def _bare_enrts(hmm, yy, spec):
    from dapper.da_methods.ensemble import EnKF_analysis, post_process
    from dapper.tools.linalg import tinv
    from dapper.stats import center

    tseq, N = hmm.tseq, spec["N"]
    E = np.zeros((tseq.K + 1, N, hmm.Nx))
    Ef = E.copy()
    E[0] = hmm.X0.sample(N)
    for k, ko, t, dt in tseq.ticker:
        E[k] = hmm.Dyn(E[k - 1], t - dt, dt)
        Ef[k] = E[k]
        if ko is not None:
            E[k] = EnKF_analysis(E[k], hmm.Obs(ko)(E[k]), hmm.Obs(ko).noise, yy[ko], "Sqrt", None, ko)
            E[k] = post_process(E[k], spec["infl"], False)
    for k in range(tseq.K)[::-1]:
        J = tinv(center(Ef[k + 1])[0]) @ center(E[k])[0]
        E[k] += (E[k + 1] - Ef[k + 1]) @ (J * spec["decorr"])
    return E[tseq.kko].mean(1)


BARE = {"ienks": _bare_ienks, "ienkf-l63": _bare_ienks, "enks": _bare_enks, "enrts": _bare_enrts}


def dapper_reference(job) -> dict:
    """DAPPER's truth, observations and run with statistics (its initial ensemble captured)."""
    dpr = _dapper()
    hmm = _dapper_hmm(job["case"], job["ko"])
    dpr.set_seed(job["seed"])
    xx, yy = hmm.simulate()
    yy = np.stack(yy).astype(float)
    captured = {}
    original = hmm.X0.sample

    def sample(N):
        E = original(N)
        captured["E0"] = np.array(E, copy=True)
        return E

    hmm.X0.sample = sample
    runs = []

    def run():
        dpr.set_seed(job["seed"] + 1)
        xp = _dapper_method(job["method"])
        xp.assimilate(hmm, xx, yy)
        xp.stats.average_in_time()
        runs.append(xp)
        return xp

    timing, xp = common.timed(run, job["repeats"], first_separate=False)
    mu_a, mu_s = np.array(xp.stats.mu.a), np.array(xp.stats.mu.s)
    np.savez(Path(job["workdir"]) / f"{job['tag']}.npz", xx=xx, yy=yy, E0=captured["E0"], mu_a=mu_a, mu_s=mu_s)
    hmm.X0.sample = original

    def run_bare():
        dpr.set_seed(job["seed"] + 1)
        return BARE[job["method"]](hmm, yy, METHODS[job["method"]])

    bare_timing, bare_smoothed = common.timed(run_bare, job["repeats"], first_separate=False)
    ok = np.isfinite(bare_smoothed).all(axis=1)
    return dict(timing=timing, bare_timing=bare_timing, cycles=int(yy.shape[0]), da_method=repr(xp),
                rmse_a=float(xp.avrgs.rmse.a.val), rmse_s=float(xp.avrgs.rmse.s.val),
                bare_matches_stats_run=float(np.max(np.abs(bare_smoothed[ok] - mu_s[ok]))))  # fmt: skip


# ======================================================================================
# kalmax worker jobs
# ======================================================================================


def _kalmax_method(name):
    import kalmax as kx

    spec = METHODS[name]
    if name in ("ienks", "ienkf-l63"):
        return kx.IEnKS(spec["N"], spec["lag"], n_iter=spec["n_iter"], inflation=spec["infl"])
    if name == "enks":
        return kx.EnKS(spec["N"], spec["lag"], inflation=spec["infl"])
    return kx.EnRTS(spec["N"], spec["decorr"], inflation=spec["infl"])


def kalmax_reproduce(job) -> dict:
    import jax

    import kalmax as kx
    from kalmax.presets import lorenz63_sakov2012, lorenz96_sakov2008

    data = np.load(Path(job["workdir"]) / f"{job['tag']}.npz")
    ys = jax.numpy.asarray(data["yy"])
    setup = (lorenz96_sakov2008 if job["case"] == "l96" else lorenz63_sakov2012)(ys.shape[0])
    method = _kalmax_method(job["method"])
    start = kx.Ensemble(jax.numpy.asarray(data["E0"]))
    key = jax.random.key(job["seed"])

    def run():
        result = kx.smooth(setup.model, method, ys, key, init_state=start)
        return result.filtered.mean, result.mean

    timing, (mean_a, mean_s) = common.timed(run, job["repeats"], first_separate=True)
    return dict(timing=timing, max_diff_analysis=float(np.max(np.abs(np.asarray(mean_a) - data["mu_a"]))),
                max_diff_smoothed=float(np.nanmax(np.abs(np.asarray(mean_s) - data["mu_s"]))))  # fmt: skip


def kalmax_accuracy(job) -> dict:
    import jax
    import jax.numpy as jnp

    import kalmax as kx
    from kalmax.models import RK4, Flow, Lorenz63
    from kalmax.presets import lorenz63_sakov2012, lorenz96_sakov2008

    spec = job["spec"]
    if spec["model"] == "l63":
        base = lorenz63_sakov2012(10)
        interval = 0.01 * spec["dko"]
        model = kx.StateSpaceModel(Flow(Lorenz63(), RK4(0.01, spec["dko"])), base.model.observation,
                                   base.model.dynamics_cov, kx.ScalarCovariance(jnp.asarray(spec["obs_var"]), 3),
                                   base.model.init_mean, base.model.init_cov)  # fmt: skip
        burn_in = int(round(base.burn_in * base.interval / interval))  # DAPPER's BurnIn in time units
    else:
        base = lorenz96_sakov2008(10)
        interval = 0.05 * spec["dko"]
        flow = base.model.dynamics
        model = kx.StateSpaceModel(Flow(flow.model, RK4(0.05, spec["dko"])), base.model.observation,
                                   base.model.dynamics_cov, base.model.obs_cov, base.model.init_mean,
                                   base.model.init_cov)  # fmt: skip
        burn_in = int(round(base.burn_in * base.interval / interval))
    if spec.get("method") == "4dvar":  # DAPPER's Var4D: B = xB times the climatology
        climatology = kx.climatology_cov(model, jax.random.key(job["seed"] + 1), 20000, spin_up=1000)
        method = kx.FourDVar(spec["xb"] * climatology, lag=spec["lag"], n_iter=spec["n_iter"])
    else:
        method = kx.IEnKS(spec["N"], spec["lag"], n_iter=spec["n_iter"], inflation=spec["infl"],
                          rotate=spec["rotate"])
    t0 = time.process_time()
    result = kx.sweep(model, lambda: method, job["cycles"], jax.random.key(job["seed"]), grid={},
                      n_seeds=job["seeds"], burn_in=burn_in)
    rmse = np.asarray(result.rmse_analysis).reshape(-1)
    return dict(rmse=rmse.tolist(), rmse_mean=float(np.mean(rmse)), burn_in=burn_in, interval=interval,
                n_failed=int(np.sum(result.failed)), n_diverged=int(np.sum(result.diverged)),
                cpu_s=time.process_time() - t0)  # fmt: skip


JOBS = {"dapper_reference": dapper_reference, "kalmax_reproduce": kalmax_reproduce, "kalmax_accuracy": kalmax_accuracy}


# ======================================================================================
# the report
# ======================================================================================


def report(results: dict, args, machine: dict) -> str:
    fmt, ratio = common.fmt_time, common.fmt_ratio
    lines = ["# Smoothers and iterative ensemble methods: kalmax against DAPPER", ""]
    lines.append(common.machine_markdown(machine))
    lines.append("")
    lines.append("## 1. Exact reproduction of DAPPER's runs (float64, Lorenz-96 d = 40, DAPPER's data and initial "
                 "ensemble)")
    lines.append("")
    rows = []
    for name in ("ienks", "enks", "enrts"):
        ref, ours = results.get(f"dapper-{name}", {}), results.get(f"kalmax-{name}", {})
        if ref.get("status") != "ok" or ours.get("status") != "ok":
            rows.append([METHODS[name]["label"], "failed", "failed", "", ""])
            continue
        worst = max(ours["max_diff_analysis"], ours["max_diff_smoothed"])
        rows.append([METHODS[name]["label"], f"{ours['max_diff_analysis']:.1e}", f"{ours['max_diff_smoothed']:.1e}",
                     str(ref["cycles"]), "pass" if worst <= 1e-8 else "FAIL"])
    lines.append(common.markdown_table(["DAPPER method", "max diff analysis", "max diff smoothed", "cycles",
                                        "target 1e-8"], rows))
    lines.append("")
    lines.append("## 2. Accuracy against DAPPER's listed scores (rmse.a, kalmax only)")
    lines.append("")
    rows = []
    for spec in ACCURACY:
        r = results.get(f"accuracy-{spec['id']}", {})
        if r.get("status") != "ok":
            rows.append([spec["label"], str(spec["published"]), "failed", "", ""])
            continue
        within = abs(r["rmse_mean"] / spec["published"] - 1)
        rows.append([spec["label"], f"{spec['published']:.2f}", f"{r['rmse_mean']:.3f}",
                     ", ".join(f"{x:.3f}" for x in r["rmse"]), f"{100 * within:.0f}% {'pass' if within <= 0.1 else 'FAIL'}"])
    lines.append(common.markdown_table(["set-up (iEnKS unless named)", "published", "kalmax mean", "per seed",
                                        "within 10%"], rows))
    lines.append(f"\n{args.seeds} seeds of {args.accuracy_cycles} cycles each; burn-in as DAPPER's BurnIn in time units.")
    lines.append("")
    lines.append("## 3. Speed (CPU seconds of one run; ratios DAPPER / kalmax)")
    lines.append("")
    rows = []
    for name in ("ienks", "enks", "enrts", "ienkf-l63"):
        ref, ours = results.get(f"dapper-{name}", {}), results.get(f"kalmax-{name}", {})
        if ref.get("status") != "ok" or ours.get("status") != "ok":
            continue
        d_stats, d_bare = ref["timing"]["median_cpu_s"], ref["bare_timing"]["median_cpu_s"]
        k_excl, k_incl = ours["timing"]["median_cpu_s"], ours["timing"]["first_cpu_s"]
        rows.append([METHODS[name]["label"], str(ref["cycles"]), fmt(d_stats), fmt(d_bare), fmt(k_incl), fmt(k_excl),
                     ratio(d_stats / k_excl), ratio(d_bare / k_excl), ratio(d_stats / k_incl)])
    lines.append(common.markdown_table(
        ["method", "cycles", "DAPPER xp.assimilate", "DAPPER bare loop", "kalmax compile incl.", "kalmax excl.",
         "vs DAPPER (excl.)", "vs bare loop (excl.)", "vs DAPPER (incl.)"], rows))
    lines.append("")
    lines.append("DAPPER's bare loops call its own `iEnKS_update` / `EnKF_analysis` / `post_process` and model in the "
                 "order its `assimilate` does, without statistics; their smoothed means equal the statistics run's "
                 "(max difference in the JSON, `bare_matches_stats_run`).")
    lines.append("")
    lines.append("Generated by `benchmarks/bench_smoothers.py`" + (" --quick" if args.quick else "") + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    ap.add_argument("--only", nargs="+", default=None, metavar="JOB",
                    help="run only the jobs whose id starts with one of these (e.g. accuracy-l96-4dvar); the "
                         "other results are read back from the last run's JSON")
    args = ap.parse_args()
    if args.worker:
        common.serve_jobs(JOBS)
        return
    args.ko = 100 if args.quick else 1000
    args.ko_l63 = 100 if args.quick else 1000
    args.repeats = 1 if args.quick else 3
    args.seeds = 2 if args.quick else 4
    args.accuracy_cycles = 300 if args.quick else 5000
    name = "smoothers-quick" if args.quick else "smoothers"
    env = common.worker_env()
    workdir = Path(tempfile.mkdtemp(prefix="bench_smoothers_"))
    results = {}

    def progress(r):
        return f"{r['id']}: {r['status']}" + (f" ({r.get('error')})" if r["status"] != "ok" else "")

    if args.only:
        previous = args.out / f"{name}.json"
        if previous.exists():
            results.update(json.loads(previous.read_text())["results"])

    def wanted(jobs):
        return [job for job in jobs if not args.only or any(job["id"].startswith(p) for p in args.only)]

    dapper_jobs, kalmax_jobs = [], []
    for method in ("ienks", "enks", "enrts", "ienkf-l63"):
        case = "l63" if method == "ienkf-l63" else "l96"
        common_job = dict(method=method, case=case, ko=args.ko_l63 if case == "l63" else args.ko, seed=3,
                          tag=method, workdir=str(workdir), repeats=args.repeats)
        dapper_jobs.append(dict(common_job, id=f"dapper-{method}", kind="dapper_reference"))
        kalmax_jobs.append(dict(common_job, id=f"kalmax-{method}", kind="kalmax_reproduce"))
    print("DAPPER runs", flush=True)
    results.update(common.run_group(SCRIPT, wanted(dapper_jobs), env, 3600, workdir, progress, "dapper"))
    print("kalmax runs", flush=True)
    results.update(common.run_group(SCRIPT, wanted(kalmax_jobs), env, 3600, workdir, progress, "kalmax"))
    accuracy_jobs = [dict(id=f"accuracy-{spec['id']}", kind="kalmax_accuracy", spec=spec, seed=11,
                          seeds=args.seeds, cycles=args.accuracy_cycles) for spec in ACCURACY]
    print("accuracy runs", flush=True)
    results.update(common.run_group(SCRIPT, wanted(accuracy_jobs), env, 3600, workdir, progress, "accuracy"))
    machine = common.describe_machine(("jax", "jaxlib", "numpy", "equinox", "dapper"))
    md = report(results, args, machine)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.md").write_text(md)
    (args.out / f"{name}.json").write_text(json.dumps(dict(machine=machine, results=results), indent=1, default=str))
    print(md)


if __name__ == "__main__":
    main()
