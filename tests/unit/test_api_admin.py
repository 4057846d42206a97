"""The operator API over real HTTP (noop drivers): flavors, zones, clusters, BGP profiles, amphorae, distributors."""

from __future__ import annotations

import json
from typing import Any

from tests.support import Api, wait_for

LB = "/v2/lbaas/loadbalancers"
AA_DATA = {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 3, "amp_cluster_min_size": 2}


def make_profile(api: Api, data: dict[str, Any] | str, name: str = "profile") -> tuple[int, Any]:
    text = data if isinstance(data, str) else json.dumps(data)
    return api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
        "name": name, "provider_name": "amphora", "flavor_data": text}})


def make_flavor(api: Api, data: dict[str, Any], name: str = "flavor", **extra: Any) -> dict[str, Any]:
    status, body = make_profile(api, data, name + "-profile")
    assert status == 201, body
    status, body = api.post("/v2/lbaas/flavors", {"flavor": {
        "name": name, "flavor_profile_id": body["flavorprofile"]["id"], **extra}})
    assert status == 201, body
    return dict(body["flavor"])


def test_flavor_profile_validation(api: Api) -> None:
    status, body = make_profile(api, AA_DATA)
    assert status == 201, body
    assert json.loads(body["flavorprofile"]["flavor_data"]) == AA_DATA
    cases = {
        "bogus_key": {"bogus_key": 1},
        "amp_cluster_size": {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": "many"},
        "loadbalancer_topology": {"loadbalancer_topology": "RING"},
        "distributor_type": {"distributor_type": "L9"},
        "compute_flavor": {"compute_flavor": {"gpu": 1}},
    }
    for field, data in cases.items():
        status, body = make_profile(api, data)
        assert status == 400, (field, body)
        assert field in body["faultstring"], (field, body)
        assert body["faultcode"] == "Client"
    status, body = make_profile(api, {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 2,
                                      "amp_cluster_min_size": 3})
    assert status == 400 and "amp_cluster_min_size" in body["faultstring"]
    status, body = make_profile(api, "{not json")
    assert status == 400 and "flavor_data" in body["faultstring"]
    status, body = api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
        "name": "x", "provider_name": "nope", "flavor_data": "{}"}})
    assert status == 400 and "nope" in body["faultstring"]


def test_flavor_crud_and_use(api: Api) -> None:
    flavor = make_flavor(api, {"loadbalancer_topology": "SINGLE"}, name="small", description="one amphora")
    assert flavor["enabled"] is True and flavor["description"] == "one amphora"
    status, body = api.post("/v2/lbaas/flavors", {"flavor": {
        "name": "small", "flavor_profile_id": flavor["flavor_profile_id"]}})
    assert status == 409, body
    status, body = api.post("/v2/lbaas/flavors", {"flavor": {"name": "orphan", "flavor_profile_id": "missing"}})
    assert status == 400, body
    status, body = api.get("/v2/lbaas/flavors?name=small")
    assert [f["id"] for f in body["flavors"]] == [flavor["id"]]
    status, body = api.put(f"/v2/lbaas/flavors/{flavor['id']}", {"flavor": {"enabled": False, "description": None}})
    assert status == 200 and body["flavor"]["enabled"] is False and body["flavor"]["description"] == ""
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "flavor_id": flavor["id"]}})
    assert status == 400 and "disabled" in body["faultstring"]
    api.put(f"/v2/lbaas/flavors/{flavor['id']}", {"flavor": {"enabled": True}})
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "flavor_id": flavor["id"]}})
    assert status == 201 and body["loadbalancer"]["flavor_id"] == flavor["id"]
    lb_id = body["loadbalancer"]["id"]
    # In use: neither the flavor nor its profile can go.
    assert api.delete(f"/v2/lbaas/flavors/{flavor['id']}")[0] == 409
    assert api.delete(f"/v2/lbaas/flavorprofiles/{flavor['flavor_profile_id']}")[0] == 409
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    assert api.delete(f"{LB}/{lb_id}")[0] == 204
    wait_for(lambda: api.get(f"{LB}/{lb_id}")[0] == 404)
    assert api.delete(f"/v2/lbaas/flavors/{flavor['id']}")[0] == 204
    assert api.delete(f"/v2/lbaas/flavorprofiles/{flavor['flavor_profile_id']}")[0] == 204
    assert api.get(f"/v2/lbaas/flavors/{flavor['id']}")[0] == 404


def test_active_active_cluster(api: Api) -> None:
    flavor = make_flavor(api, AA_DATA, name="aa3")
    status, body = api.post(LB, {"loadbalancer": {"name": "aa", "vip_subnet_id": "public-subnet",
                                                   "flavor_id": flavor["id"]}})
    assert status == 201, body
    lb_id = body["loadbalancer"]["id"]
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    status, body = api.get(f"/v2/octavia/clusters?loadbalancer_id={lb_id}")
    assert status == 200 and len(body["clusters"]) == 1
    cluster = body["clusters"][0]
    assert (cluster["desired_size"], cluster["min_size"], cluster["actual_size"]) == (3, 2, 3)
    amphorae = _amphorae(api, lb_id)
    assert len(amphorae) == 3 and {a["role"] for a in amphorae} == {"IN_CLUSTER"}
    assert {a["id"] for a in amphorae} == {a["id"] for a in cluster["amphorae"]}

    # Scale out, then in; an invalid size is refused before anything changes.
    status, body = api.put(f"/v2/octavia/clusters/{cluster['id']}", {"cluster": {"min_size": 4}})
    assert status == 400 and "min_size" in body["faultstring"]
    status, body = api.put(f"/v2/octavia/clusters/{cluster['id']}", {"cluster": {"desired_size": 4}})
    assert status == 200 and body["cluster"]["desired_size"] == 4
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    wait_for(lambda: len(_amphorae(api, lb_id)) == 4)
    status, body = api.put(f"/v2/octavia/clusters/{cluster['id']}", {"cluster": {"desired_size": 2}})
    assert status == 200
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    wait_for(lambda: len(_amphorae(api, lb_id)) == 2)
    assert api.get(f"/v2/octavia/clusters/{cluster['id']}")[1]["cluster"]["actual_size"] == 2
    assert api.put(f"/v2/octavia/clusters/{cluster['id']}", {"cluster": {"bogus": 1}})[0] == 400
    assert api.get("/v2/octavia/clusters/nope")[0] == 404

    status, body = api.get("/v2/octavia/distributors")
    assert status == 200 and isinstance(body["distributors"], list) and body["distributors_links"] == []


def _amphorae(api: Api, lb_id: str) -> list[dict[str, Any]]:
    status, body = api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}&status=ALLOCATED")
    assert status == 200, body
    return list(body["amphorae"])


def test_availability_zones(api: Api) -> None:
    status, body = api.post("/v2/lbaas/availabilityzoneprofiles", {"availability_zone_profile": {
        "name": "zp", "provider_name": "amphora", "availability_zone_data": '{"compute_zone": "z1"}'}})
    assert status == 201, body
    profile = body["availability_zone_profile"]
    status, body = api.post("/v2/lbaas/availabilityzoneprofiles", {"availability_zone_profile": {
        "name": "bad", "provider_name": "amphora", "availability_zone_data": '{"warp_drive": 1}'}})
    assert status == 400 and "warp_drive" in body["faultstring"]
    status, body = api.post("/v2/lbaas/availabilityzones", {"availability_zone": {
        "name": "z1", "availability_zone_profile_id": profile["id"], "description": "zone one"}})
    assert status == 201 and body["availability_zone"]["enabled"] is True
    assert api.post("/v2/lbaas/availabilityzones", {"availability_zone": {
        "name": "z1", "availability_zone_profile_id": profile["id"]}})[0] == 409
    status, body = api.get("/v2/lbaas/availabilityzones")
    assert [z["name"] for z in body["availability_zones"]] == ["z1"]
    status, body = api.put("/v2/lbaas/availabilityzones/z1", {"availability_zone": {"description": None}})
    assert status == 200 and body["availability_zone"]["description"] == ""
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "availability_zone": "nowhere"}})
    assert status == 400
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "availability_zone": "z1"}})
    assert status == 201 and body["loadbalancer"]["availability_zone"] == "z1"
    assert api.delete("/v2/lbaas/availabilityzones/z1")[0] == 409
    assert api.delete(f"/v2/lbaas/availabilityzoneprofiles/{profile['id']}")[0] == 409
    status, body = api.get("/v2/lbaas/providers/amphora/availability_zone_capabilities")
    assert status == 200 and "compute_zone" in {c["name"] for c in body["availability_zone_capabilities"]}
    assert api.get("/v2/lbaas/providers/nope/flavor_capabilities")[0] == 404


def test_bgp_speakers_and_peers(api: Api) -> None:
    status, body = api.post("/v2/octavia/bgp_speakers", {"bgp_speaker": {"name": "s", "local_as": 4200000000}})
    assert status == 201 and body["bgp_speaker"]["local_as"] == 4200000000
    speaker = body["bgp_speaker"]
    for asn in (0, 2**32, -1):
        status, body = api.post("/v2/octavia/bgp_speakers", {"bgp_speaker": {"local_as": asn}})
        assert status == 400 and "local_as" in body["faultstring"], asn

    def peer(**fields: Any) -> tuple[int, Any]:
        return api.post("/v2/octavia/bgp_peers", {"bgp_peer": {
            "peer_ip": "203.0.113.1", "remote_as": 64512, "bgp_speaker_id": speaker["id"], **fields}})

    for hold in (1, 2):
        status, body = peer(hold_time=hold)
        assert status == 400 and "hold_time" in body["faultstring"], hold
    for hold in (0, 3):
        status, body = peer(hold_time=hold)
        assert status == 201 and body["bgp_peer"]["hold_time"] == hold, body
    for ttl in (0, 255):
        status, body = peer(ttl_hops=ttl)
        assert status == 400 and "ttl_hops" in body["faultstring"], ttl
    status, body = peer(remote_as=4294967295, ttl_hops=254, auth_type="md5", md5_password="s3cret!")
    assert status == 201, body
    created = body["bgp_peer"]
    assert created["remote_as"] == 4294967295 and created["md5_password_set"] is True
    for text in (json.dumps(body), json.dumps(api.get(f"/v2/octavia/bgp_peers/{created['id']}")[1]),
                 json.dumps(api.get("/v2/octavia/bgp_peers")[1])):
        assert "s3cret!" not in text and '"md5_password"' not in text
    assert peer(auth_type="md5")[0] == 400  # a password is required
    assert peer(peer_ip="not-an-ip")[0] == 400
    assert peer(remote_as=0)[0] == 400
    status, body = api.put(f"/v2/octavia/bgp_peers/{created['id']}", {"bgp_peer": {"hold_time": 9}})
    assert status == 200 and (body["bgp_peer"]["hold_time"], body["bgp_peer"]["keepalive_interval"]) == (9, 3)
    assert api.put(f"/v2/octavia/bgp_peers/{created['id']}", {"bgp_peer": {"keepalive_interval": 9}})[0] == 400
    assert api.delete(f"/v2/octavia/bgp_peers/{created['id']}")[0] == 204
    assert api.get(f"/v2/octavia/bgp_peers/{created['id']}")[0] == 404
    assert api.delete(f"/v2/octavia/bgp_speakers/{speaker['id']}")[0] == 204


def test_amphora_operations(api: Api) -> None:
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet"}})
    lb_id = body["loadbalancer"]["id"]
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    [amphora] = _amphorae(api, lb_id)
    status, body = api.get(f"/v2/octavia/amphorae/{amphora['id']}")
    assert status == 200 and body["amphora"]["loadbalancer_id"] == lb_id
    assert set(body["amphora"]) >= {"id", "compute_id", "lb_network_ip", "vrrp_ip", "ha_ip", "role", "status",
                                    "cert_expiration", "cached_zone", "image_id", "created_at"}
    status, body = api.get(f"/v2/octavia/amphorae/{amphora['id']}?fields=id&fields=status")
    assert set(body["amphora"]) == {"id", "status"}
    status, body = api.get(f"/v2/octavia/amphorae/{amphora['id']}/stats")
    assert status == 200 and body["amphora_stats"] == []
    assert api.put(f"/v2/octavia/amphorae/{amphora['id']}/config", None)[0] == 202
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    assert api.put(f"/v2/octavia/amphorae/{amphora['id']}/failover", None)[0] == 202
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    replaced = wait_for(lambda: [a for a in _amphorae(api, lb_id) if a["id"] != amphora["id"]])
    assert len(replaced) == 1
    assert api.put(f"{LB}/{lb_id}/failover", None)[0] == 202
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    assert api.get("/v2/octavia/amphorae/nope")[0] == 404
    assert api.put("/v2/octavia/amphorae/nope/failover", None)[0] == 404
