"""kalmax.learning.em: one EM iteration equals a NumPy float64 transcription of the
Shumway-Stoffer E- and M-steps (missing entries included, several sequences); the
log-likelihood never decreases; fixed fields stay; the Nile local-level model reaches
the published maximum-likelihood variances; bad input is named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.datasets import load_nile
from kalmax.learning import em

# ---------------------------------------------------------------- NumPy transcription


def _numpy_smoother(p, ys, observe_initial=False):
    """Kalman filter (skipping missing entries) and RTS smoother with lag-one
    cross-covariances, v_0 ~ N(m0, C0), y_{n+1} observes v_{n+1}; plain loops.
    With observe_initial the first transition is the identity without noise."""
    M_, H, Q_, R, b_, d, m0, C0 = (p[k] for k in ("M", "H", "Q", "R", "b", "d", "m0", "C0"))
    T = len(ys)
    means, covs, pmeans, pcovs = [m0], [C0], [], []
    loglik = 0.0
    transitions = []
    for n, y in enumerate(ys):
        first = observe_initial and n == 0
        M, Q, b = (np.eye(len(m0)), 0 * Q_, 0 * b_) if first else (M_, Q_, b_)
        transitions.append(M)
        pm, pc = M @ means[-1] + b, M @ covs[-1] @ M.T + Q
        pmeans.append(pm)
        pcovs.append(pc)
        o = ~np.isnan(y)
        if o.any():
            Ho, Ro = H[o], R[np.ix_(o, o)]
            S = Ho @ pc @ Ho.T + Ro
            e = y[o] - Ho @ pm - d[o]
            K = pc @ Ho.T @ np.linalg.inv(S)
            loglik += -0.5 * (e @ np.linalg.solve(S, e) + np.linalg.slogdet(2 * np.pi * S)[1])
            means.append(pm + K @ e)
            covs.append(pc - K @ S @ K.T)
        else:
            means.append(pm)
            covs.append(pc)
    sm, sc = [None] * (T + 1), [None] * (T + 1)
    sm[T], sc[T] = means[T], covs[T]
    cross = [None] * T  # cross[n] = Cov(v_{n+1}, v_n | y)
    for n in range(T - 1, -1, -1):
        G = covs[n] @ transitions[n].T @ np.linalg.inv(pcovs[n])
        sm[n] = means[n] + G @ (sm[n + 1] - pmeans[n])
        sc[n] = covs[n] + G @ (sc[n + 1] - pcovs[n]) @ G.T
        cross[n] = sc[n + 1] @ G.T
    return np.array(sm), np.array(sc), np.array(cross), loglik


def _numpy_em_step(p, sequences, free, observe_initial=False):
    """One EM iteration: statistics by explicit loops (missing entries of y_n conditioned on
    the observed ones by index sets, Shumway & Stoffer 2017 sec. 6.4), then the M-step."""
    dx, dy = p["M"].shape[0], p["H"].shape[0]
    Szz = np.zeros((dx + 1, dx + 1))
    Sxz = np.zeros((dx, dx + 1))
    Sxx = np.zeros((dx, dx))
    Ozz = np.zeros((dx + 1, dx + 1))
    Oyz = np.zeros((dy, dx + 1))
    Oyy = np.zeros((dy, dy))
    init_sum, init_outer, count, n_transitions, total = np.zeros(dx), np.zeros((dx, dx)), 0, 0, 0.0
    for ys in sequences:
        sm, sc, cross, loglik = _numpy_smoother(p, ys, observe_initial)
        total += loglik
        init_sum += sm[0]
        init_outer += sc[0] + np.outer(sm[0], sm[0])
        for n in range(1, len(ys) + 1):
            Exx = sc[n] + np.outer(sm[n], sm[n])
            if not (observe_initial and n == 1):
                z_prev = np.append(sm[n - 1], 1.0)
                Ezz_prev = np.outer(z_prev, z_prev)
                Ezz_prev[:dx, :dx] += sc[n - 1]
                Szz += Ezz_prev
                Exz = np.outer(sm[n], z_prev)
                Exz[:, :dx] += cross[n - 1]
                Sxz += Exz
                Sxx += Exx
                n_transitions += 1
            z = np.append(sm[n], 1.0)
            Ezz = np.outer(z, z)
            Ezz[:dx, :dx] += sc[n]
            Ozz += Ezz
            # E[y], E[y y^T], E[y x^T] with y_u | x, y_o Gaussian
            y = ys[n - 1]
            o, u = ~np.isnan(y), np.isnan(y)
            H, R, d = p["H"], p["R"], p["d"]
            Ey = np.where(o, y, 0.0).astype(float)
            Eyx = np.zeros((dy, dx))
            Eyy = np.zeros((dy, dy))
            # y_u = H_u x + d_u + W (y_o - H_o x - d_o) + e, W = R_uo R_oo^-1
            W = R[np.ix_(u, o)] @ np.linalg.inv(R[np.ix_(o, o)]) if o.any() else np.zeros((u.sum(), 0))
            A_u = H[u] - W @ H[o]
            c_u = d[u] + W @ (y[o] - d[o])
            V_u = R[np.ix_(u, u)] - W @ R[np.ix_(o, u)]
            Ey[u] = A_u @ sm[n] + c_u
            Eyx[o] = np.outer(y[o], sm[n])
            Eyx[u] = A_u @ Exx + np.outer(c_u, sm[n])
            Eyy[np.ix_(o, o)] = np.outer(y[o], y[o])
            Eyy[np.ix_(u, o)] = np.outer(Ey[u], y[o])
            Eyy[np.ix_(o, u)] = np.outer(y[o], Ey[u])
            Eyy[np.ix_(u, u)] = A_u @ Exx @ A_u.T + np.outer(A_u @ sm[n], c_u) + np.outer(c_u, A_u @ sm[n]) \
                + np.outer(c_u, c_u) + V_u
            Oyz += np.concatenate([Eyx, Ey[:, None]], axis=1)
            Oyy += Eyy
            count += 1

    def regression(W0, w0, free_W, free_w, Stz, Szz_, Stt, count):
        if free_W and free_w:
            joint = Stz @ np.linalg.inv(Szz_)
        elif free_W:
            joint = np.concatenate([(Stz[:, :-1] - np.outer(w0, Szz_[-1, :-1])) @ np.linalg.inv(Szz_[:-1, :-1]),
                                    w0[:, None]], axis=1)
        elif free_w:
            joint = np.concatenate([W0, ((Stz[:, -1] - W0 @ Szz_[:-1, -1]) / count)[:, None]], axis=1)
        else:
            joint = np.concatenate([W0, w0[:, None]], axis=1)
        cov = (Stt - joint @ Stz.T - Stz @ joint.T + joint @ Szz_ @ joint.T) / count
        return joint[:, :-1], joint[:, -1], cov

    new = dict(p)
    M, b, Q = regression(p["M"], p["b"], free["M"], free["b"], Sxz, Szz, Sxx, n_transitions)
    H, d, R = regression(p["H"], p["d"], free["H"], free["d"], Oyz, Ozz, Oyy, count)
    B = len(sequences)
    m0 = init_sum / B if free["m0"] else p["m0"]
    C0 = init_outer / B - np.outer(init_sum / B, m0) - np.outer(m0, init_sum / B) + np.outer(m0, m0)
    for key, value in dict(M=M, b=b, Q=Q, H=H, d=d, R=R, m0=m0, C0=C0).items():
        if free[key]:
            new[key] = value
    return new, total


# ---------------------------------------------------------------- fixtures

NAMES = dict(M="dynamics", b="dynamics_offset", Q="dynamics_cov", H="observation", d="obs_offset", R="obs_cov",
             m0="init_mean", C0="init_cov")


def _to_model(p, dtype=jnp.float64):
    return kx.LinearGaussianSSM(
        *(jnp.asarray(p[k], dtype) for k in ("M", "H", "Q", "R", "m0", "C0")),
        dynamics_offset=jnp.asarray(p["b"], dtype), obs_offset=jnp.asarray(p["d"], dtype),
    )


def _problem(seed=0, dx=3, dy=2, T=60, B=2):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(dx, dx))
    truth = dict(M=0.9 * A / np.max(np.abs(np.linalg.eigvals(A))), H=rng.normal(size=(dy, dx)),
                 Q=0.3 * np.eye(dx), R=np.array([[0.5, 0.2], [0.2, 0.4]])[:dy, :dy], b=0.1 * np.ones(dx),
                 d=np.linspace(-1, 1, dy), m0=np.ones(dx), C0=np.eye(dx))
    sequences = []
    for key in jax.random.split(jax.random.key(seed), B):
        _, ys = kx.simulate(_to_model(truth), key, T)
        ys = np.array(ys)
        ys[3, 0] = np.nan  # partly missing
        ys[5] = np.nan  # wholly missing
        ys[T - 2, dy - 1] = np.nan
        sequences.append(ys)
    B_ = rng.normal(size=(dx, dx))
    guess = dict(M=0.5 * np.eye(dx), H=rng.normal(size=(dy, dx)), Q=np.eye(dx) + 0.1 * B_ @ B_.T, R=np.eye(dy),
                 b=np.zeros(dx), d=np.zeros(dy), m0=np.zeros(dx), C0=2 * np.eye(dx))
    return guess, np.stack(sequences)


@pytest.mark.parametrize("fixed,observe_initial", [((), False), (("observation", "init_cov", "dynamics_offset"), False),
                                                   (("dynamics", "obs_offset"), False), ((), True)])
def test_one_iteration_equals_the_numpy_transcription(fixed, observe_initial):
    guess, ys = _problem()
    free = {short: NAMES[short] not in fixed for short in NAMES}
    expected, expected_loglik = _numpy_em_step(guess, list(ys), free, observe_initial)
    result = em(_to_model(guess), ys, 2, fixed=fixed, observe_initial=observe_initial)  # entry 1: after one M-step
    model = result.model
    _, loglik_after = _numpy_em_step(expected, list(ys), free, observe_initial)
    np.testing.assert_allclose(result.log_likelihood, [expected_loglik, loglik_after], rtol=1e-10)
    one = em(_to_model(guess), ys, 1, fixed=fixed, observe_initial=observe_initial).model
    for short, name in NAMES.items():
        np.testing.assert_allclose(getattr(one, name), expected[short], rtol=1e-9, atol=1e-10, err_msg=name)
    assert model.dynamics.shape == (3, 3)


def test_log_likelihood_never_decreases_with_missing_data():
    guess, ys = _problem(seed=1, T=100, B=1)
    for fixed in [(), ("observation",), ("init_mean", "init_cov", "obs_cov")]:
        loglik = np.asarray(em(_to_model(guess), ys[0], 40, fixed=fixed).log_likelihood)
        assert np.all(np.isfinite(loglik))
        assert np.all(np.diff(loglik) >= -1e-9 * np.abs(loglik[1:])), fixed
        assert loglik[-1] > loglik[0] + 10


def test_fixed_fields_stay_and_none_offsets_stay_none():
    guess, ys = _problem(seed=2, T=40, B=1)
    model = _to_model(guess)
    model = kx.LinearGaussianSSM(model.dynamics, model.observation, model.dynamics_cov, model.obs_cov,
                                 model.init_mean, model.init_cov)
    fitted = em(model, ys[0], 3, fixed=("observation", "obs_cov")).model
    np.testing.assert_array_equal(fitted.observation, model.observation)
    np.testing.assert_array_equal(fitted.obs_cov, model.obs_cov)
    assert fitted.dynamics_offset is None and fitted.obs_offset is None
    assert not np.allclose(fitted.dynamics, model.dynamics)


def test_float32_follows_float64():
    guess, ys = _problem(seed=3, T=50, B=1)
    ll64 = np.asarray(em(_to_model(guess), ys[0], 5).log_likelihood)
    ll32 = np.asarray(em(_to_model(guess, jnp.float32), ys[0].astype(np.float32), 5).log_likelihood)
    assert ll32.dtype == np.float32
    np.testing.assert_allclose(ll32, ll64, rtol=1e-4)


def test_nile_local_level_reaches_the_published_mle():
    # Durbin & Koopman (2012), sec. 2.10: sigma_eps^2 = 15099, sigma_eta^2 = 1469.1 (diffuse initial level)
    _, flow = load_nile()
    guess = kx.LinearGaussianSSM(jnp.eye(1), jnp.eye(1), 1000.0 * jnp.eye(1), 10000.0 * jnp.eye(1),
                                 jnp.array([flow[0]]), 1e7 * jnp.eye(1))
    result = em(guess, flow[:, None], 600, fixed=("dynamics", "observation", "init_mean", "init_cov"))
    assert float(result.model.obs_cov[0, 0]) == pytest.approx(15099, rel=0.01)
    assert float(result.model.dynamics_cov[0, 0]) == pytest.approx(1469.1, rel=0.01)


def test_bad_input_is_named():
    guess, ys = _problem(T=10, B=1)
    model = _to_model(guess)
    nonlinear = kx.StateSpaceModel(lambda v: v, jnp.eye(2, 3), jnp.eye(3), jnp.eye(2), jnp.zeros(3), jnp.eye(3))
    with pytest.raises(TypeError, match="model.*LinearGaussianSSM"):
        em(nonlinear, ys[0], 2)
    with pytest.raises(ValueError, match="fixed.*'dynamcs'"):
        em(model, ys[0], 2, fixed=("dynamcs",))
    with pytest.raises(ValueError, match="n_iterations"):
        em(model, ys[0], 0)
    with pytest.raises(ValueError, match="observe_initial.*T >= 2"):
        em(model, ys[0][:1], 2, observe_initial=True)
    with pytest.raises(ValueError, match=r"ys.*\(T, 2\)"):
        em(model, ys[0][:, :1], 2)
    varying = kx.LinearGaussianSSM(kx.TimeVarying(jnp.stack([model.dynamics] * 10)), model.observation,
                                   model.dynamics_cov, model.obs_cov, model.init_mean, model.init_cov)
    with pytest.raises(ValueError, match="dynamics.*TimeVarying"):
        em(varying, ys[0], 2)


def test_complete_data_path_equals_the_conditioned_path():
    from kalmax.learning import e_step

    guess, ys = _problem(seed=4, T=30, B=1)
    complete = np.nan_to_num(ys[0], nan=0.3)
    fast, ll_fast = e_step(_to_model(guess), complete, missing=False)
    general, ll_general = e_step(_to_model(guess), complete, missing=True)
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(general)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ll_fast, ll_general, rtol=1e-12)
