"""Fair Bayesian Perturbation (src/fairdiffusion/method.py) against the formulas of its docstring."""

import itertools
import json
import math
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from fairdiffusion import method as M
from fairdiffusion.config import section_defaults
from fairdiffusion.errors import FairDiffError

ATTRS = {"race": ["Asian", "Black", "White"], "gender": ["Female", "Male"],
         "ethnicity": ["Non-Hispanic", "Hispanic"]}
SIZES = [3, 2, 2]
FAIR_BAYES = section_defaults({}, "fair_bayes")  # the schema's defaults: the pure module has none
NEW_ARMS = ("balanced", "reweighted", "groupdro")


def fb(**overrides):
    return {**FAIR_BAYES, **overrides}


@pytest.fixture(autouse=True)
def one_thread():
    # the machine's CPUs are shared: keep the many small tensor ops from oversubscribing them
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_batch(gen, n=16, sizes=SIZES):
    groups = torch.stack([torch.randint(0, s, (n,), generator=gen) for s in sizes], dim=1)
    losses = torch.rand(n, generator=gen)
    timesteps = torch.randint(0, 1000, (n,), generator=gen)
    return groups, losses, timesteps


def run_steps(weighting, gen, steps, start=0):
    """Drive a weighting like the training loop; return the sigma used and weights per step."""
    sigmas, weights = [], []
    for step in range(start, start + steps):
        groups, losses, timesteps = random_batch(gen)
        sigmas.append(weighting.sigma.clone())
        weights.append(weighting.weights(groups))
        weighting.observe(losses, groups, timesteps, step)
    return sigmas, weights


# -- pure pieces against the formulas ------------------------------------------------------------


def test_pure_pieces_match_an_independent_reimplementation():
    gen = torch.Generator().manual_seed(0)
    groups, losses, _ = random_batch(gen, n=12)
    losses = losses.double()
    sigma = [torch.rand(s, generator=gen, dtype=torch.float64) for s in SIZES]
    z = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    expected = [1 + sum(float(sigma[a][int(groups[i, a])]) * float(z[i, a]) for a in range(3))
                for i in range(12)]
    assert M.perturbation_weights(groups, sigma, z).tolist() == pytest.approx(expected)

    # 12 samples: every group present; 3: some absent (the two rules then differ)
    for n, absent in itertools.product((12, 3), ("zero", "skip")):
        gaps = []
        for a, size in enumerate(SIZES):
            means = [float(losses[:n][groups[:n, a] == g].mean()) for g in range(size)
                     if bool((groups[:n, a] == g).any())]
            complete = len(means) == size if absent == "zero" else len(means) >= 2
            gaps.append(max(means) - min(means) if complete else 0.0)
        assert M.group_gaps(losses[:n], groups[:n], SIZES, absent).tolist() == \
            pytest.approx(gaps)

    s, u = torch.rand(7, generator=gen), torch.rand(7, generator=gen)
    assert M.refresh(s, u, 0.95).tolist() == pytest.approx(
        [0.95 * a + 0.05 * b for a, b in zip(s.tolist(), u.tolist())])


@pytest.mark.parametrize("absent, expected", [
    # race: Asian {1, 2} mean 1.5, Black {3, 5} mean 4, White absent
    #   zero (the authors' rule): White's mean is NaN -> gap 0; skip: 4 - 1.5 = 2.5
    # gender: Female only -> 0 under both rules (Male absent; one group present)
    # ethnicity: Non-Hispanic {1, 3, 5} mean 3, Hispanic {2} -> gap 1 (all groups present)
    ("zero", [0.0, 0.0, 1.0]),
    ("skip", [2.5, 0.0, 1.0]),
])
def test_objective_hand_example_with_absent_group(absent, expected):
    losses = torch.tensor([1.0, 2.0, 3.0, 5.0])
    groups = torch.tensor([[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0]])
    assert M.group_gaps(losses, groups, SIZES, absent).tolist() == expected
    # a single sample or an empty batch: every attribute contributes 0, never NaN
    assert M.group_gaps(losses[:1], groups[:1], SIZES, absent).tolist() == [0.0] * 3
    assert M.group_gaps(losses[:0], groups[:0], SIZES, absent).tolist() == [0.0] * 3
    # the arm's trajectory: y = -(sum of the gaps) under the configured rule
    weighting = M.make_weighting("fairdiffusion", ATTRS, fb(absent_groups=absent), seed=0)
    weighting.observe(losses, groups, torch.zeros(4, dtype=torch.long), 0)
    row = weighting.trajectory[-1]
    assert [row["gap_race"], row["gap_gender"], row["gap_ethnicity"]] == expected
    assert row["y"] == -sum(expected)


def test_weights_mean_one_and_variance_is_sum_of_squared_sigmas():
    weighting = M.make_weighting("fairdiffusion", ATTRS, fb(), seed=1)
    weighting.sigma = torch.tensor([0.2, 0.9, 0.5, 0.7, 0.1, 0.3, 1.0], dtype=torch.float64)
    combos = torch.tensor(list(itertools.product(range(3), range(2), range(2))))
    n = 20000
    w = weighting.weights(combos.repeat_interleave(n, dim=0)).double().reshape(len(combos), n)
    sigma = weighting.sigma_per_attr()
    for c, combo in enumerate(combos.tolist()):
        expected_var = sum(float(sigma[a][g]) ** 2 for a, g in enumerate(combo))
        assert float(w[c].mean()) == pytest.approx(1.0, abs=4 * math.sqrt(expected_var / n))
        assert float(w[c].var()) == pytest.approx(expected_var, rel=0.05)


def test_refresh_draws_are_uniform_and_keep_sigma_in_unit_cube():
    weighting = M.make_weighting("fairdiffusion", ATTRS, fb(time_window=1000), seed=2)
    sigmas, _ = run_steps(weighting, torch.Generator().manual_seed(2), 200)
    sigmas = torch.stack(sigmas)
    assert bool(((sigmas >= 0) & (sigmas <= 1)).all())
    u = (sigmas[1:] - 0.95 * sigmas[:-1]) / 0.05  # recovers the U(0,1) draws
    assert bool(((u > -1e-9) & (u < 1 + 1e-9)).all())
    assert float(u.mean()) == pytest.approx(0.5, abs=0.03)


def test_vr_buckets_and_running_means():
    assert M.timestep_buckets(torch.tensor([0, 99, 100, 999, 1200])).tolist() == [0, 0, 1, 9, 9]
    means = torch.zeros(3, dtype=torch.float64)
    counts = torch.zeros(3, dtype=torch.long)
    means, counts = M.update_bucket_means(means, counts, torch.tensor([1.0, 3.0, 4.0]),
                                          torch.tensor([0, 0, 2]), momentum=0.9)
    assert means.tolist() == [2.0, 0.0, 4.0] and counts.tolist() == [2, 0, 1]
    means, counts = M.update_bucket_means(means, counts, torch.tensor([12.0, 5.0]),
                                          torch.tensor([0, 1]), momentum=0.9)
    assert means.tolist() == pytest.approx([0.9 * 2 + 0.1 * 12, 5.0, 4.0])


# -- the arms ------------------------------------------------------------------------------------


def test_arms_differ_only_in_the_weighting():
    # fairdiffusion with exploitation_rate 1 keeps sigma = 1 (its BO updates are skipped: all
    # points are the same), so its weights must be the random arm's at every step.
    arms = {
        "baseline": M.make_weighting("baseline", ATTRS, fb(time_window=10), seed=5),
        "random": M.make_weighting("random", ATTRS, fb(time_window=10), seed=5),
        "sigma1": M.make_weighting("fairdiffusion", ATTRS,
                                   fb(time_window=10, exploitation_rate=1.0), seed=5),
        "fairdiffusion": M.make_weighting("fairdiffusion", ATTRS, fb(time_window=10), seed=5),
    }
    out = {name: run_steps(w, torch.Generator().manual_seed(9), 25)[1] for name, w in arms.items()}
    assert all(bool((w == 1).all()) for w in out["baseline"])
    for a, b in zip(out["random"], out["sigma1"]):
        assert torch.equal(a, b)
    assert not torch.equal(out["random"][0], torch.ones(16))
    # step 0 uses the initial sigma = 1 in fairdiffusion too
    assert torch.equal(out["fairdiffusion"][0], out["random"][0])
    assert not torch.equal(out["fairdiffusion"][5], out["random"][5])
    # every arm computes the same objective and gaps from the same losses
    steps = {name: [r for r in w.trajectory if r["kind"] == "step"] for name, w in arms.items()}
    keys = ["gap_race", "gap_gender", "gap_ethnicity", "mean_loss", "y", "y_vr"]
    for name in arms:
        assert [[r[k] for k in keys] for r in steps[name]] == \
               [[r[k] for k in keys] for r in steps["baseline"]]
    assert {r["sigma_race_Asian"] for r in steps["baseline"]} == {0.0}
    assert [r["kind"] for r in arms["random"].trajectory].count("bo_update") == 0
    skipped = [r for r in arms["sigma1"].trajectory if r["kind"] == "bo_update"]
    assert len(skipped) == 2 and all("fewer than 2 distinct" in r["note"] for r in skipped)


def test_negative_weights_keep_the_loss_finite():
    torch.manual_seed(0)
    weighting = M.make_weighting("random", ATTRS, fb(), seed=0)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    negative = 0
    for step in range(50):
        groups, _, timesteps = random_batch(gen)
        x = torch.randn(16, 4, generator=gen)
        per_sample = ((model(x) - x.flip(1)) ** 2).mean(dim=1)
        w = weighting.weights(groups)
        negative += int((w < 0).sum())
        loss = (w * per_sample).mean()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        weighting.observe(per_sample.detach(), groups, timesteps, step)
    assert negative > 0
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_attribute_subset_perturbs_only_its_groups():
    settings = fb(attributes=["race"], time_window=10)
    a = M.make_weighting("fairdiffusion", ATTRS, settings, seed=4)
    b = M.make_weighting("fairdiffusion", ATTRS, settings, seed=4)
    assert a.dim == 3
    assert [c for c in a.columns if c.startswith("sigma_")] == \
        ["sigma_race_Asian", "sigma_race_Black", "sigma_race_White"]
    groups, losses, timesteps = random_batch(torch.Generator().manual_seed(4))
    other = groups.clone()
    other[:, 1:] = 1 - other[:, 1:]  # change gender and ethnicity only
    assert torch.equal(a.weights(groups), b.weights(other))
    # y counts the perturbed attributes; every gap is still logged
    a.observe(losses, groups, timesteps, 0)
    row = a.trajectory[-1]
    assert row["y"] == pytest.approx(-row["gap_race"])
    assert row["gap_gender"] == M.group_gaps(losses, groups, SIZES)[1].item()


def test_vr_arm_fits_the_variance_reduced_objective():
    for arm, key in (("fairdiffusion", "y"), ("fairdiffusion_vr", "y_vr")):
        weighting = M.make_weighting(arm, ATTRS, fb(time_window=10), seed=6)
        run_steps(weighting, torch.Generator().manual_seed(6), 10)
        rows = weighting.trajectory
        bo = [r for r in rows if r["kind"] == "bo_update"]
        assert len(bo) == 1
        window = [r[key] for r in rows if r["kind"] == "step"]
        assert bo[0]["y_window_mean"] == pytest.approx(sum(window) / len(window))
        assert all(0.0 <= bo[0][c] <= 1.0 for c in weighting.columns if c.startswith("sigma_"))


def test_non_finite_losses_are_noted_and_not_recorded():
    weighting = M.make_weighting("fairdiffusion_vr", ATTRS, fb(time_window=3), seed=0)
    gen = torch.Generator().manual_seed(0)
    run_steps(weighting, gen, 1)
    groups, losses, timesteps = random_batch(gen)
    losses[3] = math.nan
    weighting.observe(losses, groups, timesteps, 1)
    assert "non-finite" in weighting.trajectory[-1]["note"]
    assert len(weighting.state_dict()["history_y"]) == 1
    assert bool(torch.isfinite(weighting.vr_means).all())
    run_steps(weighting, gen, 1, start=2)  # the BO update runs on the 2 recorded pairs
    assert weighting.trajectory[-1]["kind"] == "bo_update"
    assert bool(torch.isfinite(weighting.sigma).all())


# -- Bayesian optimisation -----------------------------------------------------------------------


def test_bo_propose_stays_in_bounds_without_input_data_warning():
    from botorch.exceptions.warnings import InputDataWarning

    gen = torch.Generator().manual_seed(3)
    X = torch.rand(30, 7, generator=gen, dtype=torch.float64)
    Y = -((X - 0.3) ** 2).sum(1) + 0.01 * torch.randn(30, generator=gen, dtype=torch.float64)
    settings = fb()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = M.bo_propose(X, Y, settings, seed=11)
    assert not [w for w in caught if issubclass(w.category, InputDataWarning)]
    assert "InputDataWarning" not in first.note
    assert first.sigma.shape == (7,) and bool(((first.sigma >= 0) & (first.sigma <= 1)).all())
    assert math.isfinite(first.acq_value)
    # seeded: the same call gives the same point, and the training RNG is not disturbed
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    again = M.bo_propose(X, Y, settings, seed=11)
    assert torch.equal(torch.rand(3), before)
    assert torch.equal(first.sigma, again.sigma)


def test_bo_propose_skips_degenerate_histories():
    settings = fb()
    same = torch.full((5, 3), 0.5, dtype=torch.float64)
    skip = M.bo_propose(same, torch.arange(5.0), settings, seed=0)
    assert skip.sigma is None and "fewer than 2 distinct" in skip.note
    flat = M.bo_propose(torch.rand(5, 3, dtype=torch.float64), torch.zeros(5), settings, seed=0)
    assert flat.sigma is None and "zero variance" in flat.note


def test_zero_variance_objective_is_skipped_and_noted():
    # every batch has a single group per attribute: y = 0 at every step
    weighting = M.make_weighting("fairdiffusion", ATTRS, fb(time_window=5), seed=0)
    for step in range(5):
        groups = torch.zeros(8, 3, dtype=torch.long)
        sigma_before = weighting.sigma.clone()
        weighting.observe(torch.rand(8), groups, torch.zeros(8, dtype=torch.long), step)
    row = weighting.trajectory[-1]
    assert row["kind"] == "bo_update" and "zero variance" in row["note"]
    assert [row[c] for c in weighting.columns if c.startswith("sigma_")] == sigma_before.tolist()


def test_gp_fit_failure_keeps_sigma_and_is_noted(monkeypatch):
    import botorch.fit
    from botorch.exceptions.errors import ModelFittingError

    def failing_fit(mll, **kwargs):
        raise ModelFittingError("All attempts to fit the model have failed.")

    monkeypatch.setattr(botorch.fit, "fit_gpytorch_mll", failing_fit)
    weighting = M.make_weighting("fairdiffusion", ATTRS, fb(time_window=5), seed=0)
    run_steps(weighting, torch.Generator().manual_seed(0), 4)
    kept = weighting.sigma.clone()
    run_steps(weighting, torch.Generator().manual_seed(1), 1, start=4)
    row = weighting.trajectory[-1]
    assert row["kind"] == "bo_update" and "ModelFittingError" in row["note"]
    assert [row[c] for c in weighting.columns if c.startswith("sigma_")] == kept.tolist()
    assert math.isnan(row["acq_value"])


def test_expected_botorch_warnings_become_notes_and_others_are_reemitted():
    from botorch.exceptions.warnings import BadInitialCandidatesWarning, OptimizationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("no positive acquisition", BadInitialCandidatesWarning)
        warnings.warn("lbfgs status 2", OptimizationWarning)
        warnings.warn("lbfgs status 2 again", OptimizationWarning)
        warnings.warn("something else", UserWarning)
    with warnings.catch_warnings(record=True) as reemitted:
        warnings.simplefilter("always")
        notes = M._triage(caught, "acqf")
    assert notes == ["acqf: BadInitialCandidatesWarning", "acqf: OptimizationWarning"]
    assert [str(w.message) for w in reemitted] == ["something else"]


def test_bo_moves_sigma_towards_the_optimum_of_a_synthetic_objective():
    # Losses built so that y = -(||sigma - target||^2 + noise): race group Asian gets the extra
    # loss in both gender groups, so the gender gap is 0 and the race gap is the whole signal.
    attrs = {"race": ATTRS["race"], "gender": ATTRS["gender"]}
    target = torch.tensor([0.2, 0.8, 0.3, 0.7, 0.5], dtype=torch.float64)
    combos = torch.tensor(list(itertools.product(range(3), range(2))))
    weighting = M.make_weighting("fairdiffusion", attrs, fb(time_window=10), seed=0)
    noise = torch.Generator().manual_seed(100)
    for step in range(60):
        noise_draw = float(torch.rand(1, generator=noise))
        f = float(((weighting.sigma - target) ** 2).sum()) + 0.01 * noise_draw
        losses = torch.ones(6, dtype=torch.float64)
        losses[combos[:, 0] == 0] += f
        weighting.observe(losses, combos, torch.zeros(6, dtype=torch.long), step)
        assert weighting.trajectory[-1]["kind"] == "step" or step % 10 == 9
    proposals = [torch.tensor([r[c] for c in weighting.columns if c.startswith("sigma_")])
                 for r in weighting.trajectory if r["kind"] == "bo_update"]
    assert len(proposals) == 6
    # expected squared distance of a uniform point to the target: sum_d (1/3 - t + t^2)
    random_distance = float((1 / 3 - target + target ** 2).sum())
    assert float(((proposals[-1] - target) ** 2).sum()) < random_distance / 3


# -- reproducibility and resume ------------------------------------------------------------------


def test_same_seed_same_run_and_other_seed_differs():
    runs = []
    for seed in (7, 7, 8):
        weighting = M.make_weighting("fairdiffusion", ATTRS, fb(time_window=10), seed=seed)
        runs.append(torch.stack(run_steps(weighting, torch.Generator().manual_seed(0), 15)[0]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_gradient_accumulation_draws_fresh_z_per_call():
    weighting = M.make_weighting("random", ATTRS, fb(), seed=0)
    groups = torch.zeros(4, 3, dtype=torch.long)
    assert not torch.equal(weighting.weights(groups), weighting.weights(groups))


def test_resume_continues_identically(tmp_path):
    # the vr arm: its state is a superset (bucket running means drive its objective)
    arm = "fairdiffusion_vr"
    settings = fb(time_window=20)
    straight = M.make_weighting(arm, ATTRS, settings, seed=3)
    sigmas_a, weights_a = run_steps(straight, torch.Generator().manual_seed(0), 100)
    rows_a = straight.pop_trajectory()

    first = M.make_weighting(arm, ATTRS, settings, seed=3)
    data = torch.Generator().manual_seed(0)
    sigmas_b, weights_b = run_steps(first, data, 45)
    first.pop_trajectory()
    # through the on-disk formats the training loop uses: safetensors + JSON
    state = first.state_dict()
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    assert len(tensors["history_y"]) == 5  # resumed mid-window
    save_file(tensors, tmp_path / "method.safetensors")
    (tmp_path / "method.json").write_text(json.dumps(scalars))
    resumed = M.make_weighting(arm, ATTRS, settings, seed=3)
    resumed.load_state_dict({**load_file(tmp_path / "method.safetensors"),
                             **json.loads((tmp_path / "method.json").read_text())})
    more_sigmas, more_weights = run_steps(resumed, data, 55, start=45)
    sigmas_b += more_sigmas
    weights_b += more_weights

    assert torch.equal(torch.stack(sigmas_a), torch.stack(sigmas_b))
    assert torch.equal(torch.stack(weights_a), torch.stack(weights_b))
    rows_b = resumed.pop_trajectory()
    assert len([r for r in rows_b if r["kind"] == "bo_update"]) == 3
    expected = rows_a[-len(rows_b):]
    assert json.dumps(rows_b) == json.dumps(expected)


def test_load_state_dict_rejects_a_mismatched_state():
    state = M.make_weighting("fairdiffusion", ATTRS, fb(), seed=0).state_dict()
    race_only = M.make_weighting("fairdiffusion", {"race": ATTRS["race"]}, fb(), seed=0)
    with pytest.raises(FairDiffError, match="method state"):
        race_only.load_state_dict(state)
    with pytest.raises(FairDiffError, match="method state"):
        M.make_weighting("random", ATTRS, fb(), seed=0).load_state_dict(state)


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method, settings, message", [
    ("fair", {}, "method 'fair'"),
    ("fairdiffusion", {"window": 3}, r"unknown key\(s\) \['window'\]"),
    ("fairdiffusion", {"attributes": ["age"]}, "fair_bayes.attributes"),
    ("fairdiffusion", {"exploitation_rate": 1.5}, "fair_bayes.exploitation_rate"),
    ("fairdiffusion", {"time_window": 1}, "fair_bayes.time_window"),
])
def test_bad_settings_name_the_key(method, settings, message):
    with pytest.raises(FairDiffError, match=message):
        M.make_weighting(method, ATTRS, fb(**settings), seed=0)


def test_settings_are_explicit():
    # the pure module holds no defaults (the schema does): a missing key is named
    partial = {k: v for k, v in FAIR_BAYES.items() if k != "ucb_beta"}
    with pytest.raises(FairDiffError, match=r"missing key\(s\) \['ucb_beta'\]"):
        M.make_weighting("fairdiffusion", ATTRS, partial, seed=0)


def test_registry_names_every_arm_and_drives_it():
    assert set(M.ARMS) >= {"baseline", "fairdiffusion", "random", "fairdiffusion_vr"}
    data = random_batch(torch.Generator().manual_seed(0), n=40)[0]
    for name, arm in M.ARMS.items():
        assert arm.name == name
        weighting = M.make_weighting(name, ATTRS, fb(group_attribute="race"), seed=0,
                                     data_groups=data)
        assert weighting.optimises == arm.optimises
        assert weighting.sigma.tolist() == [arm.initial_sigma] * 7
        assert (arm.objective is not None) == arm.optimises
        assert arm.control is None or arm.control in M.ARMS
    assert [a.name for a in M.ARMS.values() if a.reference] == ["baseline"]


def test_bad_groups_are_rejected():
    weighting = M.make_weighting("fairdiffusion", ATTRS, fb(), seed=0)
    with pytest.raises(ValueError, match="outside"):
        weighting.weights(torch.tensor([[3, 0, 0]]))
    with pytest.raises(ValueError, match="shape"):
        weighting.weights(torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="equal lengths"):
        weighting.observe(torch.rand(2), torch.zeros(3, 3, dtype=torch.long),
                          torch.zeros(3, dtype=torch.long), 0)


# -- the group-robust baselines: balanced, reweighted, groupdro ---------------------------------

# Training data: race Asian 1, Black 2, White 5 samples (N = 8, K = 3 cells).
DATA = torch.tensor([[0, 0, 0], [1, 0, 1], [1, 1, 0], [2, 0, 0], [2, 1, 0], [2, 0, 1],
                     [2, 1, 1], [2, 0, 0]])


def new_arm(name, data=DATA, **settings):
    return M.make_weighting(name, ATTRS, fb(**{"group_attribute": "race", **settings}), seed=0,
                            data_groups=data)


def test_reweighted_weights_are_hand_computed_inverse_frequencies():
    weighting = new_arm("reweighted")
    # w_g = N / (K n_g) = 8 / (3 n_g): Asian 8/3, Black 4/3, White 8/15
    assert weighting.cell_weights.tolist() == pytest.approx([8 / 3, 4 / 3, 8 / 15])
    w = weighting.weights(DATA)
    assert w.tolist() == pytest.approx([8 / 3, 4 / 3, 4 / 3] + [8 / 15] * 5)
    assert float(w.mean()) == pytest.approx(1.0)  # mean 1 over the training data
    # gender and ethnicity do not matter; every arm still logs the same gaps and y
    assert torch.equal(weighting.weights(torch.tensor([[1, 0, 0]])),
                       weighting.weights(torch.tensor([[1, 1, 1]])))


def test_intersection_cells_and_their_weights():
    weighting = new_arm("reweighted", intersect=True, group_attribute="gender")
    assert weighting.cell_attributes == [1, 0, 2]
    assert len(weighting.cell_names) == 12
    assert weighting.cell_names[0] == "gender_Female&race_Asian&ethnicity_Non-Hispanic"
    assert weighting.cell_names[5] == "gender_Female&race_White&ethnicity_Hispanic"
    # DATA's cells: 7 distinct (gender, race, ethnicity) cells, [2, 0, 0] twice
    assert M.group_cells(DATA, SIZES, [1, 0, 2]).tolist() == [0, 3, 8, 4, 10, 5, 11, 4]
    w = weighting.weights(DATA)
    assert w.tolist() == pytest.approx([8 / 7] * 3 + [4 / 7] + [8 / 7] * 3 + [4 / 7])
    assert float(w.mean()) == pytest.approx(1.0)


def test_balanced_draws_every_group_equally_often():
    weighting = new_arm("balanced")
    assert weighting.probabilities.tolist() == pytest.approx([1 / 3] + [1 / 6] * 2
                                                             + [1 / 15] * 5)
    assert bool((weighting.weights(DATA) == 1).all())
    order = weighting.batch_order(16)
    batches = torch.stack([order(q) for q in range(2000)])
    race = DATA[batches.reshape(-1), 0]
    n = race.numel()
    for g in range(3):
        share = float((race == g).float().mean())
        assert share == pytest.approx(1 / 3, abs=4 * math.sqrt(2 / 9 / n))
    # each sample within its group equally often: White's 5 samples at 1/15 each
    white = batches.reshape(-1)[race == 2]
    assert torch.bincount(white, minlength=8)[3:].double().div(n).tolist() == \
        pytest.approx([1 / 15] * 5, abs=4 * math.sqrt(1 / 15 / n))
    # a pure function of (seed, q): the same batch again, another seed another batch
    assert torch.equal(order(7), new_arm("balanced").batch_order(16)(7))
    other = M.make_weighting("balanced", ATTRS, fb(group_attribute="race"), seed=1,
                             data_groups=DATA).batch_order(16)
    assert not torch.equal(order(7), other(7))
    assert M.make_weighting("baseline", ATTRS, fb(), seed=0).batch_order(16) is None


def test_groupdro_hand_computed_batch():
    weighting = new_arm("groupdro", groupdro_eta=0.5)
    assert weighting.q.tolist() == pytest.approx([1 / 3] * 3)
    groups = torch.tensor([[0, 0, 0], [0, 1, 0], [1, 0, 1], [2, 1, 1]])
    losses = torch.tensor([1.0, 3.0, 2.0, 4.0])
    # w_i = B q_g / n_g: Asian 4 (1/3) / 2, Black and White 4 (1/3) / 1
    w = weighting.weights(groups)
    assert w.tolist() == pytest.approx([2 / 3, 2 / 3, 4 / 3, 4 / 3])
    # mean_i(w_i l_i) = sum_g q_g mean_g l = (2 + 2 + 4) / 3
    assert float((w * losses).mean()) == pytest.approx(8 / 3)
    weighting.observe(losses, groups, torch.zeros(4, dtype=torch.long), 0)
    # group means 2, 2, 4: q ~ (1/3) exp(0.5 * (2, 2, 4)), normalised
    e = math.e
    assert weighting.q.tolist() == pytest.approx([e / (2 * e + e * e)] * 2
                                                 + [e * e / (2 * e + e * e)])
    row = weighting.trajectory[-1]
    # the row holds the q that weighted the step (like sigma)
    assert [row[f"q_race_{g}"] for g in ATTRS["race"]] == pytest.approx([1 / 3] * 3)
    # a group absent from the batch has mean 0: its q only shrinks relative to the others
    before = weighting.q.clone()
    weighting.observe(torch.tensor([1.0, 1.0]), torch.tensor([[0, 0, 0], [2, 0, 0]]),
                      torch.zeros(2, dtype=torch.long), 1)
    expected = before * torch.exp(0.5 * torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    assert weighting.q.tolist() == pytest.approx((expected / expected.sum()).tolist())


def test_new_arms_share_the_objective_and_resume_identically():
    gen = torch.Generator().manual_seed(3)
    batches = [random_batch(gen) for _ in range(12)]

    def drive(weighting, steps):
        out = []
        for step, (groups, losses, timesteps) in steps:
            out.append(weighting.weights(groups))
            weighting.observe(losses, groups, timesteps, step)
        return out

    keys = ["gap_race", "gap_gender", "gap_ethnicity", "mean_loss", "y", "y_vr"]
    reference = M.make_weighting("baseline", ATTRS, fb(), seed=0)
    drive(reference, enumerate(batches))
    for name in NEW_ARMS:
        straight = new_arm(name, groupdro_eta=1.0)
        w_straight = drive(straight, enumerate(batches))
        assert [[r[k] for k in keys] for r in straight.trajectory] == \
            [[r[k] for k in keys] for r in reference.trajectory]
        first = new_arm(name, groupdro_eta=1.0)
        w_first = drive(first, list(enumerate(batches))[:5])
        resumed = new_arm(name, groupdro_eta=1.0)
        resumed.load_state_dict(first.state_dict())
        w_resumed = w_first + drive(resumed, list(enumerate(batches))[5:])
        assert torch.equal(torch.stack(w_straight), torch.stack(w_resumed))
    assert "groupdro_q" in new_arm("groupdro").state_dict()


@pytest.mark.parametrize("name, settings, data, message", [
    ("groupdro", {"group_attribute": None}, DATA, "fair_bayes.group_attribute"),
    ("reweighted", {"group_attribute": "age"}, DATA, "fair_bayes.group_attribute"),
    ("balanced", {"group_attribute": "race"}, None, "training data's groups"),
    ("groupdro", {"group_attribute": "race", "groupdro_eta": -1}, DATA, "groupdro_eta"),
])
def test_new_arms_bad_settings_name_the_key(name, settings, data, message):
    with pytest.raises(FairDiffError, match=message):
        M.make_weighting(name, ATTRS, fb(**settings), seed=0, data_groups=data)
