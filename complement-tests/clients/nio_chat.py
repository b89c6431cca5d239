"""Three matrix-nio clients chat through Axon: a DM and a group room, messages both ways
through /sync, and history paginated back to the room's creation. Prints results as JSON.

Usage: nio_chat.py BASE_URL PASSWORD   (users alice, bob and carol exist with that password)
"""
import asyncio
import json
import sys

from nio_common import login, sync_until, bodies
from nio import (JoinResponse, RoomCreateResponse, RoomMessagesResponse, RoomSendResponse)








async def main(base, password):
    alice = await login(base, "alice", password)
    bob = await login(base, "bob", password)
    carol = await login(base, "carol", password)
    out = {}
    try:
        for c in (alice, bob, carol):
            await c.sync(timeout=0)

        dm = await alice.room_create(is_direct=True, invite=[bob.user_id])
        assert isinstance(dm, RoomCreateResponse), f"create dm: {dm}"
        group = await alice.room_create(name="Group", invite=[bob.user_id, carol.user_id])
        assert isinstance(group, RoomCreateResponse), f"create group: {group}"

        await sync_until(bob, lambda r: dm.room_id in r.rooms.invite and group.room_id in r.rooms.invite)
        await sync_until(carol, lambda r: group.room_id in r.rooms.invite)
        for client, room in ((bob, dm.room_id), (bob, group.room_id), (carol, group.room_id)):
            res = await client.join(room)
            assert isinstance(res, JoinResponse), f"join: {res}"

        sent = await alice.room_send(dm.room_id, "m.room.message", {"msgtype": "m.text", "body": "hi bob"})
        assert isinstance(sent, RoomSendResponse), f"send: {sent}"
        await sync_until(bob, lambda r: "hi bob" in bodies(r, dm.room_id))
        await bob.room_send(dm.room_id, "m.room.message", {"msgtype": "m.text", "body": "hi alice"})
        await sync_until(alice, lambda r: "hi alice" in bodies(r, dm.room_id))
        out["dm"] = "ok"

        await carol.room_send(group.room_id, "m.room.message", {"msgtype": "m.text", "body": "hello group"})
        await sync_until(alice, lambda r: "hello group" in bodies(r, group.room_id))
        await sync_until(bob, lambda r: "hello group" in bodies(r, group.room_id))
        out["group"] = "ok"
        out["group_members"] = sorted(alice.rooms[group.room_id].users.keys())

        # Paginate the group's history back to its creation.
        token = alice.next_batch
        types = []
        for _ in range(50):
            res = await alice.room_messages(group.room_id, start=token, limit=3)
            assert isinstance(res, RoomMessagesResponse), f"messages: {res}"
            types.extend(e.source["type"] for e in res.chunk)
            if not res.end or not res.chunk:
                break
            token = res.end
        out["history_reaches_create"] = "m.room.create" in types
        out["history_types"] = types
    finally:
        for c in (alice, bob, carol):
            await c.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:3])))
