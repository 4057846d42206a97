"""The tenant LBaaS API over real HTTP with noop drivers: lifecycle, wire format and bad input."""

from __future__ import annotations

import threading

from tests.support import Api, wait_for

LB = "/v2/lbaas/loadbalancers"


def make_lb(api: Api, **extra: object) -> dict[str, object]:
    status, body = api.post(LB, {"loadbalancer": {"name": "lb1", "vip_subnet_id": "public-subnet", **extra}})
    assert status == 201, body
    return dict(body["loadbalancer"])


def active_lb(api: Api, **extra: object) -> dict[str, object]:
    lb = make_lb(api, **extra)
    return api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")


def test_versions_discovery(api: Api) -> None:
    status, body = api.get("/")
    assert status == 200
    assert body["versions"][-1]["status"] == "CURRENT"
    assert body["versions"][0]["id"] == "v2.0"
    for path in ("/v2", "/v2.0"):
        status, body = api.get(path)
        assert status == 200 and body["version"]["id"] == "v2.0"


def test_load_balancer_lifecycle(api: Api) -> None:
    lb = make_lb(api, description="first", tags=["blue"])
    assert lb["provisioning_status"] == "PENDING_CREATE"
    assert lb["operating_status"] == "OFFLINE"
    assert lb["provider"] == "amphora"
    assert lb["vip_subnet_id"] != "public-subnet"  # resolved to the subnet's id
    lb = api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    assert lb["provisioning_status"] == "ACTIVE"
    assert lb["vip_address"].startswith("203.0.113.")
    # Nothing reports with noop drivers, so the status stays OFFLINE: reported, never assumed.
    assert lb["operating_status"] == "OFFLINE"
    status, body = api.put(f"{LB}/{lb['id']}", {"loadbalancer": {"name": "renamed"}})
    assert status == 200 and body["loadbalancer"]["name"] == "renamed"
    assert body["loadbalancer"]["provisioning_status"] == "PENDING_UPDATE"
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    status, _ = api.delete(f"{LB}/{lb['id']}")
    assert status == 204
    wait_for(lambda: api.get(f"{LB}/{lb['id']}")[0] == 404)


def test_full_tree_and_status(api: Api) -> None:
    lb = active_lb(api)
    lb_id = lb["id"]
    status, body = api.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb_id, "protocol": "HTTP", "protocol_port": 80, "name": "web"}})
    assert status == 201, body
    listener = body["listener"]
    assert listener["loadbalancers"] == [{"id": lb_id}]
    # The reconciler may already have finished; the change is never lost either way.
    assert api.get(f"{LB}/{lb_id}")[1]["loadbalancer"]["provisioning_status"] in ("PENDING_UPDATE", "ACTIVE")
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    status, body = api.post("/v2/lbaas/pools", {"pool": {
        "listener_id": listener["id"], "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
        "session_persistence": {"type": "HTTP_COOKIE"}}})
    assert status == 201, body
    pool = body["pool"]
    assert pool["listeners"] == [{"id": listener["id"]}]
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    status, body = api.post(f"/v2/lbaas/pools/{pool['id']}/members", {"member": {
        "address": "192.0.2.10", "protocol_port": 80, "subnet_id": "private-subnet"}})
    assert status == 201, body
    member = body["member"]
    assert member["operating_status"] == "NO_MONITOR" and member["weight"] == 1
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {
        "pool_id": pool["id"], "type": "HTTP", "delay": 2, "timeout": 1, "max_retries": 3}})
    assert status == 201, body
    assert body["healthmonitor"]["url_path"] == "/" and body["healthmonitor"]["expected_codes"] == "200"
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    status, tree = api.get(f"{LB}/{lb_id}/status")
    assert status == 200
    statuses = tree["statuses"]["loadbalancer"]
    assert statuses["listeners"][0]["pools"][0]["members"][0]["address"] == "192.0.2.10"
    assert statuses["listeners"][0]["pools"][0]["health_monitor"]["type"] == "HTTP"
    assert all(x["provisioning_status"] == "ACTIVE" for x in statuses["listeners"])
    status, stats = api.get(f"{LB}/{lb_id}/stats")
    assert status == 200 and set(stats["stats"]) == {
        "bytes_in", "bytes_out", "active_connections", "total_connections", "request_errors"}
    status, _ = api.delete(f"{LB}/{lb_id}")
    assert status == 400  # has children
    status, _ = api.delete(f"{LB}/{lb_id}?cascade=true")
    assert status == 204
    wait_for(lambda: api.get(f"{LB}/{lb_id}")[0] == 404)
    assert api.get(f"/v2/lbaas/pools/{pool['id']}")[0] == 404


def test_single_call_tree_create(api: Api) -> None:
    status, body = api.post(LB, {"loadbalancer": {
        "name": "tree", "vip_subnet_id": "public-subnet",
        "listeners": [{"protocol": "HTTP", "protocol_port": 8080, "default_pool": {
            "protocol": "HTTP", "lb_algorithm": "LEAST_CONNECTIONS",
            "healthmonitor": {"type": "TCP", "delay": 3, "timeout": 2, "max_retries": 2},
            "members": [{"address": "192.0.2.21", "protocol_port": 80},
                        {"address": "192.0.2.22", "protocol_port": 80}]},
            "l7policies": [{"action": "REJECT", "rules": [{"type": "PATH", "compare_type": "STARTS_WITH",
                                                          "value": "/admin"}]}]}]}})
    assert status == 201, body
    lb = body["loadbalancer"]
    assert len(lb["listeners"]) == 1 and len(lb["pools"]) == 1
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    _, tree = api.get(f"{LB}/{lb['id']}/status")
    members = tree["statuses"]["loadbalancer"]["listeners"][0]["pools"][0]["members"]
    assert sorted(m["address"] for m in members) == ["192.0.2.21", "192.0.2.22"]


def test_bad_input_gets_octavia_faults(api: Api) -> None:
    status, body = api.call("POST", LB, raw=b"{not json")
    assert status == 400 and body["faultcode"] == "Client" and "JSON" in body["faultstring"]
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "bogus": 1}})
    assert status == 400 and "bogus" in body["faultstring"]
    status, body = api.post(LB, {"loadbalancer": {"name": "x"}})
    assert status == 400 and "vip_subnet_id" in body["faultstring"]
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "nope"}})
    assert status == 400 and "nope" in body["faultstring"]
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "vip_address": "10.0.0.1"}})
    assert status == 400 and "10.0.0.1" in body["faultstring"]
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "admin_state_up": "maybe"}})
    assert status == 400 and "admin_state_up" in body["faultstring"]
    status, body = api.get(f"{LB}/00000000-0000-0000-0000-000000000000")
    assert status == 404 and body["faultcode"] == "Client"
    lb = active_lb(api)
    status, body = api.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "HTTP", "protocol_port": 70000}})
    assert status == 400 and "protocol_port" in body["faultstring"]
    status, body = api.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "SCTP", "protocol_port": 3868,
        "insert_headers": {"X-Forwarded-For": "true"}}})
    assert status == 400 and "SCTP" in body["faultstring"]
    status, body = api.put(f"{LB}/{lb['id']}", {"loadbalancer": {"vip_address": "203.0.113.9"}})
    assert status == 400 and "vip_address" in body["faultstring"]  # immutable
    status, body = api.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "TERMINATED_HTTPS", "protocol_port": 443}})
    assert status == 400 and "certificate" in body["faultstring"]
    # Nothing above changed the load balancer.
    assert api.get(f"{LB}/{lb['id']}")[1]["loadbalancer"]["provisioning_status"] == "ACTIVE"
    assert api.get(f"/v2/lbaas/listeners?loadbalancer_id={lb['id']}")[1]["listeners"] == []


def test_pending_object_is_immutable(api: Api) -> None:
    lb = make_lb(api)
    status, body = api.put(f"{LB}/{lb['id']}", {"loadbalancer": {"name": "too-early"}})
    # Either the reconciler already finished (200) or the change is refused (409), never both lost.
    assert status in (200, 409)
    if status == 409:
        assert "immutable" in body["faultstring"]


def test_concurrent_changes_one_wins(api: Api) -> None:
    lb = active_lb(api)
    results: list[int] = []
    barrier = threading.Barrier(8)

    def change(index: int) -> None:
        barrier.wait()
        status, _ = api.post("/v2/lbaas/listeners", {"listener": {
            "loadbalancer_id": lb["id"], "protocol": "TCP", "protocol_port": 1000 + index}})
        results.append(status)

    threads = [threading.Thread(target=change, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(results)) <= [201, 409]
    assert results.count(201) >= 1
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    listeners = api.get(f"/v2/lbaas/listeners?loadbalancer_id={lb['id']}")[1]["listeners"]
    assert len(listeners) == results.count(201)


def test_duplicates_are_conflicts(api: Api) -> None:
    lb = active_lb(api)
    body = {"listener": {"loadbalancer_id": lb["id"], "protocol": "HTTP", "protocol_port": 80}}
    assert api.post("/v2/lbaas/listeners", body)[0] == 201
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    status, fault = api.post("/v2/lbaas/listeners", body)
    assert status == 409 and "protocol_port" in fault["faultstring"]
    status, pool = api.post("/v2/lbaas/pools", {"pool": {"loadbalancer_id": lb["id"], "protocol": "HTTP",
                                                         "lb_algorithm": "ROUND_ROBIN"}})
    assert status == 201
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    member = {"member": {"address": "192.0.2.30", "protocol_port": 80}}
    assert api.post(f"/v2/lbaas/pools/{pool['pool']['id']}/members", member)[0] == 201
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    assert api.post(f"/v2/lbaas/pools/{pool['pool']['id']}/members", member)[0] == 409


def test_member_batch_update(api: Api) -> None:
    lb = active_lb(api)
    _, pool = api.post("/v2/lbaas/pools", {"pool": {"loadbalancer_id": lb["id"], "protocol": "TCP",
                                                    "lb_algorithm": "SOURCE_IP"}})
    pool_id = pool["pool"]["id"]
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    members = [{"address": f"192.0.2.{n}", "protocol_port": 80} for n in (41, 42)]
    status, _ = api.put(f"/v2/lbaas/pools/{pool_id}/members", {"members": members})
    assert status == 202
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    status, _ = api.put(f"/v2/lbaas/pools/{pool_id}/members", {"members": [
        {"address": "192.0.2.42", "protocol_port": 80, "weight": 5}, {"address": "192.0.2.43", "protocol_port": 80}]})
    assert status == 202
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    listed = api.get(f"/v2/lbaas/pools/{pool_id}/members")[1]["members"]
    assert {(m["address"], m["weight"]) for m in listed} == {("192.0.2.42", 5), ("192.0.2.43", 1)}


def test_list_options(api: Api) -> None:
    ids = []
    for index in range(5):
        lb = make_lb(api, name=f"lb-{index}", tags=["even" if index % 2 == 0 else "odd", "all"])
        ids.append(lb["id"])
    status, page = api.get(f"{LB}?limit=2")
    assert status == 200 and [lb["id"] for lb in page["loadbalancers"]] == ids[:2]
    next_link = next(link for link in page["loadbalancers_links"] if link["rel"] == "next")
    status, page2 = api.get(next_link["href"])
    assert [lb["id"] for lb in page2["loadbalancers"]] == ids[2:4]
    previous = next(link for link in page2["loadbalancers_links"] if link["rel"] == "previous")
    assert [lb["id"] for lb in api.get(previous["href"])[1]["loadbalancers"]] == ids[:2]
    status, desc = api.get(f"{LB}?sort=name:desc&fields=id&fields=name")
    assert [lb["name"] for lb in desc["loadbalancers"]] == [f"lb-{i}" for i in range(4, -1, -1)]
    assert set(desc["loadbalancers"][0]) == {"id", "name"}
    assert len(api.get(f"{LB}?tags=even")[1]["loadbalancers"]) == 3
    assert len(api.get(f"{LB}?tags=even,all")[1]["loadbalancers"]) == 3
    assert len(api.get(f"{LB}?tags-any=odd,nothing")[1]["loadbalancers"]) == 2
    assert len(api.get(f"{LB}?not-tags=even")[1]["loadbalancers"]) == 2
    assert len(api.get(f"{LB}?not-tags-any=odd")[1]["loadbalancers"]) == 3
    assert [lb["name"] for lb in api.get(f"{LB}?name=lb-3")[1]["loadbalancers"]] == ["lb-3"]
    status, fault = api.get(f"{LB}?sort=nonsense:asc")
    assert status == 400 and "nonsense" in fault["faultstring"]
    status, fault = api.get(f"{LB}?limit=abc")
    assert status == 400 and "limit" in fault["faultstring"]
    status, fault = api.get(f"{LB}?marker=00000000-0000-0000-0000-000000000000")
    assert status == 404


def test_l7_policies_and_rules(api: Api) -> None:
    lb = active_lb(api)
    _, listener = api.post("/v2/lbaas/listeners", {"listener": {"loadbalancer_id": lb["id"], "protocol": "HTTP",
                                                                "protocol_port": 80}})
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    listener_id = listener["listener"]["id"]
    status, fault = api.post("/v2/lbaas/l7policies", {"l7policy": {"listener_id": listener_id,
                                                                   "action": "REDIRECT_TO_URL"}})
    assert status == 400 and "redirect_url" in fault["faultstring"]
    status, body = api.post("/v2/lbaas/l7policies", {"l7policy": {
        "listener_id": listener_id, "action": "REDIRECT_TO_URL", "redirect_url": "https://example.org/"}})
    assert status == 201 and body["l7policy"]["redirect_http_code"] == 302
    first = body["l7policy"]["id"]
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    status, body = api.post("/v2/lbaas/l7policies", {"l7policy": {
        "listener_id": listener_id, "action": "REJECT", "position": 1}})
    assert status == 201
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    assert api.get(f"/v2/lbaas/l7policies/{first}")[1]["l7policy"]["position"] == 2
    rule = {"rule": {"type": "HEADER", "compare_type": "EQUAL_TO", "value": "x"}}
    status, fault = api.post(f"/v2/lbaas/l7policies/{first}/rules", rule)
    assert status == 400 and "key" in fault["faultstring"]
    rule["rule"]["key"] = "X-Test"
    status, body = api.post(f"/v2/lbaas/l7policies/{first}/rules", rule)
    assert status == 201, body
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    rule_id = body["rule"]["id"]
    status, body = api.put(f"/v2/lbaas/l7policies/{first}/rules/{rule_id}", {"rule": {"invert": True}})
    assert status == 200 and body["rule"]["invert"] is True
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    status, fault = api.post(f"/v2/lbaas/l7policies/{first}/rules", {"rule": {
        "type": "PATH", "compare_type": "REGEX", "value": "(unclosed"}})
    assert status == 400 and "regex" in fault["faultstring"]
