"""L3_BGP through the API on noop drivers: the session profile reaches the amphorae, changes to it
are re-applied, in-use profiles are kept, and nothing pretends to be announced."""

from __future__ import annotations

import json
from typing import Any

from cohort.service import Cohort
from tests.support import Api, wait_for

LB = "/v2/lbaas/loadbalancers"


def _l3(api: Api, size: int = 2) -> tuple[str, str, str]:
    speaker = api.post("/v2/octavia/bgp_speakers", {"bgp_speaker": {"local_as": 64600}})[1]["bgp_speaker"]
    status, peer = api.post("/v2/octavia/bgp_peers", {"bgp_peer": {
        "bgp_speaker_id": speaker["id"], "peer_ip": "203.0.113.1", "remote_as": 64512, "hold_time": 9,
        "auth_type": "md5", "md5_password": "pw-1"}})
    assert status == 201, peer
    profile = api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
        "name": "l3", "provider_name": "amphora", "flavor_data": json.dumps({
            "loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": size, "distributor_type": "L3_BGP",
            "bgp_speaker_id": speaker["id"]})}})[1]["flavorprofile"]
    flavor = api.post("/v2/lbaas/flavors", {"flavor": {"name": "l3", "flavor_profile_id": profile["id"]}})[1]
    status, lb = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "flavor_id": flavor["flavor"]["id"]}})
    assert status == 201, lb
    return speaker["id"], peer["bgp_peer"]["id"], lb["loadbalancer"]["id"]


def test_l3_cluster_gets_its_speaker_and_no_distributor(server: tuple[Cohort, str], api: Api) -> None:
    cohort, _base = server
    speaker_id, peer_id, lb_id = _l3(api)
    lb = api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    assert lb["provisioning_status"] == "ACTIVE", lb
    driver: Any = cohort.drivers.amphora
    amphorae = api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]
    assert {a["id"] for a in amphorae} == set(driver.speakers)
    speaker = next(iter(driver.speakers.values()))
    assert speaker.local_as == 64600 and speaker.peers[0].password == "pw-1"  # decrypted only for the agent
    assert all(lb["vip_address"] in driver.announced[a["id"]] for a in amphorae)
    assert api.get("/v2/octavia/distributors")[1]["distributors"] == []
    # Nothing speaks BGP on noop drivers: the cluster is never reported ONLINE.
    assert api.get(f"{LB}/{lb_id}")[1]["loadbalancer"]["operating_status"] != "ONLINE"

    # A change to the peer is applied to every amphora of every load balancer using it.
    status, body = api.put(f"/v2/octavia/bgp_peers/{peer_id}", {"bgp_peer": {"hold_time": 30, "md5_password": "pw-2"}})
    assert status == 200, body
    assert api.get(f"{LB}/{lb_id}")[1]["loadbalancer"]["provisioning_status"] == "PENDING_UPDATE"
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    wait_for(lambda: all(s.peers[0].hold_time == 30 and s.peers[0].password == "pw-2"
                         for s in driver.speakers.values()))

    # In use: neither the speaker nor its peer can be deleted.
    status, body = api.delete(f"/v2/octavia/bgp_speakers/{speaker_id}")
    assert status == 409 and "in use" in body["faultstring"], body
    assert api.delete(f"/v2/octavia/bgp_peers/{peer_id}")[0] == 409
    assert api.delete(f"{LB}/{lb_id}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"{LB}/{lb_id}")[0] == 404)
    profiles = api.get("/v2/lbaas/flavorprofiles")[1]["flavorprofiles"]
    assert api.delete(f"/v2/octavia/bgp_speakers/{speaker_id}")[0] == 409  # still named by a flavor profile
    for flavor in api.get("/v2/lbaas/flavors")[1]["flavors"]:
        api.delete(f"/v2/lbaas/flavors/{flavor['id']}")
    for profile in profiles:
        api.delete(f"/v2/lbaas/flavorprofiles/{profile['id']}")
    assert api.delete(f"/v2/octavia/bgp_peers/{peer_id}")[0] == 204
    assert api.delete(f"/v2/octavia/bgp_speakers/{speaker_id}")[0] == 204


def test_l3_without_a_usable_speaker_is_a_400(api: Api) -> None:
    lonely = api.post("/v2/octavia/bgp_speakers", {"bgp_speaker": {"local_as": 64601}})[1]["bgp_speaker"]["id"]
    cases = ({}, {"bgp_speaker_id": "4a0a4ec2-0000-4000-8000-000000000000"}, {"bgp_speaker_id": lonely})
    for index, data in enumerate(cases):
        profile = api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
            "name": f"x{index}", "provider_name": "amphora", "flavor_data": json.dumps({
                "loadbalancer_topology": "ACTIVE_ACTIVE", "distributor_type": "L3_BGP", **data})}})[1]
        flavor = api.post("/v2/lbaas/flavors", {"flavor": {
            "name": f"x{index}", "flavor_profile_id": profile["flavorprofile"]["id"]}})[1]["flavor"]
        status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "flavor_id": flavor["id"]}})
        assert status == 400 and "bgp_speaker_id" in body["faultstring"], (data, body)
    assert api.get(LB)[1]["loadbalancers"] == []
