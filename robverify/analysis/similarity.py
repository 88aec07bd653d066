"""Task similarity between a source model's task and a target task, from the source model's features.

Measures on plain arrays (``features`` [N, D] float, ``labels`` [N] int in 0..K-1), each a transferability score
where higher means "the source features suit the target labels better", except :func:`ot_distance` and
:func:`otdd` (lower = closer) and :func:`label_overlap` (a set ratio):

- :func:`logme` — the log marginal evidence of a Bayesian linear model per one-hot label column (You et al. 2021),
  maximised over its two precisions by the usual fixed point, divided by N and averaged over classes.
- :func:`hscore` — ``tr(cov(f)^+ cov(E[f | y]))`` (Bao et al. 2019).
- :func:`leep` — log expected empirical prediction of the source head's softmax (Nguyen et al. 2020).
- :func:`gbc` — minus the summed Bhattacharyya coefficients between per-class diagonal Gaussians (Pandy et al. 2022).
- :func:`linear_cka` — linear centred kernel alignment between two representations of the same samples. In
  :func:`transfer_similarity` it compares the source and the *transferred* model's features of the target samples
  (key ``representation_change_cka``): how much the strategy changed the representation, an outcome of the
  strategy and not a similarity of the tasks (it is 1 for a linear probe).
- :func:`label_overlap` — Jaccard overlap of the class-name sets.
- :func:`ot_distance` — the exact 2-Wasserstein distance between two feature clouds (POT's ``emd2``); label-blind.
- :func:`otdd` — the optimal-transport dataset distance (Alvarez-Melis & Fusi 2020): exact OT between two
  *labelled* datasets whose ground cost adds to the feature distance the 2-Wasserstein distance between the
  class-conditional feature distributions (diagonal-Gaussian closed form).

:func:`transfer_similarity` computes all of them for a (source model, transferred model, source data, target data)
quadruple; the trainer stores its result in the transferred model's card.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from robverify.analysis.runs import REPRESENTATION_CHANGE  # the card key (older cards: ``cka``)
from robverify.errors import RobverifyError

__all__ = [
    "MAX_SAMPLES",
    "OT_SAMPLES",
    "REPRESENTATION_CHANGE",
    "class_gaussians",
    "features_of",
    "gaussian_w2_diag",
    "gbc",
    "hscore",
    "label_overlap",
    "leep",
    "linear_cka",
    "logme",
    "logme_evidence",
    "ot_distance",
    "otdd",
    "transfer_similarity",
]

#: samples per task that the measures read (a seeded subset of the training split)
MAX_SAMPLES = 1000
#: samples per side of the optimal-transport problem (exact EMD is quadratic in memory)
OT_SAMPLES = 500
_VAR_FLOOR = 1e-6


def _check(features: np.ndarray, labels: np.ndarray | None = None, what: str = "features") -> tuple[np.ndarray, np.ndarray | None]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2 or f.shape[0] < 2:
        raise RobverifyError(f"{what}: expected an array [N >= 2, D], got shape {tuple(np.shape(features))}")
    if not np.all(np.isfinite(f)):
        raise RobverifyError(f"{what}: expected finite values")
    if labels is None:
        return f, None
    y = np.asarray(labels)
    if y.shape != (f.shape[0],):
        raise RobverifyError(f"{what}: expected labels of shape ({f.shape[0]},), got {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise RobverifyError(f"{what}: expected integer labels >= 0")
    return f, y.astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# LogME


def logme_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """Log evidence ``log p(target | features, alpha, beta)`` of the model ``t = F w + noise``,
    ``w ~ N(0, I/alpha)``, ``noise ~ N(0, I/beta)``; features [N, D], target [N]. Direct formula (for checks)."""
    f = np.asarray(features, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ t)
    residual = float(np.sum((f @ m - t) ** 2))
    _, logdet = np.linalg.slogdet(a)
    return (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * residual - alpha / 2 * float(m @ m) - logdet / 2)


def _logme_column(u_t: np.ndarray, s2: np.ndarray, t: np.ndarray, n: int, d: int,
                  max_iter: int = 100, tol: float = 1e-5) -> float:
    """Maximised evidence / N for one target column, from the SVD ``F = U diag(s) V^T`` (``u_t = U^T t``)."""
    t_norm2 = float(t @ t)
    if s2.size == 0:  # features carry nothing (all zero): alpha -> inf, the evidence of t = noise alone
        beta = n / max(t_norm2, 1e-12)
        return 0.5 * math.log(beta) - 0.5 * math.log(2 * math.pi) - beta / 2 * t_norm2 / n
    alpha, beta = 1.0, 1.0
    proj2 = u_t**2
    outside = max(t_norm2 - float(proj2.sum()), 0.0)  # |t|^2 outside the column space of F
    for _ in range(max_iter):
        shrink = beta * s2 / (alpha + beta * s2)  # per singular direction
        gamma = float(shrink.sum())
        m2 = float(np.sum(beta**2 * s2 * proj2 / (alpha + beta * s2) ** 2))  # |m|^2
        residual = float(np.sum((1 - shrink) ** 2 * proj2)) + outside  # |F m - t|^2
        new_alpha = max(gamma, 1e-12) / max(m2, 1e-12)
        new_beta = max(n - gamma, 1e-12) / max(residual, 1e-12)
        done = abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    shrink = beta * s2 / (alpha + beta * s2)
    m2 = float(np.sum(beta**2 * s2 * proj2 / (alpha + beta * s2) ** 2))
    residual = float(np.sum((1 - shrink) ** 2 * proj2)) + outside
    logdet = float(np.sum(np.log(alpha + beta * s2))) + (d - s2.size) * math.log(alpha)
    evidence = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                - beta / 2 * residual - alpha / 2 * m2 - logdet / 2)
    return evidence / n


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of features [N, D] for labels [N]: the maximised log evidence per sample of a Bayesian linear
    regression onto each one-hot label column, averaged over the K classes (higher = more transferable)."""
    f, y = _check(features, labels, "logme")
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-10
    u, s2 = u[:, keep], s[keep] ** 2
    classes = np.unique(y)
    scores = [_logme_column(u.T @ (y == k).astype(np.float64), s2, (y == k).astype(np.float64), n, d)
              for k in classes]
    return float(np.mean(scores))


# ---------------------------------------------------------------------------------------------------------------
# H-score, LEEP, GBC


def hscore(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score ``tr(pinv(cov(f)) cov(E[f | y]))`` of features [N, D] and labels [N] (population covariances)."""
    f, y = _check(features, labels, "hscore")
    f = f - f.mean(axis=0)
    cov_f = f.T @ f / len(f)
    g = np.zeros_like(f)
    for k in np.unique(y):
        rows = y == k
        g[rows] = f[rows].mean(axis=0)
    cov_g = g.T @ g / len(g)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP of the source head's softmax ``source_probs`` [N, Z] (rows sum to 1) for target labels [N].

    ``P(y, z) = mean_i theta_z(x_i) [y_i = y]``, ``P(y | z) = P(y, z) / P(z)``,
    ``LEEP = mean_i log sum_z P(y_i | z) theta_z(x_i)`` (<= 0; 0 when the source head predicts the labels)."""
    theta, y = _check(source_probs, labels, "leep")
    if np.any(theta < 0) or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-4):
        raise RobverifyError("leep: expected probabilities (rows >= 0 summing to 1)")
    n_y = int(y.max()) + 1
    joint = np.zeros((n_y, theta.shape[1]))
    np.add.at(joint, y, theta)
    joint /= len(y)
    p_z = joint.sum(axis=0)
    conditional = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)  # P(y | z)
    eep = np.sum(conditional[y] * theta, axis=1)
    return float(np.mean(np.log(np.maximum(eep, 1e-300))))


def _bhattacharyya(mu1: np.ndarray, var1: np.ndarray, mu2: np.ndarray, var2: np.ndarray) -> float:
    """Bhattacharyya coefficient of two diagonal Gaussians."""
    var = (var1 + var2) / 2
    distance = (np.sum((mu1 - mu2) ** 2 / var) / 8
                + 0.5 * np.sum(np.log(var) - 0.5 * (np.log(var1) + np.log(var2))))
    return float(np.exp(-distance))


def gbc(features: np.ndarray, labels: np.ndarray, *, max_dim: int | None = 64) -> float:
    """GBC: minus the sum over ordered class pairs ``i != j`` of the Bhattacharyya coefficient between the
    per-class diagonal Gaussians (population variance, floored at 1e-6) of features [N, D]. Features wider than
    ``max_dim`` are first projected on their leading principal components. In [-K(K-1), 0]; higher = better
    separated classes."""
    f, y = _check(features, labels, "gbc")
    if max_dim is not None and f.shape[1] > max_dim:
        centred = f - f.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        f = centred @ vt[:max_dim].T
    classes = np.unique(y)
    stats = [(f[y == k].mean(axis=0), np.maximum(f[y == k].var(axis=0), _VAR_FLOOR)) for k in classes]
    total = 0.0
    for i, (mu_i, var_i) in enumerate(stats):
        for j, (mu_j, var_j) in enumerate(stats):
            if i != j:
                total += _bhattacharyya(mu_i, var_i, mu_j, var_j)
    return -total


# ---------------------------------------------------------------------------------------------------------------
# representation and dataset comparisons


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same N samples, x [N, D1] and y [N, D2]:
    ``|Yc^T Xc|_F^2 / (|Xc^T Xc|_F |Yc^T Yc|_F)`` with column-centred Xc, Yc. In [0, 1]; 0 if either is constant."""
    a, _ = _check(x, None, "linear_cka")
    b, _ = _check(y, None, "linear_cka")
    if len(a) != len(b):
        raise RobverifyError(f"linear_cka: expected the same samples, got {len(a)} and {len(b)} rows")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    cross = np.linalg.norm(b.T @ a) ** 2
    norm = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(cross / norm) if norm > 0 else 0.0


def label_overlap(source_classes: Sequence[str], target_classes: Sequence[str]) -> float:
    """Jaccard overlap ``|S & T| / |S | T|`` of two label sets, compared by class name (digits of mnist5k and
    of digits share names)."""
    s, t = set(map(str, source_classes)), set(map(str, target_classes))
    return len(s & t) / len(s | t) if s | t else 0.0


def ot_distance(x: np.ndarray, y: np.ndarray) -> float:
    """The exact 2-Wasserstein distance between the uniform empirical measures of x [N, D] and y [M, D]:
    ``sqrt(min_P sum P_ij |x_i - y_j|^2)`` over couplings P (POT's network simplex)."""
    import ot

    a, _ = _check(x, None, "ot_distance")
    b, _ = _check(y, None, "ot_distance")
    if a.shape[1] != b.shape[1]:
        raise RobverifyError(f"ot_distance: expected the same feature width, got {a.shape[1]} and {b.shape[1]}")
    return _emd_distance(ot.dist(a, b, metric="sqeuclidean"))


def _emd_distance(cost: np.ndarray) -> float:
    """``sqrt`` of the optimal-transport cost between uniform measures for a ground cost [N, M] (exact EMD)."""
    import ot

    n, m = cost.shape
    value = ot.emd2(np.full(n, 1 / n), np.full(m, 1 / m), cost, numItermax=1_000_000)
    return float(math.sqrt(max(float(value), 0.0)))


def class_gaussians(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class diagonal Gaussians of features [N, D] with labels [N]: (classes [K] present, sorted; means [K, D];
    standard deviations [K, D], population ``ddof=0``)."""
    f, y = _check(features, labels, "class_gaussians")
    classes = np.unique(y)
    means = np.stack([f[y == k].mean(axis=0) for k in classes])
    stds = np.stack([f[y == k].std(axis=0) for k in classes])
    return classes, means, stds


def gaussian_w2_diag(means_a: np.ndarray, stds_a: np.ndarray, means_b: np.ndarray, stds_b: np.ndarray) -> np.ndarray:
    """Squared 2-Wasserstein distances between diagonal Gaussians, [K, D] x [L, D] -> [K, L]: the Bures-Wasserstein
    closed form, which for diagonal covariances is ``|mu_a - mu_b|^2 + |sigma_a - sigma_b|^2``."""
    import ot

    mean_a, mean_b = np.atleast_2d(means_a), np.atleast_2d(means_b)
    std_a, std_b = np.atleast_2d(stds_a), np.atleast_2d(stds_b)
    return ot.dist(mean_a, mean_b, metric="sqeuclidean") + ot.dist(std_a, std_b, metric="sqeuclidean")


def otdd(features_a: np.ndarray, labels_a: np.ndarray, features_b: np.ndarray, labels_b: np.ndarray) -> float:
    """Optimal-transport dataset distance between labelled datasets (features_a [N, D], labels_a [N]) and
    (features_b [M, D], labels_b [M]) (Alvarez-Melis & Fusi 2020); lower = closer.

    ``sqrt(min_P sum P_ij c_ij)`` over couplings P of the uniform empirical measures (exact EMD, POT's ``emd2``),
    with the ground cost ``c_ij = |a_i - b_j|^2 + W2(P_{y_i}, Q_{y'_j})^2``: the label-to-label cost is the
    squared 2-Wasserstein distance between the two class-conditional feature distributions, each approximated by
    a diagonal Gaussian (closed form, :func:`gaussian_w2_diag`). Labels are compared through their feature
    distributions, not their names: renaming the classes of one dataset leaves the distance unchanged, moving
    samples between classes does not. 0 for identical datasets; symmetric.
    """
    a, ya = _check(features_a, labels_a, "otdd")
    b, yb = _check(features_b, labels_b, "otdd")
    if a.shape[1] != b.shape[1]:
        raise RobverifyError(f"otdd: expected the same feature width, got {a.shape[1]} and {b.shape[1]}")
    import ot

    classes_a, means_a, stds_a = class_gaussians(a, ya)
    classes_b, means_b, stds_b = class_gaussians(b, yb)
    label_cost = gaussian_w2_diag(means_a, stds_a, means_b, stds_b)  # [K, L]
    rows, cols = np.searchsorted(classes_a, ya), np.searchsorted(classes_b, yb)
    cost = ot.dist(a, b, metric="sqeuclidean") + label_cost[rows][:, cols]
    return _emd_distance(cost)


# ---------------------------------------------------------------------------------------------------------------
# models and task data


def _head_linear(model: nn.Module) -> nn.Linear:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
    if not linears:
        raise RobverifyError(f"similarity: expected a zoo model with a linear head, got {type(model).__name__}")
    return linears[-1]


@torch.no_grad()
def features_of(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Penultimate representation: the input of the head's last linear layer, x [N, C, H, W] -> [N, features]."""
    linear = _head_linear(model)
    captured: list[torch.Tensor] = []
    hook = linear.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach().flatten(1)))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size].to(device))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).double().cpu().numpy()


@torch.no_grad()
def _probabilities(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = [torch.softmax(model(x[s:s + batch_size].to(device)).double(), dim=1).cpu()
           for s in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def _subset(n: int, cap: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n)[:cap]) if n > cap else np.arange(n)


def transfer_similarity(source_model: nn.Module, transferred_model: nn.Module, source_data: Any, target_data: Any,
                        *, seed: int = 0, max_samples: int = MAX_SAMPLES) -> dict[str, float]:
    """All similarity scores between the source task and the target task, as the model card stores them.

    ``source_data`` / ``target_data``: task data (``x_train`` [N, C, H, W], ``y_train`` [N], ``class_names``),
    as ``trainers.tasks.load_task`` returns. A seeded subset of at most ``max_samples`` training samples per task
    is read. Features are the source model's penultimate representation. Keys:

    ``logme``, ``hscore``, ``gbc`` (source features vs target labels), ``leep`` (source head softmax vs target
    labels), ``label_overlap`` (class names), ``ot_distance`` (2-Wasserstein distance between source and target
    features, both standardised with the source features' per-dimension mean and standard deviation) and ``otdd``
    (:func:`otdd` of the labelled source and target samples, same standardised features); the two OT measures read
    at most ``OT_SAMPLES`` samples per side.

    ``representation_change_cka`` (:data:`REPRESENTATION_CHANGE`) is not a task similarity: the linear CKA between
    the source and the transferred model's features of the target samples, i.e. how much the strategy changed the
    representation (1 for a linear probe). Older cards store it as ``cka``.
    """
    target_idx = _subset(len(target_data.y_train), max_samples, seed)
    source_idx = _subset(len(source_data.y_train), max_samples, seed + 1)
    x_t = target_data.x_train[torch.as_tensor(target_idx)]
    y_t = target_data.y_train[torch.as_tensor(target_idx)].cpu().numpy()
    x_s = source_data.x_train[torch.as_tensor(source_idx)]
    y_s = source_data.y_train[torch.as_tensor(source_idx)].cpu().numpy()
    f_target = features_of(source_model, x_t)
    f_source = features_of(source_model, x_s)
    f_transferred = features_of(transferred_model, x_t)
    mean, std = f_source.mean(axis=0), np.maximum(f_source.std(axis=0), 1e-6)
    ot_s = _subset(len(f_source), OT_SAMPLES, seed + 2)
    ot_t = _subset(len(f_target), OT_SAMPLES, seed + 3)
    z_source, z_target = (f_source[ot_s] - mean) / std, (f_target[ot_t] - mean) / std
    scores = {
        "logme": logme(f_target, y_t),
        "hscore": hscore(f_target, y_t),
        "leep": leep(_probabilities(source_model, x_t), y_t),
        "gbc": gbc(f_target, y_t),
        REPRESENTATION_CHANGE: linear_cka(f_target, f_transferred),
        "label_overlap": label_overlap(source_data.class_names, target_data.class_names),
        "ot_distance": ot_distance(z_source, z_target),
        "otdd": otdd(z_source, y_s[ot_s], z_target, y_t[ot_t]),
    }
    bad = [k for k, v in scores.items() if not math.isfinite(v)]
    if bad:
        raise RobverifyError(f"similarity: {', '.join(bad)} is not finite (degenerate features?)")
    return scores
