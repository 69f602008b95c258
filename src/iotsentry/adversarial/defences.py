"""Defences of the flow models against feature-space evasion; each returns a model with ``score(X)``.

:func:`adversarial_training`
    A :class:`~iotsentry.detectors.flow_mlp.FlowMLP` trained as usual, then for a few rounds
    the malicious training rows are attacked with *constrained* PGD
    (:class:`~iotsentry.adversarial.feature_attacks.PGD`) against the current weights and the
    realisable examples, labelled with their original class, are added to the training rows
    for more epochs (``partial_fit``). Own loop: ART's ``AdversarialTrainer`` does not know
    the flow constraints.

:class:`MonotoneFlowModel` ("bounded features")
    Binary gradient boosting (malicious vs benign) that sees only features an attacker cannot
    lower: the fixed ones (state, history, protocol, service, port group, responder scope) and
    the ones it can only raise (packets, bytes, payload, duration, context counts), with
    ``monotonic_cst = +1`` on the latter -- more packets or bytes can never lower the malicious
    score. Features the attacker can move both ways (bytes per packet, log ratios, payload share,
    the failed-connection share under chaff) are dropped. Under the threat model of its
    :class:`~iotsentry.adversarial.constraints.FlowConstraints` (default: the strongest one,
    responder controlled and chaff allowed) every realisable change can only *raise* the
    score, so no feature-space attack lowers its detection rate at a fixed threshold. The
    guarantee stops at the feature space: traffic that changes a fixed feature (another port,
    another protocol) is the problem-space red team's business.

:class:`ViewEnsemble`
    Members trained on different feature views -- the monotone model, a boosting model on the
    fixed features only (nothing realisable moves it), and an adversarially trained MLP on all
    features -- each score mapped to its benign quantile on a held-out share of the benign
    training rows; the ensemble score is the largest ("any view alarms").

Thresholds are separate: calibrate them with
:class:`~iotsentry.detectors.thresholds.FprThreshold` on benign held-out scores (1 % FPR in
:mod:`~iotsentry.adversarial.evaluate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from iotsentry.adversarial.constraints import FlowConstraints
from iotsentry.detectors.flow_classifier import balanced_weights
from iotsentry.detectors.flow_mlp import FlowMLP

__all__ = ["MonotoneFlowModel", "ViewEnsemble", "adversarial_training", "strongest_attacker"]

F64 = npt.NDArray[np.float64]


def strongest_attacker() -> FlowConstraints:
    """The widest threat model: the attacker runs both ends (its C&C server) and may send chaff."""
    return FlowConstraints(controls_responder=True, chaff=True)


def _binary(y: Sequence[str] | npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    return (np.asarray(y, dtype=str) != "benign").astype(np.int64)


def adversarial_training(
    X: npt.ArrayLike,
    y: Sequence[str] | npt.NDArray[Any],
    *,
    constraints: FlowConstraints | None = None,
    rounds: int = 2,
    n_adv: int = 1000,
    eps: float = 3.0,
    pgd_steps: int = 20,
    epochs: int = 20,
    epochs_per_round: int = 5,
    base: FlowMLP | None = None,
    seed: int = 0,
) -> FlowMLP:
    """FlowMLP hardened with constrained-PGD examples of its malicious training rows.

    Parameters
    ----------
    X, y
        Training rows and class names.
    constraints
        The attacker the examples respect (default :func:`strongest_attacker`).
    rounds
        Rounds of (attack the current model, train ``epochs_per_round`` more epochs).
    n_adv
        Malicious rows attacked per round (seeded sample).
    eps, pgd_steps
        PGD budget (standardised units) and number of steps.
    epochs
        Epochs of the initial clean training (ignored with ``base``).
    base
        An already trained FlowMLP to start from (copied; the original is left as it is).
    seed
        Seed of the MLP and of the row samples.
    """
    from iotsentry.adversarial.feature_attacks import PGD

    A = np.asarray(X, dtype=np.float32)
    labels = np.asarray(y, dtype=str)
    c = constraints if constraints is not None else strongest_attacker()
    if base is not None:
        model = FlowMLP.from_arrays(base.get_params(), base.state_arrays())
    else:
        model = FlowMLP(epochs=epochs, seed=seed).fit(A, labels)
    rng = np.random.default_rng(seed)
    malicious = np.flatnonzero(labels != "benign")
    if len(malicious) == 0:
        return model
    for _ in range(rounds):
        pick = np.sort(rng.permutation(malicious)[:n_adv])
        adv = PGD(model, eps=eps, max_iter=pgd_steps, constrained=True, constraints=c).generate(A[pick])
        model.partial_fit(
            np.vstack([A, adv]), np.concatenate([labels, labels[pick]]), epochs=epochs_per_round
        )
    return model


class MonotoneFlowModel:
    """Binary boosting on the features an attacker cannot lower, monotone in the ones it can raise.

    Parameters
    ----------
    constraints
        The threat model that decides which features are fixed, which only grow and which are
        dropped (default :func:`strongest_attacker`).
    max_iter, learning_rate, max_leaf_nodes, l2_regularization
        Passed to :class:`~sklearn.ensemble.HistGradientBoostingClassifier` (no early stopping).
    random_state
        Seed of the boosting.
    """

    def __init__(
        self,
        constraints: FlowConstraints | None = None,
        max_iter: int = 200,
        learning_rate: float = 0.1,
        max_leaf_nodes: int = 31,
        l2_regularization: float = 1.0,
        random_state: int = 0,
    ) -> None:
        self.constraints = constraints
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.l2_regularization = l2_regularization
        self.random_state = random_state

    def _view(self) -> tuple[list[int], list[int]]:
        """Columns kept and their monotone constraint (+1 where the attacker can only raise)."""
        c = self.constraints if self.constraints is not None else strongest_attacker()
        up = set(c.increasable)
        kept = set(c.fixed) | up
        cols = [i for i, n in enumerate(c.names) if n in kept]
        return cols, [1 if c.names[i] in up else 0 for i in cols]

    def fit(self, X: npt.ArrayLike, y: Sequence[str] | npt.NDArray[Any]) -> Self:
        """Fit on rows ``X`` and class names ``y`` (anything but ``benign`` is malicious)."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        codes = _binary(y)
        if len(np.unique(codes)) < 2:
            raise ValueError("MonotoneFlowModel needs benign and malicious training rows")
        self.columns_, self.monotonic_cst_ = self._view()
        self.hgb_ = HistGradientBoostingClassifier(
            max_iter=self.max_iter,
            learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization,
            monotonic_cst=self.monotonic_cst_,
            early_stopping=False,
            random_state=self.random_state,
        ).fit(
            np.asarray(X, dtype=np.float32)[:, self.columns_], codes, sample_weight=balanced_weights(codes, 2)
        )
        return self

    def score(self, X: npt.ArrayLike) -> F64:
        """Probability of "malicious" (non-decreasing in every feature the attacker can raise)."""
        A = np.asarray(X, dtype=np.float32)[:, self.columns_]
        return np.asarray(self.hgb_.predict_proba(A)[:, 1], dtype=np.float64)


class _FixedViewModel:
    """Binary boosting on the fixed features only (invariant under every realisable change)."""

    def __init__(self, constraints: FlowConstraints, random_state: int = 0) -> None:
        self.constraints = constraints
        self.random_state = random_state

    def fit(self, X: npt.ArrayLike, y: Sequence[str] | npt.NDArray[Any]) -> Self:
        from sklearn.ensemble import HistGradientBoostingClassifier

        c = self.constraints
        fixed = set(c.fixed)
        self.columns_ = [i for i, n in enumerate(c.names) if n in fixed]
        codes = _binary(y)
        self.hgb_ = HistGradientBoostingClassifier(
            max_iter=100, early_stopping=False, random_state=self.random_state
        ).fit(
            np.asarray(X, dtype=np.float32)[:, self.columns_], codes, sample_weight=balanced_weights(codes, 2)
        )
        return self

    def score(self, X: npt.ArrayLike) -> F64:
        A = np.asarray(X, dtype=np.float32)[:, self.columns_]
        return np.asarray(self.hgb_.predict_proba(A)[:, 1], dtype=np.float64)


class ViewEnsemble:
    """Largest benign quantile over members trained on different feature views.

    Parameters
    ----------
    constraints
        Threat model of the views (default :func:`strongest_attacker`).
    reference_share
        Share of the benign training rows held out of the members' training to map each
        member's score to its benign quantile.
    mlp
        An already hardened MLP member (default: :func:`adversarial_training` on the member
        training rows).
    random_state
        Seed of the split and of the members.
    """

    def __init__(
        self,
        constraints: FlowConstraints | None = None,
        reference_share: float = 0.2,
        mlp: FlowMLP | None = None,
        random_state: int = 0,
    ) -> None:
        self.constraints = constraints
        self.reference_share = reference_share
        self.mlp = mlp
        self.random_state = random_state

    def fit(self, X: npt.ArrayLike, y: Sequence[str] | npt.NDArray[Any]) -> Self:
        """Fit the members on the rows outside the benign reference share, then the quantile maps."""
        c = self.constraints if self.constraints is not None else strongest_attacker()
        A = np.asarray(X, dtype=np.float32)
        labels = np.asarray(y, dtype=str)
        rng = np.random.default_rng(self.random_state)
        benign = np.flatnonzero(labels == "benign")
        ref = np.zeros(len(A), dtype=bool)
        ref[rng.permutation(benign)[: max(1, round(self.reference_share * len(benign)))]] = True
        train = ~ref
        mlp = self.mlp
        if mlp is None:
            mlp = adversarial_training(A[train], labels[train], constraints=c, seed=self.random_state)
        self.members_: dict[str, Any] = {
            "monotone": MonotoneFlowModel(c, random_state=self.random_state).fit(A[train], labels[train]),
            "fixed-view": _FixedViewModel(c, self.random_state).fit(A[train], labels[train]),
            "mlp-adv": mlp,
        }
        self.reference_ = {k: np.sort(m.score(A[ref])) for k, m in self.members_.items()}
        return self

    def member_scores(self, X: npt.ArrayLike) -> dict[str, F64]:
        """Each member's benign quantile (0..1, plus its raw score / 1000 to break ties)."""
        out = {}
        for k, m in self.members_.items():
            s = np.asarray(m.score(X), dtype=np.float64)
            ref = self.reference_[k]
            out[k] = np.searchsorted(ref, s, side="right") / max(len(ref), 1) + 1e-3 * s
        return out

    def score(self, X: npt.ArrayLike) -> F64:
        """Largest member quantile per row."""
        return np.max(np.column_stack(list(self.member_scores(X).values())), axis=1)
