"""One well-formed request per create, sent first (hypothesis' explicit phase) for each project.

Random generation finds the edges; these make sure every kind of object is also created the way a
client creates it, so the run always walks the deep paths (quota counting, TLS references,
nested trees, the reconciler) and the check that creates succeed holds for every kind.
"""

from __future__ import annotations

from typing import Any

# (METHOD, path) -> (path parameters, body); "OWNER" becomes the project's name in the tokens.
KNOWN_GOOD: dict[tuple[str, str], tuple[dict[str, str], dict[str, Any]]] = {
    ("POST", "/v1/secrets"): ({}, {"name": "kg", "kind": "certificate", "payload": "PEM.cert"}),
    ("POST", "/v2/lbaas/loadbalancers"): ({}, {"loadbalancer": {
        "name": "kg", "vip_subnet_id": "public-subnet",
        "listeners": [{"protocol": "TERMINATED_HTTPS", "protocol_port": 443,
                       "default_tls_container_ref": "SEED.OWNER.cert_ref",
                       "default_pool": {"protocol": "HTTP", "lb_algorithm": "LEAST_CONNECTIONS",
                                        "members": [{"address": "192.0.2.20", "protocol_port": 8080}]}}]}}),
    ("POST", "/v2/lbaas/listeners"): ({}, {"listener": {
        "loadbalancer_id": "SEED.OWNER.loadbalancer", "protocol": "TCP", "protocol_port": 2222,
        "allowed_cidrs": ["192.0.2.0/24"], "connection_limit": 100}}),
    ("POST", "/v2/lbaas/pools"): ({}, {"pool": {
        "loadbalancer_id": "SEED.OWNER.loadbalancer", "protocol": "HTTP", "lb_algorithm": "SOURCE_IP",
        "session_persistence": {"type": "HTTP_COOKIE"}}}),
    ("POST", "/v2/lbaas/pools/{pool_id}/members"): ({"pool_id": "SEED.OWNER.pool"}, {"member": {
        "address": "2001:db8::20", "protocol_port": 443, "weight": 5}}),
    ("POST", "/v2/lbaas/healthmonitors"): ({}, {"healthmonitor": {
        "pool_id": "SEED.OWNER.pool_free", "type": "HTTP", "delay": 5, "timeout": 3, "max_retries": 3,
        "url_path": "/healthz", "expected_codes": "200-204"}}),
    ("POST", "/v2/lbaas/l7policies"): ({}, {"l7policy": {
        "listener_id": "SEED.OWNER.listener", "action": "REDIRECT_TO_URL", "redirect_url": "https://example.org/",
        "rules": [{"type": "HEADER", "key": "X-Fuzz", "compare_type": "EQUAL_TO", "value": "yes"}]}}),
    ("POST", "/v2/lbaas/l7policies/{policy_id}/rules"): ({"policy_id": "SEED.OWNER.l7policy"}, {"rule": {
        "type": "PATH", "compare_type": "REGEX", "value": "^/api/v[0-9]+"}}),
    ("POST", "/v2/lbaas/flavorprofiles"): ({}, {"flavorprofile": {
        "name": "kg", "provider_name": "amphora", "flavor_data": '{"loadbalancer_topology": "ACTIVE_STANDBY"}'}}),
    ("POST", "/v2/lbaas/flavors"): ({}, {"flavor": {
        "name": "kg-OWNER", "flavor_profile_id": "SEED.admin.flavorprofile"}}),
    ("POST", "/v2/lbaas/availabilityzoneprofiles"): ({}, {"availability_zone_profile": {
        "name": "kg", "provider_name": "amphora", "availability_zone_data": '{"compute_zone": "nova"}'}}),
    ("POST", "/v2/lbaas/availabilityzones"): ({}, {"availability_zone": {
        "name": "kg-OWNER", "availability_zone_profile_id": "SEED.admin.azprofile"}}),
    ("POST", "/v2/octavia/bgp_speakers"): ({}, {"bgp_speaker": {"name": "kg", "local_as": 4200000000}}),
    ("POST", "/v2/octavia/bgp_peers"): ({}, {"bgp_peer": {
        "peer_ip": "2001:db8::1", "remote_as": 65001, "bgp_speaker_id": "SEED.admin.speaker",
        "auth_type": "md5", "md5_password": "s3cret"}}),
}


def _owned(value: Any, owner: str) -> Any:
    if isinstance(value, str):
        return value.replace("OWNER", owner)
    if isinstance(value, list):
        return [_owned(item, owner) for item in value]
    if isinstance(value, dict):
        return {key: _owned(item, owner) for key, item in value.items()}
    return value


def known_good(method: str, path: str, owner: str) -> tuple[dict[str, str], dict[str, Any]] | None:
    """The well-formed request for this create, as ``owner`` sends it, or None."""
    found = KNOWN_GOOD.get((method, path))
    if found is None:
        return None
    params, body = found
    return _owned(params, owner), _owned(body, owner)
