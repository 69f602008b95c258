"""Scale-out of the detection engine over Ray workers.

A fleet's devices are spread over ``N`` workers (Ray actors, local processes or a Ray
cluster) by a stable hash of their ids (:func:`~iotsentry.engine.shard_of`). The driver reads
and decodes the input once and parses the application fields once; every batch goes to every
worker through Ray's object store (numpy columns, no copy for the workers on the driver's
machine). Each worker runs a :class:`~iotsentry.engine.DetectionEngine` with ``shard=(k, N)``:

* it follows every packet for what is cheap and shared -- the inventory, DNS names, the
  conversations' directions, every device's learning clock -- so that its segments, learning
  ends and clock-hour ticks fall exactly where a single engine's do;
* it learns, scores and judges only its own devices' packets (the expensive part), with its own
  alert policy, living baselines and visibility counters.

What devices share across workers:

* **group knowledge** (networks, domains and services a device type or vendor uses): what a
  device adds at its learning end or by absorption joins its groups at the next clock hour --
  also in a single engine -- and at that point the workers exchange it through a coordinator
  actor (:class:`~iotsentry.scale.coordinator.Coordinator`);
* **peer groups**: at the first learning end each worker hands its devices' profile vectors to
  the driver, which runs the peer-group check over the whole fleet.

So alerts, incidents and baselines equal those of a single engine (tests run two local workers).
"""

from iotsentry.scale.sharded import ShardedEngine, start_ray

__all__ = ["ShardedEngine", "start_ray"]
