"""Fair Bayesian Perturbation (Luo et al., arXiv:2412.20374): per-sample loss weights whose
per-group scales are chosen online by Bayesian optimisation of a fairness objective.

A small pure module (no I/O, no training loop). The training loop uses it once per step:

    weighting = make_weighting(method, attributes, settings, seed, rank, broadcast, data_groups)
    order = weighting.batch_order(B)                     # balanced only: q -> batch rows
    w = weighting.weights(groups)                        # [B] loss weights of the local batch
    loss = (w * per_sample_loss).mean()
    weighting.observe(losses, groups, timesteps, step)   # gathered, unweighted, detached

Arms (`method`):
  baseline          w_i = 1 (plain fine-tuning; its scales are reported as 0: w = 1 + 0 * z).
  fairdiffusion     w_i = 1 + sum_a sigma[a, g_a(i)] z_ia, sigma chosen by BO (the paper).
  random            w_i = 1 + sum_a z_ia: sigma fixed at 1, no BO (the paper's ablation).
  fairdiffusion_vr  fairdiffusion with a variance-reduced objective; NOT the paper, off by
                    default. The paper's y is dominated by per-sample timestep noise (a pre-study
                    measured a within-window sd of y ~0.2 against a mean of ~-0.36, so the GP's
                    picks were close to random). Here each loss is divided by a running mean loss
                    of its timestep bucket (VR_BUCKETS equal buckets over NUM_TRAIN_TIMESTEPS,
                    EMA with VR_MOMENTUM, updated with the batch before it is used) before
                    the group gaps are taken.
The standard group-robust baselines (beyond the paper; issue 20). Their groups are the cells of
fair_bayes.group_attribute (default: study.attribute, the primary endpoint's) or, with
fair_bayes.intersect, of its intersection with every other attribute; sigma is reported as 0:
  balanced          w_i = 1; each batch is drawn (with replacement) with P(i) = 1 / (K n_g(i))
                    over the N training samples (n_g in cell g, K cells with samples), so every
                    cell is drawn equally often; same steps and batch size. Its data order
                    differs from the other arms' by design (seeded by (seed, batch index)); noise,
                    timesteps, dropout and flips are still the shared ones.
  reweighted        w_i = N / (K n_g(i)): static inverse-frequency weights, mean 1 over the
                    training data.
  groupdro          loss = sum_g q_g mean_{i in g} l_i, i.e. w_i = B q_g(i) / n_g(i) over the
                    local batch; q starts uniform; after each step q_g <- q_g exp(eta L_g),
                    normalised, L_g = mean loss of cell g in the gathered batch (0 when absent),
                    eta = fair_bayes.groupdro_eta (Sagawa et al. 2020, exponentiated gradient).
                    Deviation: Sagawa's Algorithm 1 updates q with the current batch before
                    using it; here observe() updates it after the step from the gathered,
                    unweighted losses, so the step uses the q of the batches before it (one step
                    later) and every rank holds the same q without another collective. q is
                    logged in the step rows (columns q_<cell>), like sigma.
Every arm computes and reports the same quantities (raw gaps, y, y_vr); only the weighting (and
the balanced arm's batches) and what the GP is fitted to differ. Every arm is an entry of ARMS.

Order within one step t (t = number of observe() calls before this one, from 0):
  1. weights(): w_i = 1 + sum_a sigma_t[a, g_a(i)] z_ia, z fresh from the per-rank stream.
  2. the training loop optimises mean_i(w_i l_i).
  3. observe(): y_t = -sum_a gap_a from the unweighted gathered losses, gap_a = max_g - min_g of
     the group mean losses of attribute a; the pair (sigma_t, y_t) is recorded, so the recorded
     sigma is the one that produced this step's weights. An attribute with any of its groups
     absent from the gathered batch contributes gap 0 (fair_bayes.absent_groups: zero, the
     default and the authors' rule, train_text_to_image_proposed.py:1034-1043: the empty
     group's mean is NaN, so is the gap, which is set to 0); `skip` instead takes the gap over
     the groups present (0 with fewer than 2), an option beyond the paper.
  4. if (t + 1) % time_window == 0: fit the GP to the window's pairs, sigma := argmax UCB,
     broadcast from process 0, history cleared (also when the update is skipped).
  5. sigma_{t+1} = rho * sigma + (1 - rho) * u_t, u_t ~ U(0,1)^D, applied every step, also right
     after a BO update: the maximiser is used in its refreshed form, as "every step" says.
  So step 0 uses sigma = 1 exactly (the initialisation) and equals the `random` arm's weights.

Weights can be negative (as in the paper: z is unbounded); the weighted loss stays finite and
that is kept on purpose.

Randomness: every draw comes from a torch.Generator reseeded from (seed, stream, [rank], t, call)
through numpy's SeedSequence, so a run is reproducible, never touches the training RNG, and a
resumed run continues identically on any number of ranks without storing generator states.
z is per rank (local samples); u and the BO seed are shared (same on every rank); the BO's own use
of torch's global RNG (optimize_acqf's raw samples, fit retries) runs inside
torch.random.fork_rng seeded from the shared stream.

Trajectory rows (bo_trajectory.csv), column `kind`:
  step       one per observe(): the sigma that produced the step's weights, raw gap per
             attribute, mean loss, y (paper objective), y_vr (variance-reduced), note.
  bo_update  one per BO update or skipped update (BO arms only): the new sigma (the maximiser,
             before the refresh; the kept sigma when skipped), acquisition value, window means of
             gaps and loss, y_window_mean (window mean of the objective the GP is fitted to),
             note (why an update was skipped, or which warnings BoTorch raised).
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from .errors import FairDiffError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison. Everything that differs between arms is a field here, so an
    arm is added by one entry in ARMS (and, for a new kind of weighting, its branch in
    FairBayesWeighting.weights)."""

    name: str
    optimises: bool          # sigma driven by BO (a GP fitted to `objective`; a trajectory)
    initial_sigma: float     # sigma at step 0 (0: the perturbation is off, w = 1 + 0 * z)
    objective: str | None    # the trajectory column the GP is fitted to (y, y_vr); None: no BO
    loss: str = "uniform"    # per-sample loss weights: uniform, perturbation, reweighted, groupdro
    sampling: str = "shuffle"  # shuffle: per-epoch permutations (train.BatchOrder); balanced
    reference: bool = False  # the plain arm every other arm is paired with (tables, study)
    control: str | None = None  # the arm this one is also compared with in the study
    summary: str = ""


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("baseline", optimises=False, initial_sigma=0.0, objective=None, reference=True,
        summary="plain fine-tuning, w = 1"),
    Arm("fairdiffusion", optimises=True, initial_sigma=1.0, objective="y", loss="perturbation",
        control="random", summary="the paper: sigma chosen by BO of y"),
    Arm("random", optimises=False, initial_sigma=1.0, objective=None, loss="perturbation",
        summary="the paper's ablation: sigma fixed at 1, no BO"),
    Arm("fairdiffusion_vr", optimises=True, initial_sigma=1.0, objective="y_vr",
        loss="perturbation", control="random",
        summary="fairdiffusion fitted to the variance-reduced y_vr (beyond the paper)"),
    Arm("balanced", optimises=False, initial_sigma=0.0, objective=None, sampling="balanced",
        summary="group-balanced sampling: P(sample) inverse to its group's frequency"),
    Arm("reweighted", optimises=False, initial_sigma=0.0, objective=None, loss="reweighted",
        summary="static inverse-frequency loss weights, mean 1 over the training data"),
    Arm("groupdro", optimises=False, initial_sigma=0.0, objective=None, loss="groupdro",
        summary="online group weights q (Sagawa et al. 2020), loss sum_g q_g mean_g l"),
)}


def arm(name: str) -> Arm:
    """The registered arm `name`; a FairDiffError naming the registered ones otherwise."""
    if name not in ARMS:
        raise FairDiffError(f"method '{name}': expected one of {list(ARMS)}")
    return ARMS[name]


# The fair_bayes keys (their defaults and meaning: workflow/schemas/config.schema.yaml).
SETTINGS = ("time_window", "exploitation_rate", "ucb_beta", "num_restarts", "raw_samples",
            "attributes", "absent_groups", "group_attribute", "intersect", "groupdro_eta")
# fair_bayes.absent_groups: how an attribute with a group absent from the batch enters y.
ABSENT_RULES = ("zero", "skip")
# fairdiffusion_vr only (beyond the paper): timestep buckets and their running-mean momentum.
VR_BUCKETS = 10
VR_MOMENTUM = 0.98
NUM_TRAIN_TIMESTEPS = 1000

# Random streams (the second entry of every seed key).
_STREAM_Z, _STREAM_U, _STREAM_BO, _STREAM_SAMPLE = 1, 2, 3, 4


# ----------------------------------------------------------------------------------------------
# Pure pieces: each is one formula of the method (module docstring).


def perturbation_weights(groups: torch.Tensor, sigma_per_attr: Sequence[torch.Tensor],
                         z: torch.Tensor) -> torch.Tensor:
    """w_i = 1 + sum_a sigma_a[g_a(i)] * z_ia.

    groups: [B, A] group index per attribute; sigma_per_attr: A tensors [G_a]; z: [B, A].
    """
    w = torch.ones(groups.shape[0], dtype=z.dtype)
    for a, sigma_a in enumerate(sigma_per_attr):
        w = w + sigma_a.to(z.dtype)[groups[:, a]] * z[:, a]
    return w


def group_gaps(losses: torch.Tensor, groups: torch.Tensor, group_sizes: Sequence[int],
               absent: str = "zero") -> torch.Tensor:
    """Per attribute, max_g mean(l | g) - min_g mean(l | g). Returns float64 [A].

    absent = "zero" (the authors' rule, train_text_to_image_proposed.py:1034-1043): an attribute
    with any of its groups absent from the batch gets 0 (the empty group's mean is NaN, so is
    the gap, which is then set to 0). absent = "skip": the gap over the groups present; an
    attribute with fewer than 2 groups present gets 0."""
    if absent not in ABSENT_RULES:
        raise ValueError(f"absent: expected one of {ABSENT_RULES}, got {absent!r}")
    # All attributes at once on an [A, max groups] grid (a handful of ops per step, not per
    # attribute); padding cells never hold a sample, so they count as absent groups.
    n_attr, width = len(group_sizes), max(group_sizes)
    cells = (groups + torch.arange(n_attr) * width).reshape(-1)
    counts = torch.bincount(cells, minlength=n_attr * width).reshape(n_attr, width)
    sums = torch.bincount(cells, weights=losses.to(torch.float64).repeat_interleave(n_attr),
                          minlength=n_attr * width).reshape(n_attr, width)
    present = counts > 0
    means = sums / counts.clamp(min=1)
    highest = torch.where(present, means, -math.inf).amax(dim=1)
    lowest = torch.where(present, means, math.inf).amin(dim=1)
    if absent == "zero":
        padding = torch.arange(width) >= torch.tensor(list(group_sizes))[:, None]
        counted = (present | padding).all(dim=1)
    else:
        counted = present.sum(dim=1) >= 2
    return torch.where(counted, highest - lowest, 0.0).to(torch.float64)


def refresh(sigma: torch.Tensor, u: torch.Tensor, rate: float) -> torch.Tensor:
    """sigma <- rate * sigma + (1 - rate) * u (u ~ U(0,1)^D keeps sigma in [0,1] and explores)."""
    return rate * sigma + (1.0 - rate) * u


def timestep_buckets(timesteps: torch.Tensor, num_buckets: int = VR_BUCKETS,
                     num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Equal-width bucket index of each training timestep (out-of-range values are clamped)."""
    b = timesteps.to(torch.long) * num_buckets // num_train_timesteps
    return b.clamp(0, num_buckets - 1)


def update_bucket_means(means: torch.Tensor, counts: torch.Tensor, losses: torch.Tensor,
                        buckets: torch.Tensor, momentum: float = VR_MOMENTUM
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """EMA of the mean loss per bucket: a bucket seen for the first time takes the batch mean,
    later m_b <- momentum * m_b + (1 - momentum) * batch mean of bucket b. Returns new tensors."""
    n = len(means)
    batch_counts = torch.bincount(buckets, minlength=n)
    batch_sums = torch.zeros(n, dtype=torch.float64).index_add_(0, buckets, losses.double())
    seen_now = batch_counts > 0
    batch_means = batch_sums / batch_counts.clamp(min=1)
    ema = momentum * means + (1.0 - momentum) * batch_means
    new_means = torch.where(seen_now, torch.where(counts > 0, ema, batch_means), means)
    return new_means, counts + batch_counts


def group_cells(groups: torch.Tensor, group_sizes: Sequence[int],
                attributes: Sequence[int]) -> torch.Tensor:
    """The cell of every sample in the groups of the chosen attributes (one attribute: its group
    index; several: their intersection, mixed radix in the given order). groups: [B, A]."""
    cells = torch.zeros(groups.shape[0], dtype=torch.long)
    for a in attributes:
        cells = cells * group_sizes[a] + groups[:, a].to(torch.long)
    return cells


def inverse_frequency_weights(cells: torch.Tensor, num_cells: int) -> torch.Tensor:
    """Per-cell weights N / (K n_g) from the training data's cells (n_g samples in cell g, K
    cells with samples, N samples): inverse to the frequency, mean 1 over the training samples.
    Cells without samples get 0. Returns float64 [num_cells]."""
    counts = torch.bincount(cells, minlength=num_cells).to(torch.float64)
    present = counts > 0
    return torch.where(present, len(cells) / (present.sum() * counts.clamp(min=1)), 0.0)


def balanced_probabilities(cells: torch.Tensor, num_cells: int) -> torch.Tensor:
    """P(draw sample i) = 1 / (K n_g(i)): every cell with samples is drawn with probability 1/K.
    Returns float64 [N], summing to 1."""
    return inverse_frequency_weights(cells, num_cells)[cells] / len(cells)


def balanced_batch(probabilities: torch.Tensor, batch_size: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Row indices of one batch, drawn with replacement from `probabilities` (as torch's
    WeightedRandomSampler does)."""
    return torch.multinomial(probabilities, batch_size, replacement=True, generator=generator)


def cell_means(losses: torch.Tensor, cells: torch.Tensor, num_cells: int) -> torch.Tensor:
    """Mean loss of every cell in the batch, 0 for a cell without samples. float64 [K]."""
    counts = torch.bincount(cells, minlength=num_cells)
    sums = torch.zeros(num_cells, dtype=torch.float64).index_add_(0, cells, losses.double())
    return sums / counts.clamp(min=1)


def groupdro_update(q: torch.Tensor, means: torch.Tensor, eta: float) -> torch.Tensor:
    """q_g <- q_g exp(eta L_g), normalised (Sagawa et al. 2020, Algorithm 1; a cell absent from
    the batch has L_g = 0, as in their loss.py)."""
    q = q * torch.exp(eta * means)
    return q / q.sum()


def groupdro_weights(q: torch.Tensor, cells: torch.Tensor, num_cells: int) -> torch.Tensor:
    """w_i = B q_g(i) / n_g(i) over the batch, so mean_i(w_i l_i) = sum_g q_g mean_{i in g} l_i
    (a cell absent from the batch contributes nothing). float64 [B]."""
    counts = torch.bincount(cells, minlength=num_cells).to(torch.float64)
    return len(cells) * q.to(torch.float64)[cells] / counts[cells]


class Proposal(NamedTuple):
    sigma: torch.Tensor | None  # None: keep the current sigma (the note says why)
    acq_value: float
    note: str


def _triage(caught: list, stage: str) -> list[str]:
    """Turn BoTorch's expected warnings into notes; re-emit anything unexpected."""
    from botorch.exceptions.warnings import BadInitialCandidatesWarning, OptimizationWarning
    from gpytorch.utils.warnings import NumericalWarning

    notes = []
    for w in caught:
        if issubclass(w.category, (BadInitialCandidatesWarning, OptimizationWarning,
                                   NumericalWarning)):
            note = f"{stage}: {w.category.__name__}"
            if note not in notes:
                notes.append(note)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return notes


def bo_propose(X: torch.Tensor, Y: torch.Tensor, settings: dict, seed: int) -> Proposal:
    """Fit SingleTaskGP (exact marginal likelihood) to (X in [0,1]^D, Y) and maximise
    UCB(beta = ucb_beta) over [0,1]^D with optimize_acqf (q = 1).

    Corners: fewer than 2 distinct points or zero variance in Y -> skipped; a GP fit or an
    acquisition optimisation that fails -> skipped. A fit that only succeeded after BoTorch's
    retries (OptimizationWarning) and optimize_acqf's BadInitialCandidatesWarning (no raw sample
    had a usable acquisition value, so restarts started from random points) still give a valid
    maximiser: they are noted, not treated as failures. Inputs are float64 with a Normalize
    transform over the known bounds and outcomes are standardised, so BoTorch raises no
    InputDataWarning. Torch's global RNG is forked and seeded with `seed`.
    """
    X = X.to(torch.float64)
    Y = Y.to(torch.float64).reshape(-1, 1)
    if len(X) < 2 or torch.unique(X, dim=0).shape[0] < 2:
        return Proposal(None, math.nan, "skipped: fewer than 2 distinct sigma points")
    if bool(Y.max() == Y.min()):
        return Proposal(None, math.nan, "skipped: zero variance in y")
    # A GP on a few dozen points is overhead-bound: run it on one thread (on a busy 2-core
    # machine 2 threads took ~12 s against ~1.4 s), which also makes it machine-independent.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_and_maximise(X, Y, settings, seed)
    finally:
        torch.set_num_threads(threads)


def _fit_and_maximise(X: torch.Tensor, Y: torch.Tensor, settings: dict, seed: int) -> Proposal:
    from botorch.acquisition import UpperConfidenceBound
    from botorch.exceptions.errors import ModelFittingError
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.input import Normalize
    from botorch.models.transforms.outcome import Standardize
    from botorch.optim import optimize_acqf
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from linear_operator.utils.errors import NotPSDError

    d = X.shape[1]
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(torch.float64)
    notes: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model = SingleTaskGP(X, Y, input_transform=Normalize(d=d, bounds=bounds),
                                     outcome_transform=Standardize(m=1))
                fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
                failure = None
            except (ModelFittingError, NotPSDError) as err:
                failure = f"GP fit failed ({type(err).__name__}), sigma kept"
        notes += _triage(caught, "fit")
        if failure:
            return Proposal(None, math.nan, "; ".join([*notes, failure]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                candidate, acq_value = optimize_acqf(
                    UpperConfidenceBound(model, beta=settings["ucb_beta"]), bounds=bounds, q=1,
                    num_restarts=settings["num_restarts"], raw_samples=settings["raw_samples"])
                failure = None
            except NotPSDError as err:
                failure = f"acquisition optimisation failed ({type(err).__name__}), sigma kept"
        notes += _triage(caught, "acqf")
        if failure:
            return Proposal(None, math.nan, "; ".join([*notes, failure]))
    return Proposal(candidate.detach().reshape(d).clamp(0.0, 1.0), float(acq_value),
                    "; ".join(notes))


# ----------------------------------------------------------------------------------------------
# The stateful hook used by the training loop.


def _check_settings(settings: dict, attributes: dict) -> dict:
    problems = [f"{what} key(s) {keys}" for what, keys in (
        ("missing", sorted(set(SETTINGS) - set(settings))),
        ("unknown", sorted(set(settings) - set(SETTINGS)))) if keys]
    if problems:
        raise FairDiffError(f"fair_bayes: {'; '.join(problems)}; expected {sorted(SETTINGS)} "
                            f"(config.section_defaults fills in the schema's defaults)")
    settings = dict(settings)
    if not (isinstance(settings["time_window"], int) and settings["time_window"] >= 2):
        raise FairDiffError("fair_bayes.time_window: expected an integer >= 2")
    if not 0.0 <= float(settings["exploitation_rate"]) <= 1.0:
        raise FairDiffError("fair_bayes.exploitation_rate: expected a number in [0, 1]")
    if float(settings["ucb_beta"]) < 0:
        raise FairDiffError("fair_bayes.ucb_beta: expected a number >= 0")
    for key in ("num_restarts", "raw_samples"):
        if not (isinstance(settings[key], int) and settings[key] >= 1):
            raise FairDiffError(f"fair_bayes.{key}: expected a positive integer")
    if settings["absent_groups"] not in ABSENT_RULES:
        raise FairDiffError(f"fair_bayes.absent_groups: expected one of {list(ABSENT_RULES)}")
    if not (isinstance(settings["groupdro_eta"], (int, float)) and settings["groupdro_eta"] >= 0):
        raise FairDiffError("fair_bayes.groupdro_eta: expected a number >= 0")
    chosen = settings["attributes"]
    if chosen is not None:
        bad = [a for a in chosen if a not in attributes]
        if bad or not chosen:
            raise FairDiffError(f"fair_bayes.attributes: {bad or 'empty list'} not among the "
                                f"dataset's attributes {list(attributes)}")
    return settings


class FairBayesWeighting:
    """State of one arm on one rank; see the module docstring for the order within a step."""

    def __init__(self, method: str, attributes: dict[str, list[str]], settings: dict,
                 seed: int, rank: int = 0,
                 broadcast: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 data_groups: torch.Tensor | None = None):
        self.arm = arm(method)
        if not attributes or any(len(g) < 1 for g in attributes.values()):
            raise FairDiffError("attributes: expected at least one attribute with its groups")
        if int(seed) < 0 or int(rank) < 0:
            raise FairDiffError(f"seed {seed}, rank {rank}: expected non-negative integers")
        self.method = method
        self.settings = _check_settings(settings, attributes)
        self.seed, self.rank = int(seed), int(rank)
        self.broadcast = broadcast or (lambda tensor: tensor)
        self.attributes = {a: list(g) for a, g in attributes.items()}
        self.group_sizes = [len(g) for g in self.attributes.values()]
        self._sizes_tensor = torch.tensor(self.group_sizes)
        names = list(self.attributes)
        chosen = self.settings["attributes"] or names
        # Perturbed attributes, in the dataset's order (the layout of sigma).
        self.selected = [i for i, a in enumerate(names) if a in chosen]
        self._sizes_sel = [self.group_sizes[i] for i in self.selected]
        self.dim = sum(self._sizes_sel)
        self.optimises = self.arm.optimises
        self.sigma = torch.full((self.dim,), self.arm.initial_sigma, dtype=torch.float64)
        self._setup_cells(data_groups)
        self.columns = (["step", "kind"]
                        + [f"sigma_{names[i]}_{g}" for i in self.selected
                           for g in self.attributes[names[i]]]
                        + ([f"q_{c}" for c in self.cell_names] if self.q is not None else [])
                        + ["acq_value"] + [f"gap_{a}" for a in names]
                        + ["mean_loss", "y", "y_vr", "y_window_mean", "note"])
        self._gen = torch.Generator()
        self._steps = 0  # observe() calls so far = index t of the current step
        self._calls = 0  # weights() calls within the current step (gradient accumulation)
        self._history: dict[str, list] = {"sigma": [], "y": [], "gaps": [], "loss": []}
        self.vr_means = torch.zeros(VR_BUCKETS, dtype=torch.float64)
        self.vr_counts = torch.zeros(VR_BUCKETS, dtype=torch.long)
        self._rows: list[dict] = []

    def _setup_cells(self, data_groups: torch.Tensor | None) -> None:
        """The groups of balanced, reweighted and groupdro: the cells of fair_bayes.group_attribute
        or, with fair_bayes.intersect, of its intersection with every other attribute."""
        self.cell_attributes, self.cell_names = [], []
        self.q = self.cell_weights = self.probabilities = None
        if self.arm.loss not in ("reweighted", "groupdro") and self.arm.sampling != "balanced":
            return
        names, chosen = list(self.attributes), self.settings["group_attribute"]
        if chosen not in self.attributes:
            raise FairDiffError(f"fair_bayes.group_attribute: {chosen!r} is not among the "
                                f"dataset's attributes {names} (needed by method {self.method!r})")
        first = names.index(chosen)
        self.cell_attributes = [first] + ([i for i in range(len(names)) if i != first]
                                          if self.settings["intersect"] else [])
        self.cell_names = ["&".join(f"{names[i]}_{g}" for i, g in zip(self.cell_attributes, combo))
                           for combo in itertools.product(
                               *[self.attributes[names[i]] for i in self.cell_attributes])]
        self.num_cells = len(self.cell_names)
        if self.arm.loss == "groupdro":
            self.q = torch.full((self.num_cells,), 1.0 / self.num_cells, dtype=torch.float64)
            return
        if data_groups is None:
            raise FairDiffError(f"method {self.method!r}: needs the training data's groups "
                                f"(make_weighting's data_groups)")
        cells = self._cells(data_groups)
        if self.arm.loss == "reweighted":
            self.cell_weights = inverse_frequency_weights(cells, self.num_cells)
        if self.arm.sampling == "balanced":
            self.probabilities = balanced_probabilities(cells, self.num_cells)

    def _cells(self, groups: torch.Tensor) -> torch.Tensor:
        return group_cells(self._check_groups(groups), self.group_sizes, self.cell_attributes)

    def batch_order(self, batch_size: int) -> Callable[[int], torch.Tensor] | None:
        """For an arm that draws its own batches (balanced): q -> row indices of global micro-batch
        q, seeded by (seed, q) alone, so resumable and different on every rank. None otherwise
        (the training loop's shuffled order)."""
        if self.probabilities is None:
            return None
        return lambda q: balanced_batch(self.probabilities, batch_size,
                                        self._generator(_STREAM_SAMPLE, int(q)))

    # -- randomness ------------------------------------------------------------------------------

    def _seed(self, *key: int) -> int:
        return int(np.random.SeedSequence([self.seed, *key]).generate_state(1, np.uint32)[0])

    def _generator(self, *key: int) -> torch.Generator:
        return self._gen.manual_seed(self._seed(*key))

    # -- per step --------------------------------------------------------------------------------

    def _check_groups(self, groups: torch.Tensor) -> torch.Tensor:
        groups = groups.to("cpu")
        if groups.dim() != 2 or groups.shape[1] != len(self.group_sizes):
            raise ValueError(f"groups: expected shape [B, {len(self.group_sizes)}], "
                             f"got {list(groups.shape)}")
        if groups.dtype.is_floating_point or groups.dtype == torch.bool:
            raise ValueError(f"groups: expected an integer tensor, got {groups.dtype}")
        groups = groups.to(torch.long)
        if bool(((groups < 0) | (groups >= self._sizes_tensor)).any()):
            raise ValueError(f"groups: indices outside the group counts {self.group_sizes}")
        return groups

    def sigma_per_attr(self) -> list[torch.Tensor]:
        return list(torch.split(self.sigma, self._sizes_sel))

    def weights(self, groups: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights [B] (float32, on groups' device) for the local batch."""
        device = groups.device
        groups = self._check_groups(groups)
        if self.arm.loss == "uniform":
            return torch.ones(len(groups), device=device)
        if self.arm.loss == "reweighted":
            return self.cell_weights[self._cells(groups)].to(device=device, dtype=torch.float32)
        if self.arm.loss == "groupdro":
            w = groupdro_weights(self.q, self._cells(groups), self.num_cells)
            return w.to(device=device, dtype=torch.float32)
        gen = self._generator(_STREAM_Z, self.rank, self._steps, self._calls)
        self._calls += 1
        z = torch.randn(len(groups), len(self.selected), generator=gen, dtype=torch.float64)
        w = perturbation_weights(groups[:, self.selected], self.sigma_per_attr(), z)
        return w.to(device=device, dtype=torch.float32)

    def observe(self, losses: torch.Tensor, groups: torch.Tensor, timesteps: torch.Tensor,
                step: int) -> None:
        """Record the step's objective (gathered batch, unweighted losses); every time_window
        steps run the BO update; then refresh sigma. `step` only labels the trajectory rows."""
        t = self._steps
        losses = losses.detach().to("cpu", torch.float64).reshape(-1)
        groups = self._check_groups(groups)
        timesteps = timesteps.detach().to("cpu").reshape(-1)
        if not len(losses) == len(groups) == len(timesteps):
            raise ValueError(f"observe: {len(losses)} losses, {len(groups)} group rows and "
                             f"{len(timesteps)} timesteps; expected equal lengths")
        absent = self.settings["absent_groups"]
        gaps = group_gaps(losses, groups, self.group_sizes, absent)
        y = -float(gaps[self.selected].sum())  # the paper's y over the perturbed attributes
        note = ""
        finite = bool(torch.isfinite(losses).all())
        if finite:
            self.vr_means, self.vr_counts = update_bucket_means(
                self.vr_means, self.vr_counts, losses, timestep_buckets(timesteps))
            normalised = losses / self.vr_means[timestep_buckets(timesteps)].clamp(min=1e-12)
            y_vr = -float(group_gaps(normalised, groups, self.group_sizes,
                                     absent)[self.selected].sum())
        else:
            y_vr = math.nan
            note = "non-finite loss: pair not recorded"
        objective = {"y": y, "y_vr": y_vr}.get(self.arm.objective, math.nan)
        mean_loss = float(losses.mean()) if len(losses) else math.nan
        if self.optimises and math.isfinite(objective):
            self._history["sigma"].append(self.sigma.clone())
            self._history["y"].append(objective)
            self._history["gaps"].append(gaps)
            self._history["loss"].append(mean_loss)
        self._rows.append(self._row(step, "step", self.sigma, math.nan, gaps.tolist(),
                                    mean_loss, y, y_vr, math.nan, note))
        if self.q is not None and finite:
            # after the row, which holds the q that weighted this step
            self.q = groupdro_update(self.q, cell_means(losses, self._cells(groups),
                                                         self.num_cells),
                                     float(self.settings["groupdro_eta"]))
        self._steps += 1
        self._calls = 0
        if self.optimises:
            if self._steps % self.settings["time_window"] == 0:
                self._bo_update(step, t)
            u = torch.rand(self.dim, generator=self._generator(_STREAM_U, t),
                           dtype=torch.float64)
            self.sigma = refresh(self.sigma, u, float(self.settings["exploitation_rate"]))

    def _bo_update(self, step: int, t: int) -> None:
        h = self._history
        n = len(h["y"])
        X = torch.stack(h["sigma"]) if n else torch.zeros(0, self.dim, dtype=torch.float64)
        Y = torch.tensor(h["y"], dtype=torch.float64)
        proposal = bo_propose(X, Y, self.settings, self._seed(_STREAM_BO, t))
        new = proposal.sigma if proposal.sigma is not None else self.sigma
        # Every rank calls broadcast at every BO step (a collective), whatever it decided.
        self.sigma = self.broadcast(new.clone()).to("cpu", torch.float64)
        gaps = torch.stack(h["gaps"]).mean(0).tolist() if n else [math.nan] * len(self.group_sizes)
        self._rows.append(self._row(
            step, "bo_update", self.sigma, proposal.acq_value, gaps,
            float(np.mean(h["loss"])) if n else math.nan, math.nan, math.nan,
            float(Y.mean()) if n else math.nan, proposal.note))
        if proposal.sigma is None:
            log.info("BO update at step %s skipped: %s", step, proposal.note)
        elif proposal.note:
            log.debug("BO update at step %s: %s", step, proposal.note)
        self._history = {"sigma": [], "y": [], "gaps": [], "loss": []}

    def _row(self, step, kind, sigma, acq_value, gaps, mean_loss, y, y_vr, y_window_mean, note):
        q = self.q.tolist() if self.q is not None else []
        values = [int(step), kind, *sigma.tolist(), *q, acq_value, *gaps, mean_loss, y, y_vr,
                  y_window_mean, note]
        return dict(zip(self.columns, values))

    # -- trajectory ------------------------------------------------------------------------------

    @property
    def trajectory(self) -> list[dict]:
        """Rows not yet popped (all rows when pop_trajectory is never called)."""
        return list(self._rows)

    def pop_trajectory(self) -> list[dict]:
        """Rows since the last pop; they are dropped here (the caller appends them to its CSV)."""
        rows, self._rows = self._rows, []
        return rows

    # -- resume ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Tensors (safetensors-able) plus JSON-able scalars. Unpopped trajectory rows are not
        part of it: the training loop persists popped rows with its checkpoint."""
        h = self._history
        n = len(h["y"])
        return {
            "sigma": self.sigma.clone(),
            "history_sigma": (torch.stack(h["sigma"]) if n
                              else torch.zeros(0, self.dim, dtype=torch.float64)),
            "history_y": torch.tensor(h["y"], dtype=torch.float64),
            "history_gaps": (torch.stack(h["gaps"]) if n
                             else torch.zeros(0, len(self.group_sizes), dtype=torch.float64)),
            "history_loss": torch.tensor(h["loss"], dtype=torch.float64),
            "vr_bucket_means": self.vr_means.clone(),
            "vr_bucket_counts": self.vr_counts.clone(),
            **({"groupdro_q": self.q.clone()} if self.q is not None else {}),
            "method": self.method,
            "seed": self.seed,
            "steps_observed": self._steps,
            "weights_calls": self._calls,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method or int(state.get("seed", -1)) != self.seed:
            raise FairDiffError(f"method state: saved for method {state.get('method')!r} seed "
                                f"{state.get('seed')}, expected {self.method!r} seed {self.seed}")
        sigma = torch.as_tensor(state["sigma"], dtype=torch.float64)
        if sigma.shape != (self.dim,):
            raise FairDiffError(f"method state: sigma has shape {list(sigma.shape)}, expected "
                                f"[{self.dim}] (were the attributes changed?)")
        self.sigma = sigma.clone()
        if self.q is not None:
            q = torch.as_tensor(state["groupdro_q"], dtype=torch.float64)
            if q.shape != self.q.shape:
                raise FairDiffError(f"method state: q has shape {list(q.shape)}, expected "
                                    f"{list(self.q.shape)} (were the groups changed?)")
            self.q = q.clone()
        hx = torch.as_tensor(state["history_sigma"], dtype=torch.float64)
        self._history = {
            "sigma": [row.clone() for row in hx],
            "y": torch.as_tensor(state["history_y"], dtype=torch.float64).tolist(),
            "gaps": [row.clone() for row in
                     torch.as_tensor(state["history_gaps"], dtype=torch.float64)],
            "loss": torch.as_tensor(state["history_loss"], dtype=torch.float64).tolist(),
        }
        self.vr_means = torch.as_tensor(state["vr_bucket_means"], dtype=torch.float64).clone()
        self.vr_counts = torch.as_tensor(state["vr_bucket_counts"], dtype=torch.long).clone()
        self._steps = int(state["steps_observed"])
        self._calls = int(state["weights_calls"])
        self._rows = []


def make_weighting(method: str, attributes: dict[str, list[str]], settings: dict,
                   seed: int, rank: int = 0,
                   broadcast: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   data_groups: torch.Tensor | None = None) -> FairBayesWeighting:
    """The loss weighting of one arm. `attributes`: the dataset's {attribute: [groups]} (the
    column order of `groups`); `settings`: the config's fair_bayes section; `broadcast(tensor)`:
    returns process 0's copy of a CPU float64 tensor (e.g. accelerate.utils.broadcast; with NCCL
    move it to the device and back); it is called by every rank at every BO step;
    `data_groups`: [N, A] groups of every training sample (balanced and reweighted need them:
    their frequencies are those of the training data)."""
    return FairBayesWeighting(method, attributes, settings, seed, rank, broadcast, data_groups)
