"""The OpenAPI description the fuzzer works from: the server's own ``/openapi.json``, completed.

Cohort's routes read their bodies and list options themselves (``unwrap``, ``parse_document``,
``parse_options``), so FastAPI's description has no request bodies and no query parameters; a
fuzzer driven by it alone would only ever see "missing body" 400s. This module adds them:

* each POST/PUT body is the JSON schema of the pydantic model its route parses, wrapped in the
  resource key; the route and model are read from the handler's code, so a new route is
  covered without editing this file;
* list options (``limit``, ``marker``, ``sort``, ``fields``, filters, tags) on GETs, ``cascade``
  on DELETE, ``additive_only`` on the member batch PUT;
* hints: identifiers, addresses, certificates and flavor data may also be *placeholder tokens*
  (``SEED.<owner>.<kind>``, see ``tests.api_fuzz.seeds``) that the test replaces with live
  objects just before each request, so generated requests reach the validators and the
  database instead of stopping at a 404.
"""

from __future__ import annotations

import copy
import dis
import inspect
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

OWNERS = ("admin", "tenant")
MISSING = "00000000-0000-4000-8000-000000000000"  # an id no object has
# Path segment (a collection) -> the kind of object an id right after it names.
SEGMENT_KIND = {
    "loadbalancers": "loadbalancer", "listeners": "listener", "pools": "pool", "members": "member",
    "healthmonitors": "healthmonitor", "l7policies": "l7policy", "rules": "l7rule", "secrets": "secret",
    "flavors": "flavor", "flavorprofiles": "flavorprofile", "availabilityzones": "az",
    "availabilityzoneprofiles": "azprofile", "amphorae": "amphora", "clusters": "cluster",
    "distributors": "distributor", "bgp_speakers": "speaker", "bgp_peers": "peer", "quotas": "project",
    "subnets": "subnet", "networks": "network", "providers": "provider",
}
# Kinds whose objects belong to a project: one live object per owner.
OWNED = {"loadbalancer", "listener", "pool", "pool_free", "member", "healthmonitor", "l7policy", "l7rule",
         "secret", "cert_ref", "ca_ref", "crl_ref", "amphora", "cluster", "distributor", "project"}
TENANT_KINDS = {"loadbalancer", "listener", "pool", "member", "healthmonitor", "l7policy", "l7rule"}
# Kinds that need no seed object: plain values the noop drivers know.
LITERALS: dict[str, list[Any]] = {
    "subnet": ["public-subnet", "private-subnet"],
    "network": ["public-network", "private-network"],
    "provider": ["amphora", "octavia"],
}
# Body fields that name another object.
ID_FIELDS = {
    "loadbalancer_id": ["loadbalancer"], "listener_id": ["listener"], "pool_id": ["pool_free", "pool"],
    "default_pool_id": ["pool", "pool_free"], "redirect_pool_id": ["pool", "pool_free"],
    "flavor_id": ["flavor"], "flavor_profile_id": ["flavorprofile"], "availability_zone": ["az"],
    "availability_zone_profile_id": ["azprofile"], "bgp_speaker_id": ["speaker"], "project_id": ["project"],
    "vip_subnet_id": ["subnet"], "subnet_id": ["subnet"], "vip_network_id": ["network"],
    "provider": ["provider"], "provider_name": ["provider"],
    "default_tls_container_ref": ["cert_ref"], "tls_container_ref": ["cert_ref"],
    "ca_tls_container_ref": ["ca_ref"], "client_ca_tls_container_ref": ["ca_ref"],
    "crl_container_ref": ["crl_ref"], "client_crl_container_ref": ["crl_ref"],
}
ARRAY_FIELDS = {"sni_container_refs": ["cert_ref"]}
PLAIN = "^[A-Za-z0-9][A-Za-z0-9._-]*$"
# Fields whose rules a JSON schema does not carry: values a client would send, besides any other.
SEMANTIC: dict[str, list[Any]] = {
    "url_path": ["/", "/healthz", "/a/b.html?x=1"], "redirect_url": ["http://example.com/", "https://example.org/x"],
    "redirect_prefix": ["https://example.org"], "expected_codes": ["200", "200-204", "200,202"],
    "domain_name": ["example.com"], "cookie_name": ["SESSIONID"], "key": ["X-Fuzz", "session"],
    "value": ["/fuzz", "example.com", "a.*b"], "tls_ciphers": ["ECDHE-ECDSA-AES256-GCM-SHA384"],
}
IP_FIELDS = {"address", "monitor_address", "vip_address", "ip_address", "peer_ip"}
IP_EXAMPLES = ["192.0.2.10", "198.51.100.7", "10.0.0.5", "2001:db8::10", "::1"]
CIDR_EXAMPLES = ["10.0.0.0/8", "192.0.2.0/24", "0.0.0.0/0", "2001:db8::/32", "::/0"]
PROFILE_DATA = [
    "{}", '{"loadbalancer_topology": "SINGLE"}', '{"loadbalancer_topology": "ACTIVE_STANDBY"}',
    '{"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 3, "amp_cluster_min_size": 2}',
    '{"loadbalancer_topology": "ACTIVE_ACTIVE", "distributor_type": "L3_BGP", '
    '"bgp_speaker_id": "SEED.admin.speaker"}',
    '{"compute_flavor": {"cpu": 0.5, "memory_mb": 256}}', '{"amp_cluster_size": 0}', "[]", "not json",
]
ZONE_DATA = ["{}", '{"compute_zone": "nova"}', '{"amp_cluster_size": 3}', "[]", ""]
PAYLOADS = ["PEM.cert", "PEM.crl", "PEM.cert-base64", "-----BEGIN\n-----END"]
# List options: positive cases use them as a client would (negative cases send anything).
LIST_OPTIONS: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 0},
    "page_reverse": {"type": "boolean"},
    "sort": {"enum": ["name:asc", "created_at:desc", "id", "name:desc,id:asc"]},
    "sort_key": {"enum": ["name", "created_at", "id"]},
    "sort_dir": {"enum": ["asc", "desc"]},
    "fields": {"enum": ["id", "id,name", "name,provisioning_status"]},
    "name": {"type": "string"},
}
# Options only collections of tenant objects (with tags and statuses) take.
TENANT_LIST_OPTIONS: dict[str, dict[str, Any]] = {
    "tags": {"type": "string"}, "tags-any": {"type": "string"},
    "not-tags": {"type": "string"}, "not-tags-any": {"type": "string"},
    "admin_state_up": {"type": "boolean"},
    "provisioning_status": {"enum": ["ACTIVE", "PENDING_UPDATE", "ERROR"]},
}


def token(owner: str, kind: str) -> str:
    return f"SEED.{owner}.{kind}"


def choices(kind: str) -> list[Any]:
    """The values that name a live object of ``kind`` (before substitution)."""
    if kind in LITERALS:
        return list(LITERALS[kind])
    if kind == "project":
        return [token(owner, kind) for owner in OWNERS] + ["fuzz-other"]
    if kind in OWNED:
        return [token(owner, kind) for owner in OWNERS]
    return [token("admin", kind)]


def hinted(values: list[Any], schema: dict[str, Any], *extra: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or one of ``values``, or one of the ``extra`` schemas."""
    return {"anyOf": [{"enum": values}, *extra, schema]}


def body_models(app: FastAPI) -> dict[tuple[str, str], tuple[str | None, type[BaseModel]]]:
    """(METHOD, path) -> (wrapper key or None, model) for every route that parses a body.

    Read from each handler's bytecode (not its source file, which may have changed since it was
    imported): a call ``unwrap(raw, "<wrapper>", Model)`` or ``parse_document(raw, Model)``.
    """
    found: dict[tuple[str, str], tuple[str | None, type[BaseModel]]] = {}
    for route in _routes(app):
        handler = inspect.unwrap(route.endpoint)  # cohort.api.routing wraps handlers (functools.wraps)
        parsed = _body_call(handler)
        if parsed is not None:
            for method in route.methods:
                found[(method, route.path)] = parsed
    return found


def _body_call(handler: Any) -> tuple[str | None, type[BaseModel]] | None:
    """The wrapper and model of the handler's ``unwrap``/``parse_document`` call, if it makes one."""
    instructions = list(dis.get_instructions(handler))
    for index, instruction in enumerate(instructions):
        if instruction.opname != "LOAD_GLOBAL" or instruction.argval not in ("unwrap", "parse_document"):
            continue
        wrapper: str | None = None
        chain: list[str] = []
        for following in instructions[index + 1:]:
            if following.opname.startswith("CALL"):
                break
            if following.opname == "LOAD_CONST" and isinstance(following.argval, str):
                wrapper = following.argval
            elif following.opname == "LOAD_GLOBAL":
                chain = [str(following.argval)]
            elif following.opname in ("LOAD_ATTR", "LOAD_METHOD") and chain:
                chain.append(str(following.argval))
        if not chain:
            continue
        model: Any = handler.__globals__[chain[0]]
        for name in chain[1:]:
            model = getattr(model, name)
        if instruction.argval == "parse_document":
            wrapper = None
        return wrapper, model
    return None


def routes_reading_bodies(app: FastAPI) -> set[tuple[str, str]]:
    """(METHOD, path) of every route whose handler takes the raw body."""
    return {(method, route.path) for route in _routes(app)
            if "raw" in inspect.signature(inspect.unwrap(route.endpoint)).parameters for method in route.methods}


def _routes(app: FastAPI) -> list[Any]:
    """The app's API routes in the schema, each with its full path, methods and endpoint.

    FastAPI releases that keep included routers as such (not copied into ``app.routes``) list
    them through ``fastapi.routing.iter_route_contexts``.
    """
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = list(contexts(app.routes)) if contexts is not None else list(app.routes)
    return [route for route in routes if getattr(route, "include_in_schema", False)
            and route.methods and route.endpoint is not None and route.path is not None]


# What a model's JSON schema cannot say (a model validator's rule), said for positive cases.
MODEL_PATCHES: dict[str, dict[str, Any]] = {
    # "At least one of vip_port_id, vip_network_id and vip_subnet_id"; Cohort refuses vip_port_id.
    "LoadBalancerCreate": {"required": ["vip_subnet_id"], "drop": ["vip_port_id"]},
    # "loadbalancer_id or listener_id".
    "PoolCreate": {"required": ["loadbalancer_id"]},
    # A key only for HEADER and COOKIE rules: positive cases send none (and fail on those two types).
    "L7RuleCreate": {"drop": ["key"]},
}


def _patch(name: str, schema: dict[str, Any]) -> None:
    patch = MODEL_PATCHES.get(name, {})
    schema["required"] = sorted({*schema.get("required", []), *patch.get("required", [])})
    for prop in patch.get("drop", []):
        schema.get("properties", {}).pop(prop, None)


def _hint_properties(schema: dict[str, Any]) -> None:
    for name, prop in list(schema.get("properties", {}).items()):
        if name in ID_FIELDS:
            # Only live objects (and one that does not exist) in positive cases; negative cases
            # are any other value, which is how a fuzzer reaches the 404s and 400s.
            schema["properties"][name] = {"enum": [value for kind in ID_FIELDS[name] for value in choices(kind)]
                                          + [MISSING]}
        elif name in ARRAY_FIELDS:
            values = [value for kind in ARRAY_FIELDS[name] for value in choices(kind)]
            schema["properties"][name] = {"anyOf": [
                {"type": "array", "items": {"enum": values}, "maxItems": 3}, prop]}
        elif name in IP_FIELDS:
            schema["properties"][name] = {"anyOf": [{"enum": IP_EXAMPLES}, {"type": "string", "format": "ipv4"},
                                                    {"type": "string", "format": "ipv6"}]}
        elif name == "allowed_cidrs":
            schema["properties"][name] = {"anyOf": [
                {"type": "array", "items": {"enum": CIDR_EXAMPLES}, "maxItems": 3}, prop]}
        elif name == "flavor_data":
            schema["properties"][name] = {"enum": PROFILE_DATA}
        elif name == "availability_zone_data":
            schema["properties"][name] = {"enum": ZONE_DATA}
        elif name == "payload":
            schema["properties"][name] = {"enum": PAYLOADS}
        elif name == "url_path":
            schema["properties"][name] = {"enum": SEMANTIC[name]}
        elif name in SEMANTIC:
            _plain_strings(prop)
            schema["properties"][name] = hinted(SEMANTIC[name], prop)
        else:
            _plain_strings(prop)


def _plain_strings(schema: Any) -> None:
    """Free-form strings in positive cases are plain words; negative cases send anything else.

    Names, tags, descriptions and rule values refuse control characters (they end up in
    configuration files), so free unicode in positive cases would be mostly 400s.
    """
    if isinstance(schema, list):
        for item in schema:
            _plain_strings(item)
        return
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "string" and not {"enum", "const", "pattern", "format"} & set(schema):
        schema["pattern"] = PLAIN
    for key in ("anyOf", "oneOf", "allOf", "items", "additionalProperties", "prefixItems"):
        if key in schema:
            _plain_strings(schema[key])
    for prop in schema.get("properties", {}).values():
        _plain_strings(prop)


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _kind_before(path: str, index: int) -> str | None:
    segments = path.strip("/").split("/")
    return SEGMENT_KIND.get(segments[index - 1]) if index > 0 else None


def enrich(document: dict[str, Any], app: FastAPI) -> dict[str, Any]:
    """A copy of ``document`` (the server's /openapi.json) with bodies, list options and hints."""
    doc = copy.deepcopy(document)
    bodies = body_models(app)
    models = sorted({model for _, model in bodies.values()}, key=lambda m: m.__name__)
    refs, top = models_json_schema([(model, "validation") for model in models],
                                   ref_template="#/components/schemas/{model}")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in top.get("$defs", {}).items():
        _patch(name, schema)
        _hint_properties(schema)
        schemas[name] = schema
    for path, operations in doc["paths"].items():
        segments = path.strip("/").split("/")
        for method, operation in operations.items():
            params = operation.setdefault("parameters", [])
            for param in params:
                if param["in"] == "path":
                    kind = _kind_before(path, segments.index("{" + param["name"] + "}"))
                    if kind is not None:
                        param["schema"] = {"type": "string", "enum": [*choices(kind), MISSING]}
            if method == "get":
                params.append(_query("fields", LIST_OPTIONS["fields"]))
                last = segments[-1]
                kind = SEGMENT_KIND.get(last)
                if not last.startswith("{") and kind is not None:
                    params.extend(_query(k, v) for k, v in LIST_OPTIONS.items() if k != "fields")
                    if kind in TENANT_KINDS:
                        params.extend(_query(k, v) for k, v in TENANT_LIST_OPTIONS.items())
                    if kind == "listener":
                        params.append(_query("protocol_port", {"type": "integer"}))
                    params.append(_query("marker", hinted(choices(kind), {"type": "string"})))
                if last == "quotas":
                    params.append(_query("project_id", hinted(choices("project"), {"type": "string"})))
            if method == "delete" and segments[-2] == "loadbalancers":
                params.append(_query("cascade", {"type": "boolean"}))
            if method == "put" and segments[-1] == "members":
                params.append(_query("additive_only", {"type": "boolean"}))
            found = bodies.get((method.upper(), path))
            if found is not None:
                wrapper, model = found
                ref = refs[(model, "validation")]
                body = ref if wrapper is None else {
                    "type": "object", "required": [wrapper], "properties": {wrapper: ref},
                    "additionalProperties": False}
                operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return doc

