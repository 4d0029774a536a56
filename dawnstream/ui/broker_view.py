"""What the broker knows about the jobs: their topics (partitions, messages), each consumer group's
members, assignment and lag, and the dead-letter topics' latest records with their ``dlq.*`` headers.

Read-only: an AdminClient (group descriptions, committed offsets) and a consumer without a group
that never commits (watermarks; the dead letters are read by ``assign`` at the tail). The view of
Kafka UI / Redpanda Console, reduced to the jobs the dashboard shows.
"""

from __future__ import annotations

import time
from typing import Any

from dawnstream.topics.dlq import dlq_reason
from dawnstream.topics.spec import dlq_topic_name

DLQ_LAST = 20  # dead letters shown per topic
DLQ_COUNTED = 2000  # the newest dead letters whose reasons are counted
PREVIEW_BYTES = 160


def _reason_class(reason: str) -> str:
    """A dead letter's reason, cut to its kind: the text before the first ``:`` (``decode: ...`` ->
    ``decode``) or its first 60 characters."""
    head = reason.split(":", 1)[0].strip()
    return head[:60] if head else reason[:60]


class BrokerView:
    """Asks the broker at ``bootstrap`` (client ``settings`` as the topology gives them).

    Raises nothing: each answer carries ``error`` when the broker could not be asked.
    """

    def __init__(self, bootstrap: str, settings: dict[str, str] | None = None, timeout_s: float = 5.0) -> None:
        from confluent_kafka import Consumer
        from confluent_kafka.admin import AdminClient

        from dawnstream.streams.kafka_clients import base_settings, client_only

        base = base_settings(bootstrap, settings)
        self.bootstrap = base["bootstrap.servers"]
        self.timeout_s = timeout_s
        self.admin = AdminClient(client_only(base, consumer=False))
        self.consumer = Consumer({**client_only(base, consumer=True), "group.id": "dawnstream.ui.reader",
                                  "enable.auto.commit": False, "isolation.level": "read_committed"})

    def close(self) -> None:
        self.consumer.close()

    def _partitions(self, topic: str) -> list[int] | None:
        md = self.admin.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
        if md is None or md.error is not None:
            return None
        return sorted(md.partitions)

    def _watermarks(self, topic: str, parts: list[int]) -> dict[int, tuple[int, int]]:
        from confluent_kafka import TopicPartition

        return {p: self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self.timeout_s)
                for p in parts}

    def topics(self, names: list[str]) -> list[dict[str, Any]]:
        """Per topic: ``name``, ``partitions``, ``offsets`` (high minus low watermark, summed: the records plus, on
        a transactional topic, its commit markers), ``exists``."""
        out = []
        for name in names:
            parts = self._partitions(name)
            if parts is None:
                out.append({"name": name, "exists": False, "partitions": 0, "offsets": 0})
                continue
            marks = self._watermarks(name, parts)
            out.append({"name": name, "exists": True, "partitions": len(parts),
                        "offsets": sum(hi - lo for lo, hi in marks.values())})
        return out

    def group(self, group: str, topic: str) -> dict[str, Any]:
        """A consumer group on ``topic``: ``state``, ``members`` (client id, host, partitions) and per
        partition the committed offset, high watermark and lag (messages; the group's view, which the
        workers' own ``dawnstream_consumer_lag`` refines between commits)."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        out: dict[str, Any] = {"group": group, "topic": topic}
        desc = self.admin.describe_consumer_groups([group], request_timeout=self.timeout_s)[group].result(
            timeout=self.timeout_s)
        out["state"] = str(desc.state).split(".")[-1].lower()
        out["members"] = [{"client_id": m.client_id, "host": m.host,
                           "partitions": sorted(tp.partition for tp in (m.assignment.topic_partitions or [])
                                                if tp.topic == topic)}
                          for m in desc.members]
        parts = self._partitions(topic) or []
        fut = self.admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in parts])],
            request_timeout=self.timeout_s)[group]
        committed = {tp.partition: tp.offset for tp in fut.result(timeout=self.timeout_s).topic_partitions}
        marks = self._watermarks(topic, parts)
        out["partitions"] = [{"partition": p, "committed": committed.get(p, -1), "high": marks[p][1],
                              "lag": marks[p][1] - max(committed.get(p, -1), marks[p][0])} for p in parts]
        out["lag"] = sum(p["lag"] for p in out["partitions"])
        return out

    def dead_letters(self, topic: str, last: int = DLQ_LAST, counted: int = DLQ_COUNTED) -> dict[str, Any]:
        """The dead-letter topic of ``topic``: ``messages`` (exact when every record was read, else the offsets
        span and ``exact`` False), reasons counted over the newest ``counted``
        (``by_reason``: kind -> count, ``by_stage``), and the newest ``last`` records, newest first, with
        their ``dlq.*`` headers, key and a preview of the value (never decoded beyond UTF-8, never replayed)."""
        from confluent_kafka import TopicPartition

        dlq = dlq_topic_name(topic)
        parts = self._partitions(dlq)
        if parts is None:
            return {"topic": dlq, "exists": False, "messages": 0, "by_reason": {}, "by_stage": {}, "last": []}
        marks = self._watermarks(dlq, parts)
        total = sum(hi - lo for lo, hi in marks.values())
        share = max(counted // max(len(parts), 1), last)
        starts = {p: max(lo, hi - share) for p, (lo, hi) in marks.items()}
        todo = {p for p, (lo, hi) in marks.items() if hi > starts[p]}
        records: list[Any] = []
        if todo:
            self.consumer.assign([TopicPartition(dlq, p, starts[p]) for p in sorted(todo)])
            deadline = time.monotonic() + self.timeout_s
            while todo and time.monotonic() < deadline:
                records += [m for m in self.consumer.consume(1000, timeout=0.2) if m.error() is None]
                # positions, not the last record: a commit marker takes the last offset and is never delivered
                for tp in self.consumer.position([TopicPartition(dlq, p) for p in todo]):
                    if tp.offset >= marks[tp.partition][1]:
                        todo.discard(tp.partition)
            self.consumer.unassign()
        by_reason: dict[str, int] = {}
        by_stage: dict[str, int] = {}
        rows = []
        for m in records:
            h = dlq_reason(m.headers())
            kind = _reason_class(h.get("dlq.error", "?"))
            by_reason[kind] = by_reason.get(kind, 0) + 1
            stage = h.get("dlq.stage", "?")
            by_stage[stage] = by_stage.get(stage, 0) + 1
            value = m.value() or b""
            rows.append({"partition": m.partition(), "offset": m.offset(), "timestamp_ms": m.timestamp()[1],
                         "key": None if m.key() is None else m.key().decode("utf-8", "replace")[:PREVIEW_BYTES],
                         "headers": h, "value_bytes": len(value),
                         "value_preview": value[:PREVIEW_BYTES].decode("utf-8", "replace")})
        rows.sort(key=lambda r: (r["timestamp_ms"], r["offset"]), reverse=True)
        # read_committed: commit markers and aborted dead letters take offsets but are not dead letters
        exact = all(starts[p] <= lo for p, (lo, _) in marks.items()) and not todo
        return {"topic": dlq, "exists": True, "messages": len(records) if exact else total, "exact": exact,
                "counted": len(records), "by_reason": by_reason, "by_stage": by_stage, "last": rows[:last]}
