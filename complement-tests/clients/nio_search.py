"""Two matrix-nio clients: alice and bob share a room; bob sets a display name (nio's
set_displayname), alice finds him in the user directory by a fragment of it; bob sends
messages (nio's room_send), alice searches them (POST /search) and pages to the end. matrix-nio
has no methods of its own for the user directory or search, so those requests go through
the client's own authenticated transport (AsyncClient.send). Prints results as JSON.

Usage: nio_search.py BASE_URL PASSWORD   (users alice and bob exist with that password)
"""
import asyncio
import json
import sys

from nio import JoinResponse, ProfileSetDisplayNameResponse, RoomCreateResponse, RoomSendResponse

from nio_common import login, sync_until


async def post(client, path, body):
    res = await client.send(
        "POST",
        path,
        json.dumps(body),
        headers={"Authorization": f"Bearer {client.access_token}",
                 "Content-Type": "application/json"},
    )
    assert res.status == 200, f"{path}: {res.status} {await res.text()}"
    return await res.json()


async def main(base, password):
    alice = await login(base, "alice", password)
    bob = await login(base, "bob", password)
    out = {}
    try:
        for c in (alice, bob):
            await c.sync(timeout=0)
        room = await alice.room_create(name="Search", invite=[bob.user_id])
        assert isinstance(room, RoomCreateResponse), f"create: {room}"
        room_id = room.room_id
        await sync_until(bob, lambda r: room_id in r.rooms.invite)
        assert isinstance(await bob.join(room_id), JoinResponse)
        res = await bob.set_displayname("Bartholomew Ñandú")
        assert isinstance(res, ProfileSetDisplayNameResponse), f"displayname: {res}"

        found = await post(alice, "/_matrix/client/v3/user_directory/search",
                           {"search_term": "barth nandu", "limit": 5})
        out["directory"] = [(u["user_id"], u.get("display_name")) for u in found["results"]]

        for i in range(5):
            sent = await bob.room_send(room_id, "m.room.message",
                                       {"msgtype": "m.text", "body": f"the quokka number {i}"})
            assert isinstance(sent, RoomSendResponse), f"send: {sent}"
        await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "unrelated"})

        seen = []
        next_batch = None
        for _ in range(10):
            path = "/_matrix/client/v3/search"
            if next_batch:
                path += f"?next_batch={next_batch}"
            res = await post(alice, path, {"search_categories": {"room_events": {
                "search_term": "Quokka", "order_by": "recent", "filter": {"limit": 2},
                "event_context": {"before_limit": 1, "after_limit": 0, "include_profile": True},
            }}})
            events = res["search_categories"]["room_events"]
            seen += [r["result"]["content"]["body"] for r in events["results"]]
            out["profile"] = events["results"][0]["context"]["profile_info"][bob.user_id]
            next_batch = events.get("next_batch")
            if not next_batch:
                break
        out["messages"] = seen
    finally:
        for c in (alice, bob):
            await c.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
