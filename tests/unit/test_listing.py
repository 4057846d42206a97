"""List options over real HTTP: keyset pages and their links, sort keys, fields, attribute and tags filters."""

from __future__ import annotations

from typing import Any

import pytest

from cohort.api.errors import InvalidInput
from cohort.api.listing import parse_options
from tests.support import Api

LB = "/v2/lbaas/loadbalancers"


def make_lbs(api: Api) -> list[dict[str, Any]]:
    specs = [
        ("alpha", ["red"], True), ("bravo", ["red", "blue"], False), ("charlie", ["blue"], True),
        ("delta", [], True), ("echo", ["red"], False), ("alpha", ["green"], True), ("golf", ["red", "green"], True),
    ]
    made = []
    for name, tags, enabled in specs:
        status, body = api.post(LB, {"loadbalancer": {
            "name": name, "vip_subnet_id": "public-subnet", "tags": tags, "admin_state_up": enabled,
            "description": "even" if len(made) % 2 == 0 else "odd"}})
        assert status == 201, body
        made.append(body["loadbalancer"])
    return made


def walk(api: Api, path: str, key: str, rel: str = "next") -> list[list[str]]:
    """Follow ``rel`` links from ``path``; the ids of every page."""
    pages = []
    url: str | None = path
    while url is not None:
        status, body = api.get(url)
        assert status == 200, body
        pages.append([row["id"] for row in body[key]])
        url = next((link["href"] for link in body[f"{key}_links"] if link["rel"] == rel), None)
        assert len(pages) < 20
    return pages


def ids(api: Api, path: str, key: str) -> list[str]:
    status, body = api.get(path)
    assert status == 200, body
    return [row["id"] for row in body[key]]


def test_parse_options() -> None:
    options = parse_options([("limit", "5"), ("sort", "name:desc,created_at"), ("fields", "id,name"),
                             ("fields", "tags"), ("tags", "a,b"), ("not-tags-any", "c"), ("name", "x")], 100)
    assert options.limit == 5 and options.sort == [("name", "desc"), ("created_at", "asc")]
    assert options.fields == ["id", "name", "tags"] and options.tags_all == ["a", "b"]
    assert options.not_tags_any == ["c"] and options.filters == {"name": "x"}
    assert parse_options([], 50).limit == 50  # one page of at most the maximum, as Octavia
    assert parse_options([("limit", "0")], 50).limit is None  # 0: everything
    assert parse_options([("limit", "500")], 50).limit == 50
    legacy = parse_options([("sort_key", "name"), ("sort_key", "id"), ("sort_dir", "desc")], 10)
    assert legacy.sort == [("name", "desc"), ("id", "asc")]
    for bad in ([("limit", "x")], [("limit", "-1")], [("sort", "name:sideways")]):
        with pytest.raises(InvalidInput):
            parse_options(bad, 10)


def test_pages_links_and_sort(api: Api) -> None:
    made = make_lbs(api)
    by_name = sorted(made, key=lambda lb: (lb["name"], lb["id"]))
    expected = [lb["id"] for lb in by_name]
    assert ids(api, f"{LB}?sort=name:asc,id:asc", "loadbalancers") == expected
    assert ids(api, f"{LB}?sort=name:desc,id:desc", "loadbalancers") == expected[::-1]
    assert ids(api, f"{LB}?sort_key=name&sort_key=id&sort_dir=asc&sort_dir=asc", "loadbalancers") == expected

    # Forward through pages of 3, then back from the last page with the previous links.
    pages = walk(api, f"{LB}?limit=3&sort=name:asc", "loadbalancers")
    assert [len(page) for page in pages] == [3, 3, 1]
    assert sum(pages, []) == expected
    status, body = api.get(f"{LB}?limit=3&sort=name:asc&marker={pages[1][-1]}")
    assert [link["rel"] for link in body["loadbalancers_links"]] == ["previous"]
    back = walk(api, next(link["href"] for link in body["loadbalancers_links"]), "loadbalancers", "previous")
    assert back == [pages[1], pages[0]]
    status, body = api.get(f"{LB}?limit=3&sort=name:asc")
    assert [link["rel"] for link in body["loadbalancers_links"]] == ["next"]

    # Two keys in opposite directions: description descending, then name ascending.
    two_keys = sorted(made, key=lambda lb: lb["name"])
    two_keys = sorted(two_keys, key=lambda lb: lb["description"], reverse=True)
    paged = sum(walk(api, f"{LB}?limit=2&sort=description:desc,name:asc", "loadbalancers"), [])
    assert [lb["name"] for lb in two_keys] == [
        next(lb["name"] for lb in made if lb["id"] == ident) for ident in paged]

    # Filters and tag filters stay in the links.
    pages = walk(api, f"{LB}?limit=1&tags=red&admin_state_up=true&fields=id", "loadbalancers")
    assert sorted(sum(pages, [])) == sorted(lb["id"] for lb in made if "red" in lb["tags"] and lb["admin_state_up"])
    assert len(pages) == 2

    assert api.get(f"{LB}?marker=nope")[0] == 404
    assert api.get(f"{LB}?sort=tags")[0] == 400
    assert api.get(f"{LB}?sort=bogus:asc")[0] == 400
    assert api.get(f"{LB}?colour=red")[0] == 400


def test_fields_and_filters(api: Api) -> None:
    made = make_lbs(api)
    status, body = api.get(f"{LB}?fields=id&fields=name,tags")
    assert {tuple(sorted(row)) for row in body["loadbalancers"]} == {("id", "name", "tags")}
    status, body = api.get(f"{LB}/{made[0]['id']}?fields=name")
    assert body == {"loadbalancer": {"name": "alpha"}}

    def names(query: str) -> list[str]:
        status, body = api.get(f"{LB}?{query}&sort=name,id")
        assert status == 200, body
        return [row["name"] for row in body["loadbalancers"]]

    assert names("name=alpha") == ["alpha", "alpha"]
    assert names("admin_state_up=false") == ["bravo", "echo"]
    assert names("admin_state_up=True&description=odd") == ["alpha", "delta"]
    assert names("tags=red") == ["alpha", "bravo", "echo", "golf"]
    assert names("tags=red,blue") == ["bravo"]
    assert names("tags=red&tags=green") == ["golf"]
    assert names("tags-any=blue,green") == ["alpha", "bravo", "charlie", "golf"]
    assert names("not-tags=red") == ["alpha", "charlie", "delta"]
    assert names("not-tags=red,green") == ["alpha", "alpha", "bravo", "charlie", "delta", "echo"]
    assert names("not-tags-any=red,blue") == ["alpha", "delta"]
    assert names("tags=red&not-tags-any=blue&admin_state_up=true") == ["alpha", "golf"]
    assert names("vip_subnet_id=" + made[0]["vip_subnet_id"]) == sorted(lb["name"] for lb in made)


def test_child_collections(api: Api) -> None:
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "listeners": [
        {"protocol": "HTTP", "protocol_port": 80, "name": "web", "tags": ["front"]},
        {"protocol": "TCP", "protocol_port": 22, "name": "ssh", "admin_state_up": False},
        {"protocol": "TCP", "protocol_port": 443, "name": "tls", "tags": ["front"], "default_pool": {
            "protocol": "TCP", "lb_algorithm": "ROUND_ROBIN", "name": "pool", "tags": ["p"], "members": [
                {"address": f"192.0.2.{n}", "protocol_port": 443, "weight": n,
                 **({"monitor_port": 9000 - n} if n % 2 else {}), "tags": ["odd" if n % 2 else "even"]}
                for n in range(10, 17)]}}]}})
    assert status == 201, body
    lb_id = body["loadbalancer"]["id"]

    def names(path: str) -> list[str]:
        status, body = api.get(path)
        assert status == 200, body
        key = path.split("?")[0].rsplit("/", 1)[-1]
        return [row["name"] for row in body[key]]

    listeners = "/v2/lbaas/listeners"
    assert names(f"{listeners}?loadbalancer_id={lb_id}&sort=protocol_port:desc") == ["tls", "web", "ssh"]
    assert names(f"{listeners}?protocol_port=22") == ["ssh"]
    assert names(f"{listeners}?protocol=TCP&admin_state_up=true") == ["tls"]
    assert names(f"{listeners}?tags=front&sort=name:desc") == ["web", "tls"]
    assert api.get(f"{listeners}?protocol_port=http")[0] == 400
    pools = "/v2/lbaas/pools"
    assert names(f"{pools}?loadbalancer_id={lb_id}&tags=p") == ["pool"]
    pool_id = api.get(pools)[1]["pools"][0]["id"]

    members = f"/v2/lbaas/pools/{pool_id}/members"
    status, body = api.get(f"{members}?weight=12")
    assert [row["address"] for row in body["members"]] == ["192.0.2.12"]
    status, body = api.get(f"{members}?tags=odd&sort=weight:desc&fields=weight")
    assert body["members"] == [{"weight": 15}, {"weight": 13}, {"weight": 11}]
    # Keyset pages over a column with NULLs: NULLs sort last ascending (first descending), on any database.
    everything = api.get(f"{members}?sort=monitor_port:asc,weight:asc&limit=0")[1]["members"]
    ports = [row["monitor_port"] for row in everything]
    assert ports == [8985, 8987, 8989, None, None, None, None]
    expected = [row["id"] for row in everything]
    forward = walk(api, f"{members}?sort=monitor_port:asc,weight:asc&limit=2", "members")
    assert sum(forward, []) == expected
    backward = walk(api, f"{members}?sort=monitor_port:desc,weight:desc&limit=3", "members")
    assert sum(backward, []) == expected[::-1]
    status, body = api.get(f"{members}?sort=monitor_port:asc,weight:asc&limit=2&marker={expected[4]}"
                           "&page_reverse=true")
    assert [row["id"] for row in body["members"]] == expected[2:4]
