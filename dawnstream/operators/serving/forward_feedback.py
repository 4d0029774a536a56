"""``forward_feedback``: move feedback from its own topic onto the serving topic, next to its request.

Delayed feedback often comes from somewhere else than the requests (a label service, a nightly
job, a human). A topology that names ``input.feedback_topic`` runs as two jobs
(:meth:`~dawnstream.streams.config.Topology.split`): this stage reads the feedback topic and writes each
row to the serving topic, keyed like the requests (the key column's text, Java's partitioner), so it
reaches the partition - and the worker - that served its request and holds the served prediction
(:mod:`.served`). This is Kafka Streams' co-partitioning made explicit: the serving worker reads one
topic, so the order "request, then its feedback" of a key holds in one partition.

Rows that are not feedback (no label), that lack the key a multi-partition serving topic needs, or
whose body could not be read go to the dead-letter topic with the reason; forwarded rows lose their
``reply-to`` (feedback on its own topic is not acknowledged: refusals are dead-lettered instead).

>>> import pyarrow as pa
>>> op = ForwardFeedback(label_field="label", key_field="merchant", need_key=True)
>>> b = pa.RecordBatch.from_pylist([
...     {"correlation_id": "c1", "reply_to": "acks", "merchant": "m1", "label": "fraud"},
...     {"correlation_id": "c2", "reply_to": None, "merchant": None, "label": "ok"},
...     {"correlation_id": "c3", "reply_to": None, "merchant": "m2", "label": None}])
>>> {j: why[:40] for j, why in op.bad_rows(b).items()}
{1: 'feedback without merchant: the serving t', 2: "not feedback: no 'label' (requests go to"}
>>> op.process(b.slice(0, 1))[0].schema.names
['correlation_id', 'merchant', 'label']
"""

from __future__ import annotations

import pyarrow as pa

from dawnstream.operators.base import Operator
from dawnstream.topics.codecs.requests import REQUEST_ERROR, TIMESTAMP


class ForwardFeedback(Operator):
    """Pass feedback rows on, less ``reply_to`` and the Kafka timestamp column (see the module docstring).

    Args:
        label_field: the column a feedback row carries its label in.
        key_field: the column requests are keyed by (None: unkeyed).
        need_key: refuse rows without ``key_field`` (a serving topic with more than one partition).
    """

    kind = "forward_feedback"

    def __init__(self, label_field: str = "label", key_field: str | None = None, need_key: bool = False,
                 name: str | None = None, _path: str = "stages") -> None:
        super().__init__(name)
        self.label_field, self.key_field, self.need_key = label_field, key_field, bool(need_key)

    def bad_rows(self, batch: pa.RecordBatch) -> dict[int, str]:
        names = batch.schema.names
        n = batch.num_rows
        labels = batch.column(self.label_field).to_pylist() if self.label_field in names else [None] * n
        errors = batch.column(REQUEST_ERROR).to_pylist() if REQUEST_ERROR in names else [None] * n
        keys = batch.column(self.key_field).to_pylist() if self.key_field in names else [None] * n
        bad: dict[int, str] = {}
        for j in range(n):
            if errors[j] is not None:
                bad[j] = str(errors[j])
            elif labels[j] is None:
                bad[j] = (f"not feedback: no {self.label_field!r} (requests go to the serving topic, not the "
                          "feedback topic)")
            elif self.need_key and keys[j] is None:
                bad[j] = (f"feedback without {self.key_field}: the serving topic has several partitions, and the "
                          "key finds the one that served the request")
        return bad

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        if batch.num_rows == 0:
            return []
        drop = [c for c in ("reply_to", TIMESTAMP, REQUEST_ERROR) if c in batch.schema.names]
        return [batch.drop_columns(drop) if drop else batch]
