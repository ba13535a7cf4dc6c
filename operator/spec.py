"""The endpoint spec: the PUT body of Elasticsearch's ``elasticsearch`` inference service.

These pydantic models are the single source of validation: the REST gateway parses PUT bodies
with them, the operator parses ``InferenceEndpoint.spec`` with them, and the CRD schema is
generated from them (``infernetes crd``). :func:`parse_endpoint` turns a raw body into a
:class:`EndpointSpec` with defaults resolved the way Elasticsearch resolves them, or raises
:class:`~infernetes.operator.errors.ValidationFailed` listing every broken rule by field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ..worker.chunking import SEPARATOR_GROUPS, separator_errors
from .default_endpoints import DEFAULTS
from .errors import BadRequest, ValidationFailed
from .kube.placement import Placement

TaskType = Literal["text_embedding", "sparse_embedding", "rerank"]
TASK_TYPES: tuple[str, ...] = ("text_embedding", "sparse_embedding", "rerank")
InputType = Literal["SEARCH", "INGEST", "CLASSIFICATION", "CLUSTERING"]
INPUT_TYPES: tuple[str, ...] = ("SEARCH", "INGEST", "CLASSIFICATION", "CLUSTERING")
SERVICE = "elasticsearch"
MAX_THREADS = 32

# Elasticsearch's rule for inference ids; it also keeps ids safe as file names and URL segments.
INFERENCE_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_\-]*[a-z0-9])?$")
# Trained model and deployment ids: Elasticsearch's rule, plus the leading dot of built-in models
# and the upper case that Eland-era ids such as "msmarco-MiniLM-L12-cos-v5" carry.
MODEL_ID_RE = re.compile(r"^\.?[A-Za-z0-9](?:[A-Za-z0-9_.\-]*[A-Za-z0-9])?$")
MAX_ID_LENGTH = 64


def rule(expression: str, message: str, *, transition: bool = False) -> dict[str, Any]:
    """A CEL validation rule for the CRD schema, kept beside the pydantic validator it mirrors.
    ``transition`` rules compare with ``oldSelf`` and only apply to updates."""
    return {"rule": expression, "message": message, "transition": transition}


class _Settings(BaseModel):
    # strict: "2" is not a number and 1.0 is not an integer, as in Elasticsearch.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    # CEL rules of the matching object in the CRD schema (see infernetes.operator.kube.crd).
    __cel__: ClassVar[list[dict[str, Any]]] = []


class AdaptiveAllocations(_Settings):
    """Scale the number of allocations with the load, between the minimum and maximum."""

    __cel__ = [
        rule("!has(self.min_number_of_allocations) || !has(self.max_number_of_allocations) || "
             "self.max_number_of_allocations >= self.min_number_of_allocations",
             "[max_number_of_allocations] must be greater than or equal to [min_number_of_allocations]"),
    ]

    enabled: bool | None = Field(None, description="Turn on adaptive allocations.")
    min_number_of_allocations: int | None = Field(
        None,
        ge=0,
        description="The minimum number of allocations to scale to. If not defined, the deployment scales to 0.",
    )
    max_number_of_allocations: int | None = Field(
        None,
        ge=1,
        description=(
            "The maximum number of allocations to scale to. If set, it must be greater than or equal to "
            "min_number_of_allocations. If not defined, a safe cap applies (see the autoscaler settings)."
        ),
    )

    @model_validator(mode="after")
    def _max_ge_min(self) -> AdaptiveAllocations:
        lo, hi = self.min_number_of_allocations, self.max_number_of_allocations
        if lo is not None and hi is not None and hi < lo:
            raise PydanticCustomError(
                "es",
                "[max_number_of_allocations] must be greater than or equal to [min_number_of_allocations]",
            )
        return self


class ServiceSettings(_Settings):
    """Settings of the ``elasticsearch`` service: which model, and how many allocations and threads."""

    __cel__ = [
        rule("!has(self.num_threads) || self.num_threads in [1, 2, 4, 8, 16, 32]",
             f"[num_threads] must be a power of 2 less than or equal to {MAX_THREADS}"),
        rule("has(self.deployment_id) || has(self.model_id)",
             "[service_settings] does not contain the required setting [model_id]"),
        rule("has(self.deployment_id) || has(self.num_threads)",
             "[service_settings] does not contain the required setting [num_threads]"),
        rule("has(self.deployment_id) || has(self.num_allocations) || has(self.adaptive_allocations)",
             "[service_settings] does not contain one of the required settings [num_allocations, adaptive_allocations]"),
        rule("!has(self.adaptive_allocations) || !has(self.adaptive_allocations.enabled) || "
             "!self.adaptive_allocations.enabled || !has(self.num_allocations)",
             "[num_allocations] cannot be set when [adaptive_allocations] is enabled"),
        rule("!has(self.adaptive_allocations) || (has(self.adaptive_allocations.enabled) && "
             "self.adaptive_allocations.enabled) || has(self.num_allocations) || has(self.deployment_id)",
             "[num_allocations] is required when [adaptive_allocations] is not enabled"),
        rule("!has(oldSelf.num_threads) || (has(self.num_threads) && self.num_threads == oldSelf.num_threads)",
             "[num_threads] cannot be updated", transition=True),
    ]

    model_id: str | None = Field(
        None,
        max_length=MAX_ID_LENGTH,
        json_schema_extra={"pattern": MODEL_ID_RE.pattern},
        description=(
            "The name of the model to use for the inference task: a built-in model id (.multilingual-e5-small, "
            ".elser_model_2, .rerank-v1) or the id of a model imported with `infernetes models import`."
        ),
    )
    deployment_id: str | None = Field(
        None,
        max_length=MAX_ID_LENGTH,
        json_schema_extra={"pattern": MODEL_ID_RE.pattern},
        description=(
            "The deployment identifier for a trained model deployment. When deployment_id names an existing "
            "deployment, model_id, num_allocations and num_threads are taken from it."
        ),
    )
    num_allocations: int | None = Field(
        None,
        ge=1,
        description=(
            "The total number of allocations (worker processes or pods) of the model. Do not set it when "
            "adaptive allocations are enabled."
        ),
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        le=MAX_THREADS,
        description=(
            "The number of threads used by each allocation: the CPU request and limit of each worker and its "
            "torch thread count. A power of 2, at most 32."
        ),
    )
    adaptive_allocations: AdaptiveAllocations | None = None

    @model_validator(mode="after")
    def _rules(self) -> ServiceSettings:
        errors: list[str] = []
        for name in ("model_id", "deployment_id"):
            value = getattr(self, name)
            if value is not None and not MODEL_ID_RE.match(value):
                errors.append(
                    f"Invalid [{name}] [{value}]: must contain only alphanumerics, '-', '_' or '.', "
                    "and start and end with an alphanumeric (a built-in id may start with '.')"
                )
        if self.num_threads is not None and self.num_threads & (self.num_threads - 1):
            errors.append(f"[num_threads] must be a power of 2 less than or equal to {MAX_THREADS}")
        if self.deployment_id is None:
            # Without an existing deployment to reuse, the settings must define one.
            if self.model_id is None:
                errors.append("[service_settings] does not contain the required setting [model_id]")
            if self.num_threads is None:
                errors.append("[service_settings] does not contain the required setting [num_threads]")
            if self.num_allocations is None and self.adaptive_allocations is None:
                errors.append(
                    "[service_settings] does not contain one of the required settings "
                    "[num_allocations, adaptive_allocations]"
                )
        adaptive = self.adaptive_allocations
        if adaptive is not None and adaptive.enabled and self.num_allocations is not None:
            errors.append("[num_allocations] cannot be set when [adaptive_allocations] is enabled")
        if (
            adaptive is not None
            and not adaptive.enabled
            and self.num_allocations is None
            and self.deployment_id is None
        ):
            errors.append("[num_allocations] is required when [adaptive_allocations] is not enabled")
        if errors:
            raise PydanticCustomError("es", "; ".join(errors))
        return self

    @property
    def adaptive(self) -> bool:
        return bool(self.adaptive_allocations and self.adaptive_allocations.enabled)


class TaskSettings(_Settings):
    """Task settings. ``return_documents`` and ``top_n`` apply to rerank, ``input_type`` to embeddings."""

    return_documents: bool | None = Field(
        None, description="For a rerank task, return the document text with its index and score (default true)."
    )
    top_n: int | None = Field(None, ge=1, description="For a rerank task, return only the N best documents.")
    input_type: InputType | None = Field(
        None,
        description=(
            "For embedding tasks: the default input type (SEARCH, INGEST, CLASSIFICATION, CLUSTERING) that picks "
            "the model's prompt, e.g. E5's 'query: ' or 'passage: '. The request's root input_type overrides it."
        ),
    )


ChunkingStrategy = Literal["sentence", "word", "none", "recursive"]


class ChunkingSettings(_Settings):
    """How long inputs are split into chunks for chunked inference (semantic_text)."""

    __cel__ = [
        rule("self.strategy != 'none' || (!has(self.max_chunk_size) && !has(self.overlap) && "
             "!has(self.sentence_overlap))",
             "[max_chunk_size], [overlap] and [sentence_overlap] are not applicable to the [none] chunking strategy"),
        rule("self.strategy == 'none' || has(self.max_chunk_size)",
             "[chunking_settings] does not contain the required setting [max_chunk_size]"),
        rule("self.strategy != 'sentence' || !has(self.max_chunk_size) || "
             "(self.max_chunk_size >= 20 && self.max_chunk_size <= 300)",
             "[max_chunk_size] must be between 20 and 300 for the [sentence] chunking strategy"),
        rule("self.strategy != 'word' || !has(self.max_chunk_size) || "
             "(self.max_chunk_size >= 10 && self.max_chunk_size <= 300)",
             "[max_chunk_size] must be between 10 and 300 for the [word] chunking strategy"),
        rule("self.strategy == 'word' || !has(self.overlap)",
             "[overlap] is only applicable to the [word] chunking strategy"),
        rule("self.strategy != 'word' || has(self.overlap)",
             "[chunking_settings] does not contain the required setting [overlap]"),
        rule("self.strategy != 'word' || !has(self.overlap) || !has(self.max_chunk_size) || "
             "self.overlap <= self.max_chunk_size / 2",
             "[overlap] must be less than or equal to half of [max_chunk_size]"),
        rule("self.strategy == 'sentence' || self.strategy == 'none' || !has(self.sentence_overlap)",
             "[sentence_overlap] is only applicable to the [sentence] chunking strategy"),
        rule("!has(self.sentence_overlap) || self.sentence_overlap in [0, 1]",
             "[sentence_overlap] must be 0 or 1"),
        rule("self.strategy != 'recursive' || !has(self.max_chunk_size) || "
             "(self.max_chunk_size >= 10 && self.max_chunk_size <= 300)",
             "[max_chunk_size] must be between 10 and 300 for the [recursive] chunking strategy"),
        rule("self.strategy == 'recursive' || (!has(self.separators) && !has(self.separator_group))",
             "[separators] and [separator_group] are only applicable to the [recursive] chunking strategy"),
        rule("!has(self.separators) || !has(self.separator_group)",
             "only one of [separators] and [separator_group] may be given"),
    ]

    strategy: ChunkingStrategy = Field(
        description="The chunking strategy: sentence, word, recursive, or none (one chunk per input)."
    )
    max_chunk_size: int | None = Field(
        None,
        description=(
            "The maximum size of a chunk in words. This value cannot be higher than 300 or lower than 20 "
            "(for sentence strategy) or 10 (for word strategy)."
        ),
    )
    overlap: int | None = Field(
        None,
        ge=0,
        description=(
            "The number of overlapping words for chunks. It is applicable only to a word chunking strategy. "
            "This value cannot be higher than half the max_chunk_size value."
        ),
    )
    sentence_overlap: int | None = Field(
        None,
        description=(
            "The number of overlapping sentences for chunks. It is applicable only for a sentence chunking "
            "strategy. It can be either 1 or 0."
        ),
    )
    separators: list[str] | None = Field(
        None, min_length=1,
        description="recursive strategy: regular expressions to split at, tried in order (or separator_group).",
    )
    separator_group: Literal["plaintext", "markdown"] | None = Field(
        None, description="recursive strategy: a predefined list of separators (default plaintext)."
    )

    @model_validator(mode="after")
    def _rules(self) -> ChunkingSettings:
        errors: list[str] = []
        size, strategy = self.max_chunk_size, self.strategy
        if strategy != "recursive":
            for name in ("separators", "separator_group"):
                if getattr(self, name) is not None:
                    errors.append(f"[{name}] is only applicable to the [recursive] chunking strategy")
        else:
            if self.separators is not None and self.separator_group is not None:
                errors.append("only one of [separators] and [separator_group] may be given")
            for name in ("overlap", "sentence_overlap"):
                if getattr(self, name) is not None:
                    errors.append(f"[{name}] is not applicable to the [recursive] chunking strategy")
            for sep in self.separators or []:  # regular expressions: catastrophic shapes refused here too
                errors += separator_errors(sep)
        if strategy == "none":
            for name in ("max_chunk_size", "overlap", "sentence_overlap"):
                if getattr(self, name) is not None:
                    errors.append(f"[{name}] is not applicable to the [none] chunking strategy")
        else:
            low = 20 if strategy == "sentence" else 10  # word and recursive: 10
            if size is None:
                errors.append("[chunking_settings] does not contain the required setting [max_chunk_size]")
            elif not low <= size <= 300:
                errors.append(
                    f"[max_chunk_size] must be between {low} and 300 for the [{strategy}] chunking strategy, "
                    f"got [{size}]"
                )
        if strategy == "word":
            if self.sentence_overlap is not None:
                errors.append("[sentence_overlap] is only applicable to the [sentence] chunking strategy")
            if self.overlap is None:
                errors.append("[chunking_settings] does not contain the required setting [overlap]")
            elif size is not None and self.overlap > size // 2:
                errors.append(f"[overlap] must be less than or equal to half of [max_chunk_size] ({size // 2})")
        if strategy == "sentence":
            if self.overlap is not None:
                errors.append("[overlap] is only applicable to the [word] chunking strategy")
            if self.sentence_overlap is not None and self.sentence_overlap not in (0, 1):
                errors.append(f"[sentence_overlap] must be 0 or 1, got [{self.sentence_overlap}]")
        if errors:
            raise PydanticCustomError("es", "; ".join(errors))
        return self

    def resolved(self) -> dict[str, Any]:
        """The settings as Elasticsearch echoes them, defaults filled in."""
        if self.strategy == "none":
            return {"strategy": "none"}
        if self.strategy == "word":
            return {"strategy": "word", "max_chunk_size": self.max_chunk_size, "overlap": self.overlap}
        if self.strategy == "recursive":
            separators = self.separators or SEPARATOR_GROUPS[self.separator_group or "plaintext"]
            return {"strategy": "recursive", "max_chunk_size": self.max_chunk_size, "separators": list(separators)}
        overlap = 1 if self.sentence_overlap is None else self.sentence_overlap
        return {"strategy": "sentence", "max_chunk_size": self.max_chunk_size, "sentence_overlap": overlap}


DEFAULT_CHUNKING = ChunkingSettings(strategy="sentence", max_chunk_size=250, sentence_overlap=1)


class EndpointBody(_Settings):
    """The body of ``PUT /_inference/{task_type}/{inference_id}`` for the ``elasticsearch`` service."""

    service: Literal["elasticsearch"] = Field(description="The service type. Value is elasticsearch.")
    service_settings: ServiceSettings
    task_settings: TaskSettings | None = None
    chunking_settings: ChunkingSettings | None = None


class EndpointResourceSpec(EndpointBody):
    """``spec`` of an InferenceEndpoint custom resource: the PUT body, plus what the URL carries in REST."""

    __cel__ = [
        rule("self.task_type == 'rerank' || !has(self.task_settings) || "
             "(!has(self.task_settings.return_documents) && !has(self.task_settings.top_n))",
             "[task_settings.return_documents] and [task_settings.top_n] are only applicable to the [rerank] task"),
        rule("self.task_type != 'rerank' || !has(self.task_settings) || !has(self.task_settings.input_type)",
             "[task_settings.input_type] is not applicable to the [rerank] task"),
        rule("self.task_type == oldSelf.task_type", "[task_type] cannot be updated", transition=True),
        rule("has(self.inference_id) == has(oldSelf.inference_id) && "
             "(!has(self.inference_id) || self.inference_id == oldSelf.inference_id)",
             "[inference_id] cannot be updated", transition=True),
    ]

    task_type: TaskType = Field(description="The inference task: text_embedding, sparse_embedding or rerank.")
    inference_id: str | None = Field(
        None,
        max_length=MAX_ID_LENGTH,
        json_schema_extra={"pattern": INFERENCE_ID_RE.pattern},
        description=(
            "The Elasticsearch inference id, when it is not a valid Kubernetes name (e.g. it has underscores). "
            "Defaults to metadata.name."
        ),
    )

    placement: Placement | None = Field(None, description="Kubernetes-only placement of the worker pods.")

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"task_type", "inference_id", "placement"})


class DeploymentResourceSpec(_Settings):
    """``spec`` of a ModelDeployment custom resource: a model deployment that endpoints can share, as
    ``POST _ml/trained_models/{model_id}/deployment/_start`` creates in Elasticsearch."""

    __cel__ = [
        rule("self.threads_per_allocation in [1, 2, 4, 8, 16, 32]",
             f"[threads_per_allocation] must be a power of 2 less than or equal to {MAX_THREADS}"),
        rule("!has(self.adaptive_allocations) || !has(self.adaptive_allocations.enabled) || "
             "!self.adaptive_allocations.enabled || !has(self.number_of_allocations)",
             "[number_of_allocations] cannot be set when [adaptive_allocations] is enabled"),
        rule("self.threads_per_allocation == oldSelf.threads_per_allocation",
             "[threads_per_allocation] cannot be updated", transition=True),
        rule("self.model_id == oldSelf.model_id", "[model_id] cannot be updated", transition=True),
    ]

    model_id: str = Field(max_length=MAX_ID_LENGTH, json_schema_extra={"pattern": MODEL_ID_RE.pattern},
                          description="The model to deploy.")
    deployment_id: str | None = Field(
        None, max_length=MAX_ID_LENGTH, json_schema_extra={"pattern": MODEL_ID_RE.pattern},
        description="The deployment id endpoints refer to (service_settings.deployment_id). Defaults to model_id.",
    )
    number_of_allocations: int | None = Field(None, ge=1, description="Allocations (pods); default 1.")
    threads_per_allocation: int = Field(1, ge=1, le=MAX_THREADS,
                                        description="Threads (CPUs) per allocation: a power of 2, at most 32.")
    adaptive_allocations: AdaptiveAllocations | None = None
    queue_capacity: int | None = Field(None, ge=1, le=1_000_000,
                                       description="Inputs waiting per allocation before requests get 429.")
    priority: Literal["normal", "low"] = Field("normal", description="normal or low.")
    placement: Placement | None = Field(None, description="Kubernetes-only placement of the worker pods.")

    @model_validator(mode="after")
    def _rules(self) -> DeploymentResourceSpec:
        errors = []
        if self.threads_per_allocation & (self.threads_per_allocation - 1):
            errors.append(f"[threads_per_allocation] must be a power of 2 less than or equal to {MAX_THREADS}")
        adaptive = self.adaptive_allocations
        if adaptive is not None and adaptive.enabled and self.number_of_allocations is not None:
            errors.append("[number_of_allocations] cannot be set when [adaptive_allocations] is enabled")
        if errors:
            raise PydanticCustomError("es", "; ".join(errors))
        return self


@dataclass(frozen=True)
class EndpointSpec:
    """A validated endpoint with Elasticsearch's defaults resolved."""

    inference_id: str
    task_type: str
    body: EndpointBody

    @property
    def settings(self) -> ServiceSettings:
        return self.body.service_settings

    @property
    def deployment_id(self) -> str:
        """Elasticsearch names an endpoint's own deployment after the endpoint."""
        return self.settings.deployment_id or self.inference_id

    @property
    def reuses_deployment(self) -> bool:
        """Only a deployment id and no model: attach to a deployment that already runs."""
        return self.settings.deployment_id is not None and self.settings.model_id is None

    @property
    def chunking(self) -> ChunkingSettings:
        return self.body.chunking_settings or DEFAULT_CHUNKING

    def task_settings(self) -> dict[str, Any]:
        ts = self.body.task_settings or TaskSettings()
        out = ts.model_dump(exclude_none=True)
        if self.task_type == "rerank":
            out.setdefault("return_documents", True)
        return out


# -- parsing ------------------------------------------------------------------------------------


def validate_inference_id(inference_id: str) -> None:
    if inference_id in DEFAULTS:  # Elasticsearch's default endpoints: reserved ids, created by the service only
        return
    if len(inference_id) > MAX_ID_LENGTH or not INFERENCE_ID_RE.match(inference_id):
        raise ValidationFailed(
            [
                f"Invalid [inference_id] [{inference_id}]: must contain only lowercase alphanumeric (a-z and 0-9), "
                f"hyphens or underscores; must start and end with alphanumeric; at most {MAX_ID_LENGTH} characters"
            ]
        )


def validate_model_id(model_id: str, field: str = "model_id") -> None:
    if len(model_id) > MAX_ID_LENGTH or not MODEL_ID_RE.match(model_id):
        raise ValidationFailed(
            [
                f"Invalid [{field}] [{model_id}]: must contain only alphanumerics, '-', '_' or '.', and start and "
                f"end with an alphanumeric (a built-in id may start with '.'); at most {MAX_ID_LENGTH} characters"
            ]
        )


def validate_task_type(task_type: str) -> str:
    if task_type not in TASK_TYPES:
        raise BadRequest(
            f"Unknown task_type [{task_type}] for the [elasticsearch] service; "
            f"expected one of [{', '.join(TASK_TYPES)}]"
        )
    return task_type


_TYPE_NAMES = {"int": "Integer", "bool": "Boolean", "string": "String", "dict": "Map", "model": "Map"}


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _describe(err: dict[str, Any]) -> str:
    """One pydantic error as an Elasticsearch-style sentence that names the field."""
    loc = tuple(err["loc"])
    kind = err["type"]
    name = loc[-1] if loc else "body"
    parent = _field(loc[:-1]) or "body"
    if kind == "es":
        return str(err["msg"])
    if kind == "missing":
        return f"[{parent}] does not contain the required setting [{name}]"
    if kind == "extra_forbidden":
        value = err.get("input")
        return f"Model configuration contains settings [{{{_field(loc)}={value}}}] unknown to the [{SERVICE}] service"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"[{_field(loc)}] has an invalid value [{err.get('input')}]; expected {expected}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        ctx = err.get("ctx", {})
        if kind == "greater_than_equal" and ctx.get("ge") == 1:
            return f"[{name}] must be a positive integer, got [{err.get('input')}]"
        if kind == "greater_than_equal" and ctx.get("ge") == 0:
            return f"[{name}] must be a non-negative integer, got [{err.get('input')}]"
        if name == "num_threads":
            return f"[num_threads] must be a power of 2 less than or equal to {MAX_THREADS}"
        bound = next(iter(ctx.values()), "")
        return f"[{name}] must be {kind.replace('_', ' ')} {bound}, got [{err.get('input')}]"
    if kind == "string_too_long":
        return f"[{name}] must be at most {err.get('ctx', {}).get('max_length')} characters"
    base = kind.split("_")[0]
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "model_attributes_type":
        expected = _TYPE_NAMES.get(base, base)
        return (
            f"field [{_field(loc)}] is not of the expected type. "
            f"The value [{err.get('input')}] cannot be converted to a [{expected}]"
        )
    return f"[{_field(loc)}] {err['msg']}"


def spec_errors(exc: ValidationError) -> list[str]:
    out: list[str] = []
    for err in exc.errors(include_url=False):
        for part in _describe(err).split("; ") if err["type"] == "es" else [_describe(err)]:
            if part not in out:
                out.append(part)
    return out


def parse_body(body: Any) -> EndpointBody:
    """Validate a PUT body (dict) against the models; every broken rule is listed."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if "service" not in body:
        raise BadRequest(f'Model configuration is missing a service: add "service": "{SERVICE}" to the body')
    if body.get("service") != SERVICE:
        raise BadRequest(
            f"Unknown service [{body.get('service')}]; Infernetes implements the [{SERVICE}] service only"
        )
    try:
        return EndpointBody.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed(spec_errors(exc)) from None


def parse_endpoint(task_type: str, inference_id: str, body: Any) -> EndpointSpec:
    """Validate everything that can be checked without looking at models or other endpoints."""
    validate_task_type(task_type)
    validate_inference_id(inference_id)
    parsed = parse_body(body)
    errors: list[str] = []
    settings = parsed.service_settings
    if settings.model_id is not None and settings.model_id == inference_id:
        errors.append(
            f"Inference endpoint IDs must be unique and must not match the model ID; "
            f"[inference_id] [{inference_id}] is the same as [model_id]"
        )
    ts = parsed.task_settings
    if ts is not None:
        if task_type != "rerank":
            for name in ("return_documents", "top_n"):
                if getattr(ts, name) is not None:
                    errors.append(f"[task_settings.{name}] is only applicable to the [rerank] task")
        elif ts.input_type is not None:
            errors.append("[task_settings.input_type] is not applicable to the [rerank] task")
    if errors:
        raise ValidationFailed(errors)
    return EndpointSpec(inference_id=inference_id, task_type=task_type, body=parsed)


def parse_task_settings(task_type: str, raw: Any) -> TaskSettings:
    """Request-level task_settings of an inference call, validated like the endpoint's."""
    try:
        ts = TaskSettings.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise ValidationFailed(
            [e.replace("[", "[task_settings.", 1) if e.startswith("[") else e for e in spec_errors(exc)]
        ) from None
    if task_type != "rerank":
        misplaced = [n for n in ("return_documents", "top_n") if getattr(ts, n) is not None]
        if misplaced:
            raise ValidationFailed([f"[task_settings.{n}] is only applicable to the [rerank] task" for n in misplaced])
    return ts
