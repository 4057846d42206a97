"""Where Octavia's behaviour is the contract: each case was checked against upstream's API and noop drivers."""

from __future__ import annotations

import uuid

from cohort.drivers.network.noop import NoopNetworkDriver
from tests.support import Api, wait_for

LB = "/v2/lbaas/loadbalancers"


def _active(api: Api, path: str) -> dict[str, object]:
    key = path.split("/")[-2].rstrip("s") if path.count("/") > 3 else "loadbalancer"
    return dict(wait_for(lambda: (b := api.get(path)[1].get(key)) and b["provisioning_status"] == "ACTIVE" and b))


def _lb(api: Api, **body: object) -> dict[str, object]:
    status, created = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", **body}})
    assert status == 201, created
    return _active(api, f"{LB}/{created['loadbalancer']['id']}")


def test_any_subnet_and_network_uuid_and_the_vip_as_sent_on_noop(api: Api) -> None:
    subnet, network = str(uuid.uuid4()), str(uuid.uuid4())
    exploded = "2001:db8:33:33:33:33:33:33"
    lb = _lb(api, vip_subnet_id=subnet, vip_network_id=network, vip_address=exploded)
    assert (lb["vip_subnet_id"], lb["vip_network_id"], lb["vip_address"]) == (subnet, network, exploded)
    assert lb["operating_status"] == "OFFLINE"  # nothing ever reports health on noop drivers
    v4 = _lb(api, vip_subnet_id=str(uuid.uuid4()), vip_address="198.18.33.33")
    assert v4["vip_address"] == "198.18.33.33"
    only_network = _lb(api, vip_subnet_id=None, vip_network_id=network)
    assert only_network["vip_network_id"] == network and only_network["vip_address"]
    # Names are still the address plan's only, and a lab subnet's range still holds.
    assert api.post(LB, {"loadbalancer": {"vip_subnet_id": "no-such-subnet"}})[0] == 400
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "vip_address": "192.0.2.9"}})
    assert status == 400, body
    # Bad addresses are refused whatever the subnet: no zone id, no control character.
    for bad in ("fe80::1%eth0", "2001:db8::1\n", "198.51.100.300"):
        status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": subnet, "vip_address": bad}})
        assert status == 400 and body["faultcode"] == "Client", (bad, body)


def test_monitor_timeout_above_delay_many_tags_and_members_as_sent(api: Api) -> None:
    lb = _lb(api)
    status, body = api.post("/v2/lbaas/pools", {"pool": {"loadbalancer_id": lb["id"], "protocol": "HTTP",
                                                        "lb_algorithm": "ROUND_ROBIN"}})
    assert status == 201, body
    pool = body["pool"]["id"]
    _active(api, f"{LB}/{lb['id']}")
    members = f"/v2/lbaas/pools/{pool}/members"
    status, body = api.post(members, {"member": {"address": "2001:db8:0:0:0:0:0:1", "protocol_port": 80,
                                                 "tags": [f"t{i}" for i in range(200)]}})
    assert status == 201 and body["member"]["address"] == "2001:db8:0:0:0:0:0:1", body
    assert len(body["member"]["tags"]) == 200
    member = body["member"]["id"]
    _active(api, f"{LB}/{lb['id']}")
    # Disabled and re-enabled without a monitor: NO_MONITOR throughout, as Octavia's noop run shows.
    assert api.put(f"{members}/{member}", {"member": {"admin_state_up": False}})[0] == 200
    wait_for(lambda: api.get(f"{members}/{member}")[1]["member"]["provisioning_status"] == "ACTIVE")
    assert api.get(f"{members}/{member}")[1]["member"]["operating_status"] == "NO_MONITOR"
    assert api.put(f"{members}/{member}", {"member": {"admin_state_up": True}})[0] == 200
    wait_for(lambda: api.get(f"{members}/{member}")[1]["member"]["provisioning_status"] == "ACTIVE")
    assert api.get(f"{members}/{member}")[1]["member"]["operating_status"] == "NO_MONITOR"
    # A member disabled while a monitor watches the pool is OFFLINE; enabled again it waits for a report.
    status, body = api.post(members, {"member": {"address": "192.0.2.10", "protocol_port": 80,
                                                 "admin_state_up": False}})
    assert status == 201, body
    second = body["member"]["id"]
    _active(api, f"{LB}/{lb['id']}")
    assert api.get(f"{members}/{second}")[1]["member"]["operating_status"] == "NO_MONITOR"
    # Octavia's cookbook monitor: a timeout longer than the delay.
    status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {
        "pool_id": pool, "type": "HTTP", "delay": 5, "timeout": 10, "max_retries": 4}})
    assert status == 201, body
    assert (body["healthmonitor"]["delay"], body["healthmonitor"]["timeout"]) == (5, 10)
    _active(api, f"{LB}/{lb['id']}")
    assert api.get(f"{members}/{second}")[1]["member"]["operating_status"] == "OFFLINE"
    status, body = api.put(f"/v2/lbaas/healthmonitors/{body['healthmonitor']['id']}",
                           {"healthmonitor": {"timeout": 30}})
    assert status == 200 and body["healthmonitor"]["timeout"] == 30, body


def test_amphora_ids_are_uuids_and_providers_read_as_octavia(api: Api) -> None:
    lb = _lb(api)
    status, body = api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb['id']}")
    assert status == 200 and body["amphorae"], body
    for amp in body["amphorae"]:
        for key in ("compute_id", "vrrp_port_id", "ha_port_id"):
            assert str(uuid.UUID(amp[key])) == amp[key], (key, amp)
        assert amp["compute_name"].startswith("cohort-")  # the lab's own name stays visible
    providers = {p["name"]: p["description"] for p in api.get("/v2/lbaas/providers")[1]["providers"]}
    assert providers == {"amphora": "The Octavia Amphora driver.",
                         "octavia": "Deprecated alias of the Octavia Amphora driver."}
    caps = {c["name"]: c["description"] for c in
            api.get("/v2/lbaas/providers/amphora/flavor_capabilities")[1]["flavor_capabilities"]}
    assert caps["loadbalancer_topology"] == ("The load balancer topology. One of: SINGLE - One amphora per load "
                                             "balancer. ACTIVE_STANDBY - Two amphora per load balancer.")
    assert "ACTIVE_ACTIVE" in caps["amp_cluster_size"]
    zones = {c["name"] for c in api.get("/v2/lbaas/providers/amphora/availability_zone_capabilities")[1][
        "availability_zone_capabilities"]}
    assert {"compute_zone", "volume_zone", "management_network", "valid_vip_networks"} <= zones


def test_noop_network_stand_ins() -> None:
    net = NoopNetworkDriver()
    subnet_id, network_id = str(uuid.uuid4()), str(uuid.uuid4())
    subnet = net.get_subnet(subnet_id)
    assert subnet is not None and subnet.any_address and subnet.id == subnet_id
    assert net.get_subnet(subnet_id) == subnet  # the same in every process
    assert net.get_subnet("not-a-uuid") is None
    on_network = net.subnets_on_network(network_id)
    assert len(on_network) == 1 and on_network[0].network_id == network_id and on_network[0].any_address
    public = net.get_subnet("public-subnet")
    assert public is not None and not public.any_address
    assert net.subnets_on_network(public.network_id) == [public]
    assert net.allocate_vip("a", subnet_id, "2001:db8::5").address == "2001:db8::5"
    assert net.allocate_vip("b", subnet_id, None).address.startswith("198.51.100.")
    port = net.plug_port("cohort-a-00000001", subnet_id, "p1")
    assert port.subnet_id == subnet_id and port.mac_address.startswith("02:00:")


def test_capability_lists_take_fields_and_filters(api: Api) -> None:
    path = "/v2/lbaas/providers/amphora/availability_zone_capabilities?fields=name&name=compute_zone"
    assert api.get(path)[1]["availability_zone_capabilities"] == [{"name": "compute_zone"}]
    path = "/v2/lbaas/providers/amphora/flavor_capabilities?fields=description&name=amp_image_tag"
    assert api.get(path)[1]["flavor_capabilities"] == [{"description": "The amphora image tag."}]


def test_enabled_monitors_and_l7_objects_are_online_once_applied(api: Api) -> None:
    lb = _lb(api)
    status, body = api.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "HTTP", "protocol_port": 81, "allowed_cidrs": ["2001:db8::/64"]}})
    assert status == 400 and "IP version" in body["faultstring"], body  # the VIP is IPv4
    status, body = api.post("/v2/lbaas/listeners", {"listener": {"loadbalancer_id": lb["id"], "protocol": "HTTP",
                                                                "protocol_port": 80}})
    assert status == 201, body
    listener = body["listener"]["id"]
    _active(api, f"{LB}/{lb['id']}")
    status, body = api.post("/v2/lbaas/pools", {"pool": {"listener_id": listener, "protocol": "HTTP",
                                                        "lb_algorithm": "ROUND_ROBIN"}})
    pool = body["pool"]["id"]
    _active(api, f"{LB}/{lb['id']}")
    status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {
        "pool_id": pool, "type": "TCP", "delay": 2, "timeout": 1, "max_retries": 2}})
    monitor = body["healthmonitor"]["id"]
    _active(api, f"{LB}/{lb['id']}")
    status, body = api.post("/v2/lbaas/l7policies", {"l7policy": {"listener_id": listener, "action": "REJECT"}})
    policy = body["l7policy"]["id"]
    _active(api, f"{LB}/{lb['id']}")
    status, body = api.post(f"/v2/lbaas/l7policies/{policy}/rules", {"rule": {
        "type": "PATH", "compare_type": "STARTS_WITH", "value": "/x", "admin_state_up": False}})
    rule = body["rule"]["id"]
    _active(api, f"{LB}/{lb['id']}")
    assert api.get(f"/v2/lbaas/healthmonitors/{monitor}")[1]["healthmonitor"]["operating_status"] == "ONLINE"
    assert api.get(f"/v2/lbaas/l7policies/{policy}")[1]["l7policy"]["operating_status"] == "ONLINE"
    assert api.get(f"/v2/lbaas/l7policies/{policy}/rules/{rule}")[1]["rule"]["operating_status"] == "OFFLINE"
    # Measured statuses are never guessed on noop drivers.
    assert api.get(f"/v2/lbaas/listeners/{listener}")[1]["listener"]["operating_status"] == "OFFLINE"
    assert api.get(f"/v2/lbaas/pools/{pool}")[1]["pool"]["operating_status"] == "OFFLINE"


def test_a_new_session_persistence_replaces_the_old_whole(api: Api) -> None:
    lb = _lb(api)
    status, body = api.post("/v2/lbaas/pools", {"pool": {
        "loadbalancer_id": lb["id"], "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
        "session_persistence": {"type": "APP_COOKIE", "cookie_name": "sid"}}})
    assert status == 201, body
    pool = body["pool"]["id"]
    _active(api, f"{LB}/{lb['id']}")
    status, body = api.put(f"/v2/lbaas/pools/{pool}", {"pool": {"session_persistence": {"type": "HTTP_COOKIE"}}})
    assert status == 200, body
    _active(api, f"{LB}/{lb['id']}")
    persistence = api.get(f"/v2/lbaas/pools/{pool}")[1]["pool"]["session_persistence"]
    assert persistence["type"] == "HTTP_COOKIE" and persistence.get("cookie_name") is None, persistence
