"""Expert ensembles as data: a partition of the noise axis into intervals, one denoiser per interval.

eDiff-I (Balaji et al. 2022) and ERNIE-ViLG 2.0 (Feng et al. 2023) give each stage of denoising its own
U-Net; each sampling step runs exactly the expert whose interval holds its noise level.

    partition = ernie_blocks(10)                      # timesteps: expert j owns t in [100 j, 100 (j + 1))
    partition = ediffi_tree(((9, 511), (3, 0)))       # sigmas: E(3,0) | the rest | E(9,511)
    table = partition.table(plan)                     # static expert index per model evaluation
    t = partition.sample_levels(key, expert_ids)      # training noise levels inside each expert's interval

An `ExpertPartition` holds the ascending interior boundaries b_1 < ... < b_k of its axis ("sigma" for EDM,
"timestep" for DDPM); expert j owns [b_j, b_{j+1}) with b_0 = lowest, b_{k+1} = highest, so expert 0 is
the lowest-noise expert (eDiff-I's E(l, 0)). Training noise: EDM draws ln sigma ~ N(p_mean, p_std^2)
truncated to the interval (inverse CDF), DDPM draws t uniformly in the block. `masses` are the intervals'
probabilities under the untruncated training distribution (ERNIE's Algorithm 1 picks an expert with that
probability when it samples t first).
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.diffusion.sample_loop import expert_table_from_boundaries

AXES = ("sigma", "timestep")
_STD_NORMAL = NormalDist()


@dataclasses.dataclass(frozen=True)
class ExpertPartition:
    """Intervals of the noise axis, one per expert, ascending in noise.

    axis: "sigma" (EDM: continuous sigma, log-normal training) or "timestep" (DDPM: integer t in
    [0, num_train_timesteps), uniform training). boundaries: the k interior boundaries (k + 1 experts).
    names: optional labels (eDiff-I node names such as "E(9,511)").
    """

    axis: str
    boundaries: tuple[float, ...] = ()
    num_train_timesteps: int = 1000
    p_mean: float = -1.2
    p_std: float = 1.2
    names: tuple[str, ...] = ()

    def __post_init__(self):
        if self.axis not in AXES:
            raise ValueError(f"partition axis must be one of {AXES}, got {self.axis!r}")
        b = np.asarray(self.boundaries, np.float64)
        if b.ndim != 1 or np.any(np.diff(b) <= 0):
            raise ValueError(f"boundaries must be strictly increasing, got {self.boundaries}")
        if self.axis == "sigma" and np.any(b <= 0):
            raise ValueError(f"sigma boundaries must be positive, got {self.boundaries}")
        if self.axis == "timestep":
            if np.any(b != np.round(b)) or np.any(b <= 0) or np.any(b >= self.num_train_timesteps):
                raise ValueError(f"timestep boundaries must be integers in (0, {self.num_train_timesteps}), "
                                 f"got {self.boundaries}")
        if self.p_std <= 0:
            raise ValueError(f"p_std must be positive, got {self.p_std}")
        if self.names and len(self.names) != self.num_experts:
            raise ValueError(f"{len(self.names)} names for {self.num_experts} experts")

    @property
    def num_experts(self) -> int:
        return len(self.boundaries) + 1

    def intervals(self) -> list[tuple[float, float]]:
        """(low, high) of each expert: sigma in [low, high) or integer t in [low, high)."""
        lo = 0.0 if self.axis == "sigma" else 0
        hi = math.inf if self.axis == "sigma" else self.num_train_timesteps
        edges = [lo, *self.boundaries, hi]
        return [(edges[j], edges[j + 1]) for j in range(self.num_experts)]

    def cdf(self, value) -> np.ndarray:
        """Training-distribution CDF at `value` (float64, host)."""
        v = np.asarray(value, np.float64)
        if self.axis == "timestep":
            return np.clip(v / self.num_train_timesteps, 0.0, 1.0)
        with np.errstate(divide="ignore"):
            z = (np.log(np.maximum(v, 0.0)) - self.p_mean) / self.p_std
        flat = [_STD_NORMAL.cdf(x) if np.isfinite(x) else float(x > 0) for x in z.reshape(-1)]
        return np.asarray(flat, np.float64).reshape(z.shape)

    @property
    def masses(self) -> np.ndarray:
        """Each interval's probability under the (untruncated) training distribution; sums to 1."""
        edges = np.concatenate([[0.0], self.cdf(self.boundaries).reshape(-1), [1.0]])
        return np.diff(edges)

    def expert_of(self, values) -> np.ndarray:
        """Expert index of each noise level (host)."""
        return np.searchsorted(np.asarray(self.boundaries, np.float64), np.asarray(values, np.float64),
                               side="right")

    def table(self, plan) -> tuple[int, ...]:
        """The static per-evaluation expert table of a `SamplingPlan` (`diffusion.sample(expert_table=...)`):
        by `plan.eval_sigmas` on the sigma axis, by `plan.model_times` on the timestep axis. A sigma partition
        routes a discrete-time (DDPM) plan by the sigma of each evaluated timestep, and vice versa."""
        if self.num_experts == 1:
            return (0,) * plan.num_evals
        values = plan.eval_sigmas if self.axis == "sigma" else plan.model_times
        return expert_table_from_boundaries(values, self.boundaries)

    def sample_levels(self, key, expert_ids):
        """Training noise levels, one per entry of `expert_ids` (any shape, int), each inside its expert's
        interval: float32 sigmas (log-normal truncated to the interval) or int32 timesteps (uniform)."""
        expert_ids = jnp.asarray(expert_ids, jnp.int32)
        u = jax.random.uniform(key, expert_ids.shape, jnp.float32)
        if self.axis == "timestep":
            edges = jnp.asarray([0, *self.boundaries, self.num_train_timesteps], jnp.float32)
            lo, hi = edges[expert_ids], edges[expert_ids + 1]
            return jnp.minimum(jnp.floor(lo + u * (hi - lo)), hi - 1).astype(jnp.int32)
        cdf_edges = np.concatenate([[0.0], self.cdf(self.boundaries).reshape(-1), [1.0]])
        edges = jnp.asarray(cdf_edges, jnp.float32)
        q = edges[expert_ids] + u * (edges[expert_ids + 1] - edges[expert_ids])
        q = jnp.clip(q, 1e-7, 1.0 - 1e-7)
        return jnp.exp(self.p_mean + self.p_std * jax.scipy.special.ndtri(q))

    def describe(self) -> list[dict]:
        """One row per expert: name, interval, mass (for reports and model cards; an open upper end is None)."""
        names = self.names or tuple(f"expert {j}" for j in range(self.num_experts))
        return [{"expert": j, "name": names[j], "axis": self.axis, "low": lo, "high": None if math.isinf(hi) else hi,
                 "mass": float(m)} for j, ((lo, hi), m) in enumerate(zip(self.intervals(), self.masses))]


# ------------------------------------------------------------------------------------------- builders

def single(axis: str = "timestep", **kwargs) -> ExpertPartition:
    """One model for every noise level (the baseline)."""
    return ExpertPartition(axis, (), **kwargs)


def ernie_blocks(num_experts: int, num_train_timesteps: int = 1000) -> ExpertPartition:
    """ERNIE-ViLG 2.0's mixture of denoising experts: `num_experts` equal blocks of timesteps, expert
    floor(t / (T / N)) (10 blocks of 100 in the paper)."""
    if num_experts < 1 or num_train_timesteps % num_experts:
        raise ValueError(f"{num_experts} experts must split {num_train_timesteps} timesteps into equal blocks")
    size = num_train_timesteps // num_experts
    return ExpertPartition("timestep", tuple(float(size * j) for j in range(1, num_experts)),
                           num_train_timesteps=num_train_timesteps,
                           names=tuple(f"t[{size * j},{size * (j + 1)})" for j in range(num_experts)))


def lognormal_quantile(q: float, p_mean: float = -1.2, p_std: float = 1.2) -> float:
    """sigma_q = exp(p_mean + p_std * Phi^-1(q))."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {q}")
    return math.exp(p_mean + p_std * _STD_NORMAL.inv_cdf(q))


def equal_mass(num_experts: int, p_mean: float = -1.2, p_std: float = 1.2) -> ExpertPartition:
    """`num_experts` equal-probability intervals of p(sigma): eDiff-I's full tree level l = log2 N, and
    the EDM counterpart of ERNIE's equal timestep blocks (uniform t makes equal blocks equal-mass)."""
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    bounds = tuple(lognormal_quantile(j / num_experts, p_mean, p_std) for j in range(1, num_experts))
    return ExpertPartition("sigma", bounds, p_mean=p_mean, p_std=p_std,
                           names=tuple(f"q[{j}/{num_experts},{j + 1}/{num_experts})" for j in range(num_experts)))


def ediffi_tree(nodes, p_mean: float = -1.2, p_std: float = 1.2) -> ExpertPartition:
    """eDiff-I's expert tree grown at its extremes: each node (level l, index i) owns the quantiles
    [i / 2^l, (i + 1) / 2^l] of the log-normal p(sigma); what the nodes leave uncovered becomes the
    in-between model(s). ``((9, 511), (3, 0))`` is the paper's Config D: E(3,0) (sigma < ~0.0757), one
    model for the middle and E(9,511) (sigma > ~9.61). ``((1, 0), (1, 1))`` is the 2-expert split at the
    median (~0.301). The boundaries are computed, never typed in."""
    spans = []
    for node in nodes:
        level, index = (int(v) for v in node)
        if level < 1 or not 0 <= index < 2 ** level:
            raise ValueError(f"tree node (level, index) = {node} is not a node: need level >= 1 and "
                             f"0 <= index < 2^level")
        spans.append((index / 2 ** level, (index + 1) / 2 ** level, f"E({level},{index})"))
    spans.sort()
    for (a0, a1, na), (b0, b1, nb) in zip(spans, spans[1:]):
        if b0 < a1:
            raise ValueError(f"tree nodes {na} and {nb} overlap")
    cuts = sorted({q for lo, hi, _ in spans for q in (lo, hi) if 0.0 < q < 1.0})
    edges = [0.0, *cuts, 1.0]
    by_span = {(lo, hi): name for lo, hi, name in spans}
    names = tuple(by_span.get((edges[j], edges[j + 1]), f"rest[{edges[j]:.6g},{edges[j + 1]:.6g})")
                  for j in range(len(edges) - 1))
    return ExpertPartition("sigma", tuple(lognormal_quantile(q, p_mean, p_std) for q in cuts), p_mean=p_mean,
                           p_std=p_std, names=names)


def from_config(cfg, *, formulation: str, num_train_timesteps: int = 1000, p_mean: float = -1.2,
                p_std: float = 1.2) -> ExpertPartition:
    """The partition a config names (``config.model.experts``):

      partition: "single" | "ernie" (num_experts equal timestep blocks) | "equal_mass" (num_experts
                 equal-probability sigma intervals) | "ediffi_tree" (nodes) | "boundaries" (explicit
                 `boundaries` on `axis`)
    A timestep partition needs the DDPM formulation, a sigma partition the EDM one.
    """
    kind = cfg.get("partition", "single")
    axis = "sigma" if formulation == "edm" else "timestep"
    if kind == "single":
        part = single(axis, num_train_timesteps=num_train_timesteps, p_mean=p_mean, p_std=p_std)
    elif kind == "ernie":
        part = ernie_blocks(int(cfg["num_experts"]), num_train_timesteps)
    elif kind == "equal_mass":
        part = equal_mass(int(cfg["num_experts"]), p_mean, p_std)
    elif kind == "ediffi_tree":
        part = ediffi_tree(tuple(tuple(n) for n in cfg["nodes"]), p_mean, p_std)
    elif kind == "boundaries":
        part = ExpertPartition(str(cfg.get("axis", axis)), tuple(float(b) for b in cfg["boundaries"]),
                               num_train_timesteps=num_train_timesteps, p_mean=p_mean, p_std=p_std)
    else:
        raise ValueError(f"model.experts.partition={kind!r}; choose single, ernie, equal_mass, ediffi_tree "
                         "or boundaries")
    if part.axis != axis:
        raise ValueError(f"model.experts.partition={kind!r} partitions {part.axis}s but model.formulation="
                         f"{formulation!r} trains on {axis}s (ernie needs ddpm; equal_mass and ediffi_tree need edm)")
    return part
