"""L7 policies and rules of an HTTP listener as HAProxy ACLs and actions.

Each enabled rule becomes one named ACL (its id); a policy's rules are ANDed in
its condition, ``invert`` negates one. HAProxy runs ``http-request deny``
before ``redirect`` before ``use_backend`` whatever their order in the file,
which is the precedence Octavia documents for its amphora driver: REJECT first,
then REDIRECT_TO_URL/REDIRECT_PREFIX, then REDIRECT_TO_POOL, each kind in
position order, then the default pool. Policies are written in that order.

Deliberate difference from Octavia: FILE_TYPE compares the file extension (the
text after the last dot of the last path segment, empty when there is none)
instead of the whole path, so EQUAL_TO "jpg" matches ``/a/b.jpg``.
"""

from __future__ import annotations

from collections.abc import Iterable

from cohort import validation
from cohort.datamodel import L7Policy, L7Rule
from cohort.drivers.amphora import haproxy_values as v

_MATCH = {
    "REGEX": "-m reg",
    "STARTS_WITH": "-m beg",
    "ENDS_WITH": "-m end",
    "CONTAINS": "-m sub",
    "EQUAL_TO": "-m str",
}
# A Host header may carry the port; rules name hosts.
_HOST = "req.hdr(host),regsub(:[0-9]+$,)"
_EXTENSION = "path,regsub(^.*/,),regsub(^[^.]*$,),regsub(^.*[.],)"
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_PRECEDENCE = {"REJECT": 0, "REDIRECT_TO_URL": 1, "REDIRECT_PREFIX": 1, "REDIRECT_TO_POOL": 2}


def _match(rule: L7Rule) -> str:
    try:
        return _MATCH[rule.compare_type]
    except KeyError:
        raise ValueError(f"L7 rule {rule.id}: unknown compare_type {rule.compare_type!r}") from None


def _key(rule: L7Rule) -> str:
    if not rule.key:
        raise ValueError(f"L7 rule {rule.id} of type {rule.type} needs a key")
    return v.token(rule.key, f"L7 rule {rule.id} key")


def _value(rule: L7Rule) -> str:
    if rule.compare_type == "REGEX":
        validation.regex(rule.value, f"L7 rule {rule.id} value")
    return v.quote(rule.value, f"L7 rule {rule.id} value")


def acl_line(rule: L7Rule) -> str:
    acl = v.name(rule.id, "L7 rule id")
    match rule.type:
        case "HOST_NAME":
            return f"acl {acl} {_HOST} -i {_match(rule)} -- {_value(rule)}"
        case "PATH":
            return f"acl {acl} path {_match(rule)} -- {_value(rule)}"
        case "FILE_TYPE":
            if rule.compare_type not in ("EQUAL_TO", "REGEX"):
                raise ValueError(f"L7 rule {rule.id}: FILE_TYPE compares with EQUAL_TO or REGEX only")
            if rule.compare_type == "EQUAL_TO":
                ext = v.quote(rule.value.removeprefix("."), f"L7 rule {rule.id} value")
            else:
                ext = _value(rule)
            return f"acl {acl} {_EXTENSION} {_match(rule)} -- {ext}"
        case "HEADER":
            return f"acl {acl} req.hdr({_key(rule)}) {_match(rule)} -- {_value(rule)}"
        case "COOKIE":
            return f"acl {acl} req.cook({_key(rule)}) {_match(rule)} -- {_value(rule)}"
        case "SSL_CONN_HAS_CERT":
            return f"acl {acl} ssl_c_used"
        case "SSL_VERIFY_RESULT":
            return f"acl {acl} ssl_c_verify eq {validation.ssl_verify_result(rule.value)}"
        case "SSL_DN_FIELD":
            return f"acl {acl} ssl_c_s_dn({_key(rule)}) {_match(rule)} -- {_value(rule)}"
    raise ValueError(f"L7 rule {rule.id}: unknown type {rule.type!r}")


def _condition(rules: Iterable[L7Rule]) -> str:
    return " ".join(("!" if rule.invert else "") + rule.id for rule in rules)


def _code(policy: L7Policy) -> int:
    code = policy.redirect_http_code or 302
    if code not in _REDIRECT_CODES:
        raise ValueError(f"L7 policy {policy.id}: redirect_http_code {code} is not 301/302/303/307/308")
    return code


def _action(policy: L7Policy, condition: str, pool_ids: frozenset[str]) -> str | None:
    match policy.action:
        case "REJECT":
            return f"http-request deny if {condition}"
        case "REDIRECT_TO_URL":
            if not policy.redirect_url:
                raise ValueError(f"L7 policy {policy.id}: REDIRECT_TO_URL needs redirect_url")
            # The ``redirect`` keyword takes its location literally (unlike
            # ``http-request redirect``, which reads a log-format string).
            what = f"L7 policy {policy.id} redirect_url"
            url = v.quote(validation.redirect_url(policy.redirect_url, what), what)
            return f"redirect location {url} code {_code(policy)} if {condition}"
        case "REDIRECT_PREFIX":
            if not policy.redirect_prefix:
                raise ValueError(f"L7 policy {policy.id}: REDIRECT_PREFIX needs redirect_prefix")
            what = f"L7 policy {policy.id} redirect_prefix"
            prefix = v.quote(validation.redirect_url(policy.redirect_prefix, what), what)
            return f"redirect prefix {prefix} code {_code(policy)} if {condition}"
        case "REDIRECT_TO_POOL":
            # A disabled or absent pool is not rendered; the policy then does
            # nothing and the request falls through, as with Octavia.
            if policy.redirect_pool_id not in pool_ids:
                return None
            return f"use_backend {v.name(policy.redirect_pool_id, 'pool id')} if {condition}"
    raise ValueError(f"L7 policy {policy.id}: unknown action {policy.action!r}")


def policy_lines(policies: Iterable[L7Policy], pool_ids: frozenset[str]) -> list[str]:
    """ACL declarations followed by the actions, for the policies of one listener.

    ``pool_ids`` are the backends rendered in this configuration.
    """
    acls: list[str] = []
    actions: list[str] = []
    declared: set[str] = set()
    # Written in the order HAProxy applies them, so the file reads as it runs.
    for policy in sorted(policies, key=lambda p: (_PRECEDENCE.get(p.action, 3), p.position, p.id)):
        v.name(policy.id, "L7 policy id")
        rules = [rule for rule in policy.rules if rule.admin_state_up]
        # Octavia skips a policy without (enabled) rules rather than applying it
        # to every request.
        if not policy.admin_state_up or not rules:
            continue
        action = _action(policy, _condition(rules), pool_ids)
        if action is None:
            continue
        for rule in rules:
            if rule.id not in declared:
                declared.add(rule.id)
                acls.append(acl_line(rule))
        actions.append(action)
    return acls + actions
