"""Shared request-body pieces: strict models, bounded types and body unwrapping.

Every value check that a renderer repeats comes from ``cohort.validation``, so the API never
accepts what an amphora would refuse; every integer is bounded (32-bit, as Octavia's are) so
that none overflows the database.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from cohort import validation
from cohort.api.errors import InvalidInput, describe_validation_error

# Octavia's bodies nest about ten levels deep (load balancer > listener > L7 policy > pool >
# member > tags); anything much deeper is an attack on the parser, not a request.
MAX_JSON_DEPTH = 32


class Body(BaseModel):
    """Unknown attributes are an error, as in Octavia (this is also how immutable fields are refused)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


def rule(check: Callable[[str], object]) -> AfterValidator:
    """A ``cohort.validation`` check as a pydantic validator that keeps the value as sent."""

    def apply(value: str) -> str:
        check(value)
        return value

    return AfterValidator(apply)


# Addresses are checked by the renderers' rules but kept exactly as the client sent them, as
# Octavia returns them (``2001:db8:0:0:0:0:0:1`` stays exploded); every renderer parses them again.
def _ip(value: str) -> str:
    validation.ip_address(value)
    return value


def _cidr(value: str) -> str:
    validation.ip_network(value)
    return value


def _netmask(value: str) -> str:
    validation.ip_address(value, "persistence_granularity")
    validation.netmask_bits(value)
    return value


Name = Annotated[str, StringConstraints(max_length=255)]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=255)]
IPAddress = Annotated[str, AfterValidator(_ip)]
CIDR = Annotated[str, AfterValidator(_cidr)]
Netmask = Annotated[str, AfterValidator(_netmask)]
Int32 = Annotated[int, Field(ge=-(2**31), le=validation.INT32_MAX)]
NonNegative32 = Annotated[int, Field(ge=0, le=validation.INT32_MAX)]
Port = Annotated[int, Field(ge=1, le=65535)]
TimeoutMs = Annotated[int, Field(ge=0, le=31536000000)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=255)]
# As many tags as Octavia takes (it sets no count): the body size limit bounds them.
Tags = list[Tag]

M = TypeVar("M", bound=BaseModel)


def load_json(raw: bytes | str, what: str = "request body") -> Any:
    """A JSON document, or a 400: malformed, too deeply nested, or empty."""
    if not raw.strip():
        raise InvalidInput(f"The {what} is empty; a JSON object is required.")
    try:
        document = json.loads(raw)
    except RecursionError:
        raise InvalidInput(f"Malformed JSON in {what}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"Malformed JSON in {what}: {exc}") from exc
    if _depth_exceeds(document, MAX_JSON_DEPTH):
        raise InvalidInput(f"Malformed JSON in {what}: nested deeper than {MAX_JSON_DEPTH} levels")
    return document


def _depth_exceeds(document: Any, limit: int) -> bool:
    # Iterative: the document may be nested close to the interpreter's recursion limit.
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


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
