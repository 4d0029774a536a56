"""Topology configs: one YAML file per job, validated with pydantic.

Shape::

    name: flights-late
    input:  {topic: sensors.flights.rows.v1, codec: json, partitions: 4, schema: {dep_delay: float64}}
    stages:
      - {op: filter, expr: "dep_delay > 60"}
      - {op: select, columns: [carrier, origin, dep_delay]}
    outputs:
      - {topic: sensors.flights.late.v1, codec: json, key_field: carrier}
    guarantee: at_least_once
    batch: {max_messages: 10000, max_wait_ms: 100}
    kafka: {bootstrap: "${KAFKA_BOOTSTRAP:-127.0.0.1:9092}", settings: {}}
    metrics: {host: 127.0.0.1, port: 9400}

Errors name the key path (``stages.1.columns``) and what was expected; ``${VAR}`` and
``${VAR:-default}`` in strings are replaced from the environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dawnstream.errors import ConfigError
from dawnstream.operators.base import Chain
from dawnstream.operators.registry import build_chain
from dawnstream.topics.codecs.arrow_ipc import MAX_DECODED_BYTES
from dawnstream.topics.codecs.frames import MAX_FRAME_PIXELS
from dawnstream.topics.schema import MAX_LEARNED_COLUMNS, parse_type
from dawnstream.topics.spec import MAX_PARTITIONS, TopicSpec, codec_field, topic_field

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
SECRET_WORDS = ("password", "secret", "token", "credential", "sasl.oauthbearer.config")
MAX_VALUES = 100_000
"""Most values a topology document may hold once YAML aliases are expanded (a real one has hundreds)."""


def is_secret(name: object, client_setting: bool = False) -> bool:
    """True for a setting whose value must never be shown: its name says password, secret, token or
    credential, or, for a Kafka client setting, key (``ssl.key.pem``, ``ssl.key.password``...)."""
    n = str(name).lower()
    return any(w in n for w in SECRET_WORDS) or (client_setting and "key" in n)


def mask_secrets(value: Any, client_settings: bool = False) -> Any:
    """Copy of a decoded document (or part of one) with every secret setting's value, and every
    string that names one, as ``***``; everything under a ``settings`` key counts as Kafka client
    settings."""
    if isinstance(value, dict):
        return {k: "***" if is_secret(k, client_settings)
                else mask_secrets(v, client_settings or str(k) == "settings") for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, client_settings) for v in value]
    if isinstance(value, str) and is_secret(value, client_settings):
        return "***"  # e.g. "sasl.password=hunter2" where a mapping was expected
    return value


def _check_size(data: Any) -> None:
    """Reject documents that YAML aliases expand past :data:`MAX_VALUES` values, or make cyclic.

    ``yaml.safe_load`` builds an alias as a shared reference, so a "billion laughs" file loads
    quickly; it is every later walk over it (substitution, validation) that would copy each alias.
    Sizes are memoised per shared object, so this check itself stays linear in the file.

    Raises:
        ConfigError: too many values, or an alias that contains itself.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(v: Any) -> int:
        if not isinstance(v, (dict, list)):
            return 1
        key = id(v)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError("", "a YAML alias (*name) refers to a mapping or list that contains it: "
                                  "the topology would be infinite")
        active.add(key)
        children = v.values() if isinstance(v, dict) else v
        total = 1
        for c in children:
            total += size(c)
            if total > MAX_VALUES:
                break
        active.discard(key)
        sizes[key] = total
        return total

    if size(data) > MAX_VALUES:
        raise ConfigError("", f"the topology expands to more than {MAX_VALUES:,} values through YAML aliases "
                              "(&anchor / *alias); a topology needs far fewer: write the values out or use "
                              "fewer aliases")


def _substitute(value: Any, path: str = "") -> Any:
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            raise ConfigError(path, f"environment variable {var} is not set and has no default (${{{var}:-...}})")

        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}.{i}") for i, v in enumerate(value)]
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """Input topic and how to read it. ``schema`` maps columns to types (``float64``, ``string``...);
    ``max_message_bytes`` (default 1 MiB, at most the broker's 16 MiB) bounds one JSON message;
    ``max_columns`` (default 256) bounds the undeclared columns learned from the rows (a row that would
    pass it is dead-lettered); ``max_decoded_bytes`` (default 64 MiB) bounds what one Arrow message may
    decode to (read from its metadata before decompressing); ``require_key`` dead-letters messages
    without a key; ``reply_topics`` (names or ``fnmatch`` patterns; default: the topology's output
    topics) are the only topics a request's ``reply-to`` may name (:mod:`dawnstream.topics.reply_topics`);
    ``max_frame_pixels`` (default 7680x4320) bounds what a frame's header may declare before it is decoded."""

    topic: str
    codec: str = "json"
    partitions: int = Field(default=1, ge=1, le=MAX_PARTITIONS)
    key_field: str | None = None
    row_schema: dict[str, str] = Field(default_factory=dict, alias="schema")
    group: str | None = None
    start: Literal["earliest", "latest"] = "earliest"
    max_message_bytes: int = Field(default=1 << 20, ge=1, le=16 << 20)
    max_columns: int = Field(default=MAX_LEARNED_COLUMNS, ge=0, le=100_000)
    max_decoded_bytes: int = Field(default=MAX_DECODED_BYTES, ge=1, le=1 << 34)
    reply_topics: list[str] | None = None
    max_frame_pixels: int = Field(default=MAX_FRAME_PIXELS, ge=1, le=1 << 31)
    require_key: bool = False
    config: dict[str, str] = Field(default_factory=dict)
    feedback_topic: str | None = None
    """Feedback for a ``predict`` stage on a topic of its own: the job then runs a second job that moves it
    onto this input topic, keyed like the requests (:mod:`dawnstream.operators.serving.forward_feedback`)."""
    upstream_topic: str | None = None
    """Set on the second half of a ``group_by`` job: the topic whose partitions feed this repartition
    topic (the runner tells windows which of them hold rows at all: an empty one holds no window open)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    _topic = field_validator("topic")(topic_field)
    _codec = field_validator("codec")(codec_field)

    @field_validator("feedback_topic")
    @classmethod
    def _feedback_topic(cls, v: str | None) -> str | None:
        return None if v is None else topic_field(v)

    @field_validator("reply_topics")
    @classmethod
    def _reply_topics(cls, v: list[str] | None) -> list[str] | None:
        from dawnstream.topics.reply_topics import pattern_error

        for i, entry in enumerate(v or []):
            why = pattern_error(entry)
            if why is not None:
                raise ValueError(f"{i}: {why}")
        return v

    @field_validator("row_schema")
    @classmethod
    def _schema(cls, v: dict[str, str]) -> dict[str, str]:
        for k, t in v.items():
            try:
                parse_type(t)
            except ConfigError as e:
                raise ValueError(f"{k}: {e.message}") from None
        return v

    def spec(self) -> TopicSpec:
        return TopicSpec(name=self.topic, partitions=self.partitions, key_field=self.key_field,
                         codec=self.codec, config=self.config)


class OutputSpec(_Strict):
    """One output topic; ``max_rows_per_message`` applies to the Arrow codec; ``where`` (a boolean
    expression, as ``filter`` takes) sends only the rows where it is true to this topic, e.g. a
    review queue next to the full stream."""

    topic: str
    codec: str = "json"
    partitions: int | None = Field(default=None, ge=1, le=MAX_PARTITIONS)
    key_field: str | None = None
    max_rows_per_message: int = Field(default=10_000, ge=1)
    config: dict[str, str] = Field(default_factory=dict)
    where: str | None = None
    partition_by: str | None = None
    """Arrow codec only: rows go to partition :func:`~dawnstream.operators.group_by.partition_of` of this
    column, one message per partition per batch (set on the repartition topic a ``group_by`` stage makes)."""

    _topic = field_validator("topic")(topic_field)
    _codec = field_validator("codec")(codec_field)

    def spec(self, default_partitions: int) -> TopicSpec:
        return TopicSpec(name=self.topic, partitions=self.partitions or default_partitions,
                         key_field=self.key_field, codec=self.codec, config=self.config)


class StageSpec(BaseModel):
    """One stage: ``op`` (operator kind), optional ``name``, the rest are the operator's parameters."""

    model_config = ConfigDict(extra="allow")

    op: str
    name: str | None = None

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class BatchSpec(_Strict):
    """Micro-batch bounds: at most ``max_messages`` per consume call, waiting at most ``max_wait_ms`` for
    them (0: never wait for a batch to fill; take the first message and what is queued behind it - for
    request/reply, where a wait is latency added to every request)."""

    max_messages: int = Field(default=10_000, ge=1, le=1_000_000)
    max_wait_ms: int = Field(default=100, ge=0, le=60_000)


class KafkaSpec(_Strict):
    """Where the cluster is; ``settings`` pass to every librdkafka client (TLS, SASL...)."""

    bootstrap: str = "127.0.0.1:9092"
    settings: dict[str, str] = Field(default_factory=dict)

    @field_validator("settings", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): str(val).lower() if isinstance(val, bool) else str(val) for k, val in v.items()}
        return v


class MetricsSpec(_Strict):
    """Prometheus ``/metrics`` and ``/healthz``; worker *i* listens on ``port + i`` (0 = off)."""

    host: str = "127.0.0.1"
    port: int = Field(default=9400, ge=0, le=65535)


class Topology(_Strict):
    """A whole job: input, stages, outputs, delivery guarantee and runtime settings.

    ``guarantee: exactly_once`` (default) wraps every micro-batch in a Kafka transaction;
    ``checkpoint_ms`` is how often each partition's operator state goes to the changelog (0 = every
    batch); recovery replays the input since the last checkpoint.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    input: InputSpec
    stages: list[StageSpec] = Field(default_factory=list)
    outputs: list[OutputSpec] = Field(min_length=1)
    guarantee: Literal["at_least_once", "exactly_once"] = "exactly_once"
    checkpoint_ms: int = Field(default=5000, ge=0, le=3_600_000)
    batch: BatchSpec = Field(default_factory=BatchSpec)
    kafka: KafkaSpec = Field(default_factory=KafkaSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    accel: Literal["off", "cpu", "gpu", "auto"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _one_output(cls, data: Any) -> Any:
        if isinstance(data, dict) and "output" in data:
            if "outputs" in data:
                raise ValueError("give either 'output' or 'outputs', not both")
            data = dict(data)
            data["outputs"] = [data.pop("output")]
        return data

    @property
    def group_id(self) -> str:
        """Consumer group: ``input.group`` or ``dawnstream.<name>``."""
        return self.input.group or f"dawnstream.{self.name}"

    def user_topics(self) -> list[TopicSpec]:
        """The topics this job reads and writes: input, its dead-letter topic, every output."""
        in_spec = self.input.spec()
        return [in_spec, in_spec.dlq(), *(o.spec(self.input.partitions) for o in self.outputs)]

    def repartition_topic(self, key: str) -> str:
        """The internal topic a ``group_by`` on ``key`` writes to: ``state.<job>.by-<key>.v1``."""
        fold = lambda text: re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "x"  # noqa: E731
        return f"state.{fold(self.name)}.by-{fold(key)}.v1"

    def split(self) -> list[Topology]:
        """The jobs this topology runs as in Kafka: itself, or, with a ``group_by`` stage, two - the stages
        before it writing to the repartition topic (partitioned by the key), then the stages after it
        reading that topic (:mod:`dawnstream.operators.group_by`).

        Raises:
            ConfigError: more than one ``group_by`` stage.
        """
        if self.input.feedback_topic is not None:
            return [self._feedback_job(), *self.model_copy(update={
                "input": self.input.model_copy(update={"feedback_topic": None})}).split()]
        at = [i for i, st in enumerate(self.stages) if st.op == "group_by"]
        if not at:
            return [self]
        if len(at) > 1:
            raise ConfigError(f"stages.{at[1]}", "one group_by per topology: split the job in two topologies")
        i = at[0]
        key = str(self.stages[i].params()["key"])
        topic = self.repartition_topic(key)
        n = self.input.partitions
        rekey = self.model_copy(deep=True, update={
            "name": f"{self.name}.by-{key}", "stages": self.stages[:i],
            "outputs": [OutputSpec(topic=topic, codec="arrow", partitions=n, partition_by=key,
                                   config={"max.message.bytes": str(16 << 20)})],
            "metrics": self.metrics.model_copy(update={"port": self.metrics.port + 100 if self.metrics.port else 0}),
        })
        later = [st.model_copy(update={"upstream_partitions": n}) if st.op == "window_count" and
                 "upstream_partitions" not in st.params() else st for st in self.stages[i + 1:]]
        after = self.model_copy(deep=True, update={
            "input": self.input.model_copy(update={"topic": topic, "codec": "arrow", "key_field": None,
                                                   "upstream_topic": self.input.topic,
                                                   "group": None, "start": "earliest", "require_key": False,
                                                   "row_schema": {}, "config": {"max.message.bytes": str(16 << 20)}}),
            "stages": later,
        })
        return [rekey, after]

    def _feedback_job(self) -> Topology:
        """The job moving ``input.feedback_topic`` onto the input topic, keyed like the requests (Java's
        partitioner, as :class:`~dawnstream.streams.request_reply.PredictClient` sends them), so each piece
        of feedback reaches the partition that served its request.

        Raises:
            ConfigError: no ``predict`` stage to learn from the feedback, or the feedback topic is the input.
        """
        at = [i for i, st in enumerate(self.stages) if st.op == "predict"]
        if not at:
            raise ConfigError("input.feedback_topic", "a feedback topic feeds a predict stage; this topology has none")
        if self.input.feedback_topic in (self.input.topic, *(o.topic for o in self.outputs)):
            raise ConfigError("input.feedback_topic", "expected a topic of its own, not the input or an output")
        label = str(self.stages[at[0]].params().get("label_field", "label"))
        key, n = self.input.key_field, self.input.partitions
        stage = StageSpec.model_validate({"op": "forward_feedback", "label_field": label, "key_field": key,
                                          "need_key": n > 1 and key is not None})
        settings = {"partitioner": "murmur2_random", **self.kafka.settings}
        return self.model_copy(deep=True, update={
            "name": f"{self.name}.feedback",
            "input": self.input.model_copy(update={
                "topic": self.input.feedback_topic, "feedback_topic": None, "codec": "requests", "group": None,
                "row_schema": {}, "require_key": False,
                "reply_topics": self.input.reply_topics or [o.topic for o in self.outputs]}),
            "stages": [stage],
            "outputs": [OutputSpec(topic=self.input.topic, codec="requests", partitions=n, key_field=key,
                                   config=dict(self.input.config))],  # this job may create it first
            # Feedback waits minutes or days anyway: batches of up to 250 ms cost the broker one produce and
            # one offset commit per batch, not per message as a request topic's max_wait_ms: 0 would (at 200
            # requests/s with their feedback, the requests' p99 was 14 ms batched, 12 ms not: no cost to them).
            "batch": BatchSpec(max_messages=10_000, max_wait_ms=250),
            "kafka": self.kafka.model_copy(update={"settings": settings}),
            "metrics": self.metrics.model_copy(update={"port": self.metrics.port + 200 if self.metrics.port else 0}),
        })

    def stage_tuples(self) -> list[tuple[str, dict[str, Any], str | None]]:
        return [(s.op, s.params(), s.name) for s in self.stages]

    def build_chain(self) -> Chain:
        """A fresh operator chain (one per partition at run time)."""
        return build_chain(self.stage_tuples(), accel=self.accel)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after[_topic(), str]",))


def _resolve_lf_files(data: dict[str, Any], base: Path) -> None:
    """Make the label stages' ``lfs`` file entries absolute, relative to ``base`` (the topology's folder), so a
    user's LF file next to the YAML loads from any working directory and in every worker."""
    for stage in data.get("stages") or []:
        if isinstance(stage, dict) and stage.get("op") == "label" and isinstance(stage.get("lfs"), list):
            from dawnstream.operators.labeling.label import is_lf_file  # only topologies that label pay the import

            stage["lfs"] = [str((base / e).resolve()) if is_lf_file(e) and not Path(e).is_absolute() else e
                            for e in stage["lfs"]]


def parse_topology(data: Any, source: str = "topology", base_dir: str | Path | None = None) -> Topology:
    """Validate a decoded YAML/JSON document and build its chain once to check stage parameters.
    ``base_dir``: the folder file paths in the document are relative to (default: the working directory).

    Raises:
        ConfigError: the first problem, with the key path and what was expected.
    """
    if not isinstance(data, dict):
        raise ConfigError("", f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    _check_size(data)
    data = _substitute(data)
    _resolve_lf_files(data, Path(base_dir) if base_dir is not None else Path.cwd())
    try:
        topo = Topology.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        path = _loc(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the README's topology reference)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        more = f" (and {len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        loc = [str(p) for p in err["loc"]]
        in_settings = "settings" in loc
        shown = ("***" if any(is_secret(p, in_settings and i > loc.index("settings")) for i, p in enumerate(loc))
                 else mask_secrets(err.get("input"), in_settings))
        raise ConfigError(path, f"{msg}; got {shown!r:.80}{more}" if err["type"] != "missing"
                          else msg + more) from None
    topo.build_chain()  # fail fast on bad stage parameters
    from dawnstream.operators.filter import Filter

    for i, o in enumerate(topo.outputs):
        if o.where is not None:
            Filter(expr=o.where, _path=f"outputs.{i}.where")  # fail fast on a bad expression
    names = [o.topic for o in topo.outputs]
    if topo.input.topic in names:
        raise ConfigError("outputs", f"output topic {topo.input.topic!r} is the input topic: that loops forever")
    return topo


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology YAML file.

    Raises:
        ConfigError: file missing, YAML syntax error (with line), or an invalid setting.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError("", f"cannot read topology {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"{p}: YAML syntax error{where}: {getattr(e, 'problem', e)}") from None
    return parse_topology(data, str(p), p.parent)


def redact(settings: dict[str, str]) -> dict[str, str]:
    """Copy of Kafka client settings with secret values (:func:`is_secret`) replaced by ``***`` (for logs)."""
    return {k: ("***" if is_secret(k, client_setting=True) else v) for k, v in settings.items()}
