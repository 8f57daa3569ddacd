"""Policy zones limited to some plans or networks: scopes, views, and the policy a view sees."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from pydantic import ValidationError

from ispd.dns.cache import VARIANT_SCOPES
from ispd.dns.config import DNSConfig, PolicyZoneConfig
from ispd.dns.policy import Policy, PolicyAction, compile_policy_zone
from ispd.dns.scopes import PolicyScopes, SubscriberPlans
from ispd.dns.wire import name_from_text
from ispd.store.models import Plan, Subscriber, SubscriberStatus

HEAD = "$TTL 300\n@ SOA localhost. root.localhost. 1 3600 600 86400 60\n@ NS localhost.\n"
FAMILY, SCHOOL = VARIANT_SCOPES[0], VARIANT_SCOPES[1]


def zone(name: str, **limits: object) -> PolicyZoneConfig:
    return PolicyZoneConfig.model_validate({"name": name, "file": f"/etc/ispd/{name}", **limits})


def test_zones_limited_alike_share_a_scope_and_zones_for_everyone_have_none() -> None:
    scopes = PolicyScopes([zone("court.rpz"), zone("family.rpz", plans=["family", "family-plus"]),
                           zone("school.rpz", clients=["198.18.64.0/24"]),
                           zone("family-feed.rpz", plans=["family-plus", "family"])])
    assert scopes.zone_bits == (0, FAMILY, SCHOOL, FAMILY)
    assert scopes and scopes.by_plan
    assert not PolicyScopes([zone("court.rpz")])
    assert not PolicyScopes([zone("school.rpz", clients=["198.18.64.0/24"])]).by_plan


def test_a_clients_view_comes_from_its_plan_and_its_address() -> None:
    scopes = PolicyScopes([zone("family.rpz", plans=["family"]),
                           zone("school.rpz", clients=["198.18.64.0/24", "2001:db8:64::/48"])])
    inside, outside = ip_address("198.18.64.9"), ip_address("198.18.65.9")
    assert scopes.view(outside, None) == 0
    assert scopes.view(outside, "basic") == 0
    assert scopes.view(outside, "family") == FAMILY
    assert scopes.view(inside, None) == SCHOOL
    assert scopes.view(inside, "family") == FAMILY | SCHOOL
    assert scopes.view(ip_address("2001:db8:64::1"), None) == SCHOOL  # (families never mix up)
    assert scopes.plan_view("family") == FAMILY and scopes.plan_view(None) == 0


def test_a_zone_limited_to_some_clients_is_not_there_for_the_others() -> None:
    court = compile_policy_zone(HEAD + "casino.example CNAME rpz-passthru.\ncourt.example CNAME .\n", "court.rpz")
    family = compile_policy_zone(HEAD + "casino.example CNAME .\n*.adult.example CNAME .\n", "family.rpz")
    school = compile_policy_zone(HEAD + "games.example CNAME *.\n", "school.rpz")
    policy = Policy([court, family, school], (0, FAMILY, SCHOOL))

    def action(name: str, view: int) -> PolicyAction | None:
        hit = policy.match(name_from_text(name), view)
        return None if hit is None else hit.action

    assert action("court.example.", 0) == action("court.example.", FAMILY) == PolicyAction.NXDOMAIN
    assert action("www.adult.example.", 0) is None
    assert action("www.adult.example.", FAMILY) == PolicyAction.NXDOMAIN
    assert action("www.adult.example.", SCHOOL) is None
    assert action("games.example.", SCHOOL) == action("games.example.", FAMILY | SCHOOL) == PolicyAction.NODATA
    assert action("games.example.", FAMILY) is None
    # The first zone that matches wins, for every view: the zone for everyone passes it through.
    assert action("casino.example.", FAMILY) == PolicyAction.PASSTHRU
    assert Policy([family]).match(name_from_text("casino.example.")) is not None  # no bits: for every client


def test_more_scopes_than_the_answer_cache_has_bits_for_is_refused() -> None:
    base = {"enabled": True, "listen": ["127.0.0.1:53"]}
    zones = [{"name": f"z{i}.rpz", "file": "/etc/ispd/z.rpz", "plans": [f"plan{i}"]} for i in range(4)]
    with pytest.raises(ValidationError, match="4 different sets of plans and clients limit policy zones; at most 3"):
        DNSConfig.model_validate({**base, "policy_zone": zones})
    # Zones limited alike count once.
    alike = [{**z, "plans": ["family"]} for z in zones]
    assert len(DNSConfig.model_validate({**base, "policy_zone": alike}).policy_zone) == 4
    with pytest.raises(ValidationError, match="plans"):
        DNSConfig.model_validate({**base, "policy_zone": [{**zones[0], "plans": [""]}]})
    with pytest.raises(ValidationError, match="clients"):
        DNSConfig.model_validate({**base, "policy_zone": [{**zones[0], "clients": ["198.18.0.0/33"]}]})


def test_subscriber_plans_follow_the_store_and_its_events() -> None:
    plans = SubscriberPlans()
    plans.load([Plan(1, "basic"), Plan(2, "family")],
               [Subscriber(10, "ann", SubscriberStatus.ACTIVE, plan_id=2),
                Subscriber(11, "bob", SubscriberStatus.ACTIVE),
                Subscriber(12, "cy", SubscriberStatus.SUSPENDED, plan_id=1)])
    assert [plans.plan_of(s) for s in (10, 11, 12, 13, None)] == ["family", None, "basic", None, None]
    plans.plan_added(3, "family-plus")
    plans.set_plan_id(11, 3)
    plans.set_plan_id(10, None)
    plans.set_plan_id(12, 99)  # a plan this process never heard of: as none
    plans.set_plan(14, "family")  # added with its plan
    assert [plans.plan_of(s) for s in (10, 11, 12, 14)] == [None, "family-plus", None, "family"]

