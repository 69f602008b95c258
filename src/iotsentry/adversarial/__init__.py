"""Evasion attacks on the flow detectors, the domain constraints they must respect, and defences.

Modules (import them directly; this package imports nothing heavy):

* :mod:`~iotsentry.adversarial.constraints` -- what an attacker can realise on a flow's features;
* :mod:`~iotsentry.adversarial.feature_attacks` -- PGD, FGSM (gradients), HopSkipJump (labels),
  ZOO (scores) via the Adversarial Robustness Toolbox, plain and constrained;
* :mod:`~iotsentry.adversarial.defences` -- adversarial training, a monotone bounded-feature
  model, an ensemble over feature views;
* :mod:`~iotsentry.adversarial.evaluate` -- the feature-space evasion table of BENCHMARKS Q6;
* :mod:`~iotsentry.adversarial.problem_space` and the ``problem_*`` modules -- problem-space
  attacks that transform captures, then re-extract features.
"""

from __future__ import annotations
