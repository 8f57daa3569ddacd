"""Policy zones limited to some clients, through the engine: each view gets its own answers, on
the slow path and the fast path, in CNAME chains, and across changes of policy or of a client's
view."""

from __future__ import annotations

import asyncio

import pytest

from ispd.dns.cache import VARIANT_SCOPES
from ispd.dns.localdata import LocalData
from ispd.dns.policy import Policy, compile_policy_zone
from ispd.dns.resolver import Resolution
from ispd.dns.wire import RCode, decode_message
from tests.dns.test_engine import CLIENT, OTHER_CLIENT, Env, addresses, make_env, query

FAMILY = VARIANT_SCOPES[0]
HEAD = "$TTL 300\n@ SOA localhost. root.localhost. 1 3600 600 86400 60\n@ NS localhost.\n"
# For the family only: www.other.example (a CNAME chain's end) redirected, alias.example.test
# gone. For everyone: nothing but the zone's own records.
FAMILY_ZONE = HEAD + "www.other.example A 10.9.9.9\nalias.example.test CNAME .\n"
EVERYONE_ZONE = HEAD + "court.example.test CNAME .\n"


@pytest.fixture
def viewed() -> Env:
    """CLIENT is on the family plan; OTHER_CLIENT is not."""
    env = make_env()
    policy = Policy([compile_policy_zone(EVERYONE_ZONE, "court.rpz"), compile_policy_zone(FAMILY_ZONE, "family.rpz")],
                    (0, FAMILY))
    env.engine.set_policy(policy.match)
    env.engine.client_view = lambda address: FAMILY if str(address) == CLIENT else 0
    return env


async def answer(env: Env, name: str, client: str) -> tuple[int, list[str], bool]:
    """(rcode, addresses, from the fast path) of ``client``'s question, as a transport asks."""
    env.engine.client_class(client)
    data = query(name)
    fast = env.fast(data, client)
    reply = await env.ask_message(data, client) if fast is None else decode_message(fast)
    return reply.rcode, addresses(reply), fast is not None


async def test_each_view_gets_its_own_answer_on_both_paths(viewed: Env) -> None:
    for first, second in ((OTHER_CLIENT, CLIENT), (CLIENT, OTHER_CLIENT)):
        viewed.answers.clear()
        viewed.engine.forget_local_answers()
        for _ in range(3):  # resolved (or from the policy), then kept for the fast path
            for client in (first, second):
                family = client == CLIENT
                rcode, found, _ = await answer(viewed, "www.other.example.", client)
                assert (rcode, found) == (RCode.NOERROR, ["10.9.9.9"] if family else ["192.0.2.10"])
                # A chain that leads to what the family zone redirects: cut there for the family.
                rcode, found, _ = await answer(viewed, "cross.example.test.", client)
                assert (rcode, found) == (RCode.NOERROR, ["10.9.9.9"] if family else ["192.0.2.10"])
                rcode, found, _ = await answer(viewed, "chain.example.test.", client)
                assert (rcode, found) == ((RCode.NXDOMAIN, []) if family else (RCode.NOERROR, ["192.0.2.80"]))
                assert (await answer(viewed, "court.example.test.", client))[0] == RCode.NXDOMAIN
    # Both kinds of answer came from the fast path in the end.
    assert (await answer(viewed, "www.other.example.", CLIENT))[2]
    assert (await answer(viewed, "www.other.example.", OTHER_CLIENT))[2]
    assert (await answer(viewed, "chain.example.test.", CLIENT))[2]


async def test_a_local_chain_into_a_limited_zone_is_policed_for_the_view(viewed: Env) -> None:
    viewed.engine.local_lookup = LocalData(static_records=["games.home.test. 300 CNAME www.other.example."]).answer
    for _ in range(2):
        assert (await answer(viewed, "games.home.test.", CLIENT))[1] == ["10.9.9.9"]
        assert (await answer(viewed, "games.home.test.", OTHER_CLIENT))[1] == ["192.0.2.10"]


async def test_a_client_whose_view_changes_gets_the_other_views_answers(viewed: Env) -> None:
    for _ in range(2):  # (a policy answer is kept for the fast path from the second time on)
        assert (await answer(viewed, "www.other.example.", CLIENT))[1] == ["10.9.9.9"]
    assert (await answer(viewed, "www.other.example.", CLIENT))[2]
    viewed.engine.client_view = lambda address: 0  # moved to another plan
    viewed.engine.forget_clients()
    assert (await answer(viewed, "www.other.example.", CLIENT))[1] == ["192.0.2.10"]
    assert (await answer(viewed, "www.other.example.", CLIENT))[1] == ["192.0.2.10"]


async def test_an_answer_made_across_a_change_of_policy_is_handed_out_not_kept(viewed: Env) -> None:
    """A resolution in flight when the policy changes (a reload) passed the old policy's check of
    its name: kept, the fast path would serve it under the new policy."""
    resolve, asked, release = viewed.resolver.resolve, asyncio.Event(), asyncio.Event()

    async def held(name: bytes, qtype: int, **kwargs: bool) -> Resolution:
        asked.set()
        await release.wait()
        return await resolve(name, qtype, **kwargs)

    viewed.resolver.resolve = held  # type: ignore[method-assign]
    before = asyncio.create_task(viewed.ask_message(query("www.example.test."), OTHER_CLIENT))
    await asked.wait()
    blocking = Policy([compile_policy_zone(HEAD + "www.example.test CNAME .\n", "court.rpz")])
    viewed.engine.set_policy(blocking.match)  # the reload...
    viewed.answers.clear()  # ...which empties the answer cache
    release.set()
    assert addresses(await before) == ["192.0.2.80"]  # (asked before the change)
    assert len(viewed.answers) == 0
    assert (await answer(viewed, "www.example.test.", OTHER_CLIENT))[0] == RCode.NXDOMAIN


async def test_a_change_of_policy_takes_the_answers_made_under_the_old_one_with_it(viewed: Env) -> None:
    """A reload gives the scopes their bits afresh (here the family's goes to a school zone that
    lets the chain be), and DNSService.reload empties the answer cache only once it has read the
    leases again: until then the fast path handed the school's clients the family's answers."""
    for _ in range(2):  # the family's chain, cut at www.other.example, kept for the fast path
        assert (await answer(viewed, "cross.example.test.", CLIENT))[1] == ["10.9.9.9"]
    assert (await answer(viewed, "cross.example.test.", CLIENT))[2]
    school = compile_policy_zone(HEAD, "school.rpz")
    family = compile_policy_zone(FAMILY_ZONE, "family.rpz")
    viewed.engine.set_policy(Policy([school, family], (FAMILY, VARIANT_SCOPES[1])).match)
    # CLIENT is in the school's scope now (the bit the family had), not the family's.
    assert viewed.fast(query("cross.example.test."), CLIENT) is None
    assert (await answer(viewed, "cross.example.test.", CLIENT))[1] == ["192.0.2.10"]
