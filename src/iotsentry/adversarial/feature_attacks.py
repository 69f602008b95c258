"""Feature-space evasion attacks on flow models (Adversarial Robustness Toolbox), plain or constrained.

Every attack declares what it needs from the model (``needs``) and refuses, at construction,
a model that does not offer it (:class:`ValueError`):

``gradients``
    White box: the model is a :class:`~iotsentry.detectors.flow_mlp.FlowMLP` (or exposes the
    same ``weights_``/``mean_``/``scale_``/``classes_``); it is rebuilt as a ``torch.nn.Module``
    that includes the standardisation and wrapped in ART's ``PyTorchClassifier``.
    :class:`PGD`, :class:`FGSM`.
``scores``
    Black box returning a score per flow (``score(X)``, higher = more malicious): :class:`ZOO`.
``labels``
    Black box returning only alert / no alert: a score model plus the operating threshold, or a
    model with ``predict`` (class names, ``benign`` = no alert): :class:`HopSkipJump`.
``none``
    :class:`Transfer` replays examples crafted on another (surrogate) model.

Every attack is targeted at "benign" and returns ``generate(X) -> X_adv`` (float32 rows of
:func:`~iotsentry.features.flow_features.flow_matrix`). ``eps`` of the gradient attacks is in
standardised units of the attacked MLP (``eps * scale_`` per feature, L-infinity).

``constrained=True`` keeps the examples realisable under a
:class:`~iotsentry.adversarial.constraints.FlowConstraints` (default: own direction only):

* :class:`PGD` -- ART's ``mask`` restricts every step to the features the attacker sets; the
  network is wrapped so that derived features are recomputed from the raw ones inside the
  forward pass (their gradient flows back to packets and bytes). **After each step** the
  iterate is clipped to the eps ball and projected onto the relaxed feasible set (monotone,
  dependencies, no rounding), and the fully projected point (rounded counts) is scored; the
  lowest-scoring realisable point of all steps is returned.
* :class:`FGSM` -- ``mask`` and the derived-feature wrapper, **projection after the attack**.
* :class:`HopSkipJump`, :class:`ZOO` -- per flow, the attack searches only the coordinates
  the attacker controls and the black box is queried on the *projected* point
  (``model(project(x, z))``): the attacker knows its own constraints. The result is projected.

ART's HopSkipJump and ZOO draw from NumPy's global generator: :meth:`generate` seeds it with
``seed`` and restores it afterwards, so runs repeat. PyTorch and ART are imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from iotsentry.adversarial.constraints import FlowConstraints

__all__ = ["FGSM", "PGD", "ZOO", "FeatureAttack", "HopSkipJump", "Transfer", "mlp_module", "offers"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
NEEDS = ("gradients", "scores", "labels", "none")


def _has_weights(model: object) -> bool:
    return all(hasattr(model, a) for a in ("weights_", "mean_", "scale_", "classes_"))


def offers(model: object) -> set[str]:
    """What a model offers an attacker: ``gradients``, ``scores``, ``labels`` (and always ``none``)."""
    caps = {"none"}
    if _has_weights(model):
        caps.add("gradients")
    if callable(getattr(model, "score", None)):
        caps |= {"scores", "labels"}
    if callable(getattr(model, "predict", None)):
        caps.add("labels")
    return caps


def mlp_module(model: Any, constraints: FlowConstraints | None = None) -> Any:
    """``torch.nn.Module`` computing the logits of a FlowMLP-like model on raw feature rows.

    The standardisation ``(x - mean_) / scale_`` is the first operation. With ``constraints``
    the derived features (bytes per packet, log ratios, payload share) are first recomputed
    from the raw ``log1p`` volumes, so gradients reach packets and bytes through them.
    """
    import torch

    if not _has_weights(model):
        raise ValueError("mlp_module needs a model with weights_, mean_, scale_ and classes_")
    mean = torch.tensor(np.asarray(model.mean_, dtype=np.float32))
    scale = torch.tensor(np.asarray(model.scale_, dtype=np.float32))
    layers = [torch.tensor(np.asarray(w, dtype=np.float32)) for w in model.weights_]
    col = constraints.column if constraints is not None else None

    def derive(x: Any) -> Any:
        assert col is not None

        def raw(name: str) -> Any:
            return torch.expm1(x[:, col(name)].clamp(min=0.0, max=60.0))

        sp, dp = raw("log_src_pkts"), raw("log_dst_pkts")
        sb, db = raw("log_src_bytes"), raw("log_dst_bytes")
        spay, dpay = raw("log_src_payload"), raw("log_dst_payload")
        values = {
            "log_src_bytes_per_pkt": torch.log1p(sb / sp.clamp(min=1.0)),
            "log_dst_bytes_per_pkt": torch.log1p(db / dp.clamp(min=1.0)),
            "log_ratio_bytes_dst_src": x[:, col("log_dst_bytes")] - x[:, col("log_src_bytes")],
            "log_ratio_pkts_dst_src": x[:, col("log_dst_pkts")] - x[:, col("log_src_pkts")],
            "payload_share": ((spay + dpay) / (sb + db).clamp(min=1.0)).clamp(0.0, 1.0),
        }
        out = x.clone()
        for name, v in values.items():
            out[:, col(name)] = v
        return out

    class _Net(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            if col is not None:
                x = derive(x)
            h = (x - mean) / scale
            for i in range(0, len(layers) - 2, 2):
                h = torch.relu(h @ layers[i].T + layers[i + 1])
            return h @ layers[-2].T + layers[-1]

    return _Net()


class FeatureAttack:
    """Base class: checks the model's capabilities and holds the constraint settings.

    Parameters
    ----------
    model
        The attacked model.
    constrained
        Keep every example realisable (see the module docstring).
    constraints
        The attacker's capabilities (default: :class:`FlowConstraints` with its defaults).
    """

    needs: ClassVar[str] = "none"
    name: ClassVar[str] = "attack"

    def __init__(self, model: Any, *, constrained: bool = False, constraints: FlowConstraints | None = None):
        if self.needs not in NEEDS:  # pragma: no cover - guards subclasses
            raise TypeError(f"unknown need {self.needs!r}")
        have = offers(model)
        if self.needs not in have:
            raise ValueError(
                f"{type(self).__name__} needs {self.needs} from the model; "
                f"{type(model).__name__} offers only {', '.join(sorted(have))}"
            )
        self.model = model
        self.constrained = constrained
        self.constraints = constraints if constraints is not None else FlowConstraints()

    def generate(self, X: npt.ArrayLike) -> F32:  # pragma: no cover - abstract
        """Adversarial rows for ``X`` (same shape, float32)."""
        raise NotImplementedError

    def _rows(self, X: npt.ArrayLike) -> F32:
        A = np.asarray(X, dtype=np.float32)
        if A.ndim != 2 or A.shape[1] != len(self.constraints.names):
            raise ValueError(f"expected rows of {len(self.constraints.names)} features, got {A.shape}")
        return A


# ---------------------------------------------------------------------------------------------
# White box (gradients)
# ---------------------------------------------------------------------------------------------


class _GradientAttack(FeatureAttack):
    needs: ClassVar[str] = "gradients"

    def __init__(
        self,
        model: Any,
        *,
        eps: float = 1.0,
        target: str = "benign",
        constrained: bool = False,
        constraints: FlowConstraints | None = None,
        batch_size: int = 256,
    ) -> None:
        super().__init__(model, constrained=constrained, constraints=constraints)
        classes = [str(c) for c in model.classes_]
        if target not in classes:
            raise ValueError(f"target class {target!r} is not one of the model's classes {classes}")
        self.eps = eps
        self.target = target
        self.batch_size = batch_size
        self._target_index = classes.index(target)

    def _classifier(self, derived: bool) -> Any:
        import torch
        from art.estimators.classification import PyTorchClassifier  # type: ignore[import-untyped]

        net = mlp_module(self.model, self.constraints if derived else None)
        n_features = len(self.constraints.names)
        return PyTorchClassifier(
            model=net,
            loss=torch.nn.CrossEntropyLoss(),
            input_shape=(n_features,),
            nb_classes=len(self.model.classes_),
            device_type="cpu",
        )

    def _targets(self, n: int) -> F32:
        y = np.zeros((n, len(self.model.classes_)), dtype=np.float32)
        y[:, self._target_index] = 1.0
        return y

    def _eps(self, units: float) -> F32:
        return (units * np.asarray(self.model.scale_, dtype=np.float32)).astype(np.float32)


class PGD(_GradientAttack):
    """Projected gradient descent (L-infinity) towards ``target``, via ART.

    Parameters
    ----------
    eps, eps_step
        Budget and step in standardised units (``eps_step`` default ``eps / 8``).
    max_iter
        Number of steps.
    """

    name: ClassVar[str] = "pgd"

    def __init__(
        self,
        model: Any,
        *,
        eps: float = 1.0,
        eps_step: float | None = None,
        max_iter: int = 40,
        target: str = "benign",
        constrained: bool = False,
        constraints: FlowConstraints | None = None,
        batch_size: int = 256,
    ) -> None:
        super().__init__(
            model,
            eps=eps,
            target=target,
            constrained=constrained,
            constraints=constraints,
            batch_size=batch_size,
        )
        self.eps_step = eps_step if eps_step is not None else eps / 8.0
        self.max_iter = max_iter

    def _pgd(self, clf: Any, eps: F32, step: F32, max_iter: int) -> Any:
        from art.attacks.evasion import ProjectedGradientDescent  # type: ignore[import-untyped]

        return ProjectedGradientDescent(
            clf,
            norm=np.inf,
            eps=eps,
            eps_step=step,
            max_iter=max_iter,
            targeted=True,
            num_random_init=0,
            batch_size=self.batch_size,
            verbose=False,
        )

    def generate(self, X: npt.ArrayLike) -> F32:
        """Adversarial rows (see the module docstring for the constrained variant)."""
        X0 = self._rows(X)
        if len(X0) == 0:
            return X0.copy()
        eps, step = self._eps(self.eps), self._eps(self.eps_step)
        y = self._targets(len(X0))
        if not self.constrained:
            attack = self._pgd(self._classifier(derived=False), eps, step, self.max_iter)
            return np.asarray(attack.generate(X0, y=y), dtype=np.float32)
        c = self.constraints
        clf = self._classifier(derived=True)
        one_step = self._pgd(clf, step, step, 1)
        mask = c.mask(X0)
        best = X0.copy()
        best_score = np.asarray(self.model.score(X0), dtype=np.float64)
        x = X0.copy()
        for _ in range(self.max_iter):
            x = np.asarray(one_step.generate(x, y=y, mask=mask), dtype=np.float32)
            x = np.clip(x, X0 - eps, X0 + eps)
            x = c.project(X0, x, integral=False)
            feasible = c.project(X0, x)
            s = np.asarray(self.model.score(feasible), dtype=np.float64)
            better = s < best_score
            best[better], best_score[better] = feasible[better], s[better]
        return best


class FGSM(_GradientAttack):
    """Fast gradient sign method (one L-infinity step of ``eps``) towards ``target``, via ART."""

    name: ClassVar[str] = "fgsm"

    def generate(self, X: npt.ArrayLike) -> F32:
        """Adversarial rows; constrained: masked step, then projection."""
        from art.attacks.evasion import FastGradientMethod

        X0 = self._rows(X)
        if len(X0) == 0:
            return X0.copy()
        attack = FastGradientMethod(
            self._classifier(derived=self.constrained),
            norm=np.inf,
            eps=self._eps(self.eps),
            eps_step=self._eps(self.eps),
            targeted=True,
            batch_size=self.batch_size,
        )
        y = self._targets(len(X0))
        if not self.constrained:
            return np.asarray(attack.generate(X0, y=y), dtype=np.float32)
        out = attack.generate(X0, y=y, mask=self.constraints.mask(X0))
        return self.constraints.project(X0, out)


# ---------------------------------------------------------------------------------------------
# Black box (scores, labels)
# ---------------------------------------------------------------------------------------------


class _BlackBoxAttack(FeatureAttack):
    """Per-flow black-box attack through ART's ``BlackBoxClassifier`` (two classes: benign, alert)."""

    clip_per_feature: ClassVar[bool] = True
    """Give ART per-feature bounds (ZOO accepts scalar bounds only; the projection bounds it)."""

    def __init__(
        self,
        model: Any,
        *,
        threshold: float | None = None,
        benign: npt.ArrayLike | None = None,
        constrained: bool = False,
        constraints: FlowConstraints | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(model, constrained=constrained, constraints=constraints)
        self.threshold = threshold
        self.benign = None if benign is None else self._rows(benign)
        self.seed = seed

    def _alert(self, X: F32) -> npt.NDArray[np.bool_]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _oracle(self, X: F32) -> F32:  # pragma: no cover - overridden
        """Two-column output of the black box on full rows (benign, alert)."""
        raise NotImplementedError

    def _attack_one(self, clf: Any, z: F32, z_init: F32 | None) -> F32:  # pragma: no cover
        raise NotImplementedError

    def _full(self, x: F32, cols: npt.NDArray[np.int64]) -> Callable[[npt.NDArray[Any]], F32]:
        """Map search coordinates ``z`` (the columns ``cols``) to full rows, projected if constrained."""

        def full(Z: npt.NDArray[Any]) -> F32:
            Z = np.asarray(Z, dtype=np.float32).reshape(-1, len(cols))
            orig = np.repeat(x[None, :], len(Z), axis=0)
            rows = orig.copy()
            rows[:, cols] = Z
            return self.constraints.project(orig, rows) if self.constrained else rows

        return full

    def _init(
        self, x: F32, full: Callable[[npt.NDArray[Any]], F32], cols: npt.NDArray[np.int64]
    ) -> F32 | None:
        """A starting point the black box calls benign: the nearest benign rows, projected if constrained."""
        if self.benign is None or len(self.benign) == 0:
            return None
        order = np.argsort(np.linalg.norm(self.benign - x, axis=1), kind="stable")[:64]
        cand = full(self.benign[order][:, cols])
        ok = np.flatnonzero(~self._alert(cand))
        return cand[ok[0]][cols] if len(ok) else None

    def _bounds(self, x: F32, cols: npt.NDArray[np.int64], z_init: F32 | None) -> tuple[F32, F32]:
        pool = self.benign if self.benign is not None and len(self.benign) else x[None, :]
        lo = np.minimum(pool[:, cols].min(axis=0), x[cols])
        hi = np.maximum(pool[:, cols].max(axis=0), x[cols])
        if self.constrained:
            lo = x[cols].copy()  # monotone: nothing below the original
        if z_init is not None:
            hi = np.maximum(hi, z_init)
        hi = np.maximum(hi, lo + 0.5)
        return lo.astype(np.float32), hi.astype(np.float32)

    def generate(self, X: npt.ArrayLike) -> F32:
        """Adversarial rows, one ART attack per flow that currently raises an alert.

        A row is replaced only when the attack's result no longer raises one (the attacker
        sends the modified traffic only if it gets through); other rows are returned as given.
        """
        from threadpoolctl import threadpool_limits

        X0 = self._rows(X)
        out = X0.copy()
        if len(X0) == 0:
            return out
        alert = self._alert(X0)
        mask = self.constraints.mask(X0) if self.constrained else np.ones_like(X0)
        state = np.random.get_state()
        np.random.seed(self.seed)
        try:
            # thousands of tiny queries: thread start-up would dominate (scikit-learn's OpenMP)
            with threadpool_limits(1):
                for i in np.flatnonzero(alert):
                    cand = self._attack_row(X0[i], np.flatnonzero(mask[i] > 0))
                    if cand is not None and not self._alert(cand[None, :])[0]:
                        out[i] = cand
        finally:
            np.random.set_state(state)
        return out

    def _attack_row(self, x: F32, cols: npt.NDArray[np.int64]) -> F32 | None:
        """The attack's result for one flow, searching the columns ``cols`` (None: nothing to move)."""
        from art.estimators.classification import BlackBoxClassifier

        if len(cols) == 0:
            return None
        full = self._full(x, cols)
        z_init = self._init(x, full, cols)
        lo, hi = self._bounds(x, cols, z_init)
        clf = BlackBoxClassifier(
            lambda Z: self._oracle(full(Z)),
            input_shape=(len(cols),),
            nb_classes=2,
            clip_values=(lo, hi) if self.clip_per_feature else None,
        )
        z = self._attack_one(clf, x[cols][None, :].astype(np.float32), z_init)
        return full(z)[0]


class HopSkipJump(_BlackBoxAttack):
    """Decision-based HopSkipJump (labels only: alert or not), via ART.

    Parameters
    ----------
    model
        A score model (give ``threshold``: alert = score above it) or a model with ``predict``
        (alert = predicted class other than ``benign``).
    threshold
        The operating threshold of a score model.
    benign
        Benign rows the attacker can observe; the nearest one the model does not flag (projected
        onto the attacker's constraints when constrained) starts the search. Without them ART
        draws random starting points.
    max_iter, max_eval, init_eval, init_size, norm
        ART's HopSkipJump settings (kept small: tens of flows run in well under a minute).
    """

    needs: ClassVar[str] = "labels"
    name: ClassVar[str] = "hopskipjump"

    def __init__(
        self,
        model: Any,
        *,
        threshold: float | None = None,
        benign: npt.ArrayLike | None = None,
        max_iter: int = 10,
        max_eval: int = 200,
        init_eval: int = 20,
        init_size: int = 20,
        norm: int | float | str = 2,
        constrained: bool = False,
        constraints: FlowConstraints | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            threshold=threshold,
            benign=benign,
            constrained=constrained,
            constraints=constraints,
            seed=seed,
        )
        if threshold is None and not callable(getattr(model, "predict", None)):
            raise ValueError(
                "HopSkipJump needs labels: give the threshold of a score model or a model with predict"
            )
        self.max_iter = max_iter
        self.max_eval = max_eval
        self.init_eval = init_eval
        self.init_size = init_size
        self.norm = norm

    def _alert(self, X: F32) -> npt.NDArray[np.bool_]:
        if self.threshold is not None:
            return np.asarray(self.model.score(X)) > self.threshold
        return np.asarray(self.model.predict(X)).astype(str) != "benign"

    def _oracle(self, X: F32) -> F32:
        a = self._alert(X)
        return np.column_stack([~a, a]).astype(np.float32)

    def _attack_one(self, clf: Any, z: F32, z_init: F32 | None) -> F32:
        from art.attacks.evasion import HopSkipJump as ArtHopSkipJump

        attack = ArtHopSkipJump(
            clf,
            targeted=True,
            norm=self.norm,
            max_iter=self.max_iter,
            max_eval=self.max_eval,
            init_eval=self.init_eval,
            init_size=self.init_size,
            verbose=False,
        )
        kwargs: dict[str, Any] = {} if z_init is None else {"x_adv_init": z_init[None, :].copy()}
        return np.asarray(attack.generate(z, y=np.array([0]), **kwargs), dtype=np.float32)


class ZOO(_BlackBoxAttack):
    """Zeroth-order optimisation (scores only), via ART.

    The black box answers ``[1 - q, q]`` with ``q = sigmoid(logit(score) - logit(threshold))``,
    so "benign" wins exactly when the score falls below the operating threshold (``threshold``
    default 0.5). ``variable_h`` is the finite-difference step in feature units: tree models are
    piecewise constant, so it is much larger than ART's default.
    """

    needs: ClassVar[str] = "scores"
    name: ClassVar[str] = "zoo"
    clip_per_feature: ClassVar[bool] = False

    def __init__(
        self,
        model: Any,
        *,
        threshold: float | None = None,
        benign: npt.ArrayLike | None = None,
        max_iter: int = 20,
        binary_search_steps: int = 2,
        learning_rate: float = 0.1,
        initial_const: float = 10.0,
        nb_parallel: int = 16,
        variable_h: float = 0.05,
        constrained: bool = False,
        constraints: FlowConstraints | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            threshold=threshold,
            benign=benign,
            constrained=constrained,
            constraints=constraints,
            seed=seed,
        )
        self.max_iter = max_iter
        self.binary_search_steps = binary_search_steps
        self.learning_rate = learning_rate
        self.initial_const = initial_const
        self.nb_parallel = nb_parallel
        self.variable_h = variable_h

    def _alert(self, X: F32) -> npt.NDArray[np.bool_]:
        return np.asarray(self.model.score(X)) > (0.5 if self.threshold is None else self.threshold)

    def _oracle(self, X: F32) -> F32:
        t = 0.5 if self.threshold is None else self.threshold
        s = np.clip(np.asarray(self.model.score(X), dtype=np.float64), 1e-9, 1 - 1e-9)
        t = float(np.clip(t, 1e-9, 1 - 1e-9))
        q = 1.0 / (1.0 + np.exp(-(np.log(s / (1 - s)) - np.log(t / (1 - t)))))
        return np.column_stack([1.0 - q, q]).astype(np.float32)

    def _attack_one(self, clf: Any, z: F32, z_init: F32 | None) -> F32:
        from art.attacks.evasion import ZooAttack

        attack = ZooAttack(
            clf,
            targeted=True,
            learning_rate=self.learning_rate,
            max_iter=self.max_iter,
            binary_search_steps=self.binary_search_steps,
            initial_const=self.initial_const,
            abort_early=True,
            use_resize=False,
            use_importance=False,
            nb_parallel=min(self.nb_parallel, z.shape[1]),
            batch_size=1,
            variable_h=self.variable_h,
            verbose=False,
        )
        return np.asarray(attack.generate(z, y=np.array([0])), dtype=np.float32)


class Transfer(FeatureAttack):
    """Examples crafted by ``source`` (an attack on a surrogate model), replayed on ``model``.

    Needs nothing from the attacked model; realisable when the source attack is constrained.
    """

    needs: ClassVar[str] = "none"
    name: ClassVar[str] = "transfer"

    def __init__(self, model: Any, source: FeatureAttack) -> None:
        super().__init__(model, constrained=source.constrained, constraints=source.constraints)
        self.source = source

    def generate(self, X: npt.ArrayLike) -> F32:
        """The source attack's examples for ``X``."""
        return self.source.generate(X)
