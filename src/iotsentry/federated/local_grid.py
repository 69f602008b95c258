"""A Flower :class:`~flwr.serverapp.Grid` that delivers messages to ClientApps in this process.

The poisoning matrix (:mod:`iotsentry.federated.poison_matrix`) runs hundreds of short
federations; starting the Simulation Runtime (a Ray cluster) for each would cost more than the
training itself. :class:`LocalGrid` keeps everything Flower does on the server side — the
built-in strategies' ``start`` loop, their sampling, validation and aggregation, the Message
and record types — and replaces only the transport: ``push_messages`` calls the node's
:class:`~flwr.clientapp.ClientApp` directly, one node after the other, with a
:class:`~flwr.app.Context` (``node_config`` with ``partition-id`` / ``num-partitions`` like the
Simulation Runtime gives, and a per-node ``state`` kept across rounds).

A test checks that a run through :class:`LocalGrid` ends with the same global weights as the
same run through ``flwr.simulation.run_simulation``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LocalGrid"]

_run_ids = itertools.count(1)
_FIRST_NODE = 1001  # SuperLink is node 1


class LocalGrid(Grid):
    """Grid over ``n_nodes`` in-process nodes (node ids from 1001, partition ids ``0..n-1``)."""

    def __init__(
        self,
        client_app: ClientApp,
        n_nodes: int,
        run_config: dict[str, bool | float | int | str] | None = None,
    ):
        self.client_app = client_app
        self.node_ids = list(range(_FIRST_NODE, _FIRST_NODE + n_nodes))
        self._run = Run.create_empty(run_id=next(_run_ids))
        self._run.primary_task_id = 1
        # the process-wide identity Flower stamps on every Message it creates
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._contexts = {
            nid: Context(
                run_id=self._run.run_id,
                node_id=nid,
                node_config={"partition-id": nid - _FIRST_NODE, "num-partitions": n_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for nid in self.node_ids
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids: list[str] = []
        for msg in messages:
            mid = str(uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            ctx = self._contexts[msg.metadata.dst_node_id]
            try:
                reply = self.client_app(msg, ctx)
            except Exception as e:  # a failing site is a failure reply, as on a real SuperLink
                from flwr.app import Error

                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in list(message_ids) if m in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
