"""Shared request-body pieces: strict models, bounded types and body unwrapping."""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from cohort.api.errors import InvalidInput, describe_validation_error


class Body(BaseModel):
    """Unknown attributes are an error, as in Octavia (this is also how immutable fields are refused)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError(f"'{value}' is not a valid IP address") from exc


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise ValueError(f"'{value}' is not a valid CIDR") from exc


Name = Annotated[str, StringConstraints(max_length=255)]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=255)]
IPAddress = Annotated[str, AfterValidator(_ip)]
CIDR = Annotated[str, AfterValidator(_cidr)]
Port = Annotated[int, Field(ge=1, le=65535)]
TimeoutMs = Annotated[int, Field(ge=0, le=31536000000)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Tags = Annotated[list[Tag], Field(max_length=50)]

M = TypeVar("M", bound=BaseModel)


def load_json(raw: bytes) -> Any:
    if not raw.strip():
        raise InvalidInput("The request body is empty; a JSON object is required.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"Malformed JSON in request body: {exc}") from exc


def unwrap(raw: bytes, wrapper: str, model: type[M]) -> M:
    """Parse ``{"<wrapper>": {...}}`` into ``model``; every failure is a 400 naming the field."""
    document = load_json(raw)
    if not isinstance(document, dict) or wrapper not in document:
        raise InvalidInput(f"Missing argument: the request body must be an object with a '{wrapper}' key.")
    extra = [key for key in document if key != wrapper]
    if extra:
        raise InvalidInput(f"Unknown attribute for argument body: {', '.join(extra)}")
    inner = document[wrapper]
    if not isinstance(inner, dict):
        raise InvalidInput(f"Invalid input for field/attribute {wrapper}: an object is required.")
    try:
        return model.model_validate(inner)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc, wrapper)) from exc


def parse_document(raw: bytes, model: type[M]) -> M:
    """Parse a body that is not wrapped in a resource name (e.g. the member batch ``{"members": [...]}``)."""
    document = load_json(raw)
    if not isinstance(document, dict):
        raise InvalidInput("The request body must be a JSON object.")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc)) from exc


def given(model: BaseModel) -> dict[str, Any]:
    """Only the attributes the client actually sent (an update changes nothing else)."""
    return model.model_dump(exclude_unset=True)
