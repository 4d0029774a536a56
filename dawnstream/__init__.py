"""dawnstream: streaming event processing over Kafka topics and Arrow record batches.

Data flow (see README): a Kafka topic -> a worker that decodes messages into one
``pyarrow.RecordBatch`` per micro-batch -> a chain of pure operators -> output topics, with
anything undecodable sent to ``<topic>.dlq``.
"""

__version__ = "0.1.0"
