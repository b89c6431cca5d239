"""Two matrix-nio clients: Bob sees Alice online (with her status message), typing, then her
message, all through /sync. Prints results as JSON.

Usage: nio_presence_typing.py BASE_URL PASSWORD   (users alice and bob exist with that password)
"""
import asyncio
import json
import sys

from nio_common import login, sync_until
from nio import (JoinResponse, PresenceEvent, RoomCreateResponse, RoomSendResponse,
                 TypingNoticeEvent)






def typing_users(res, room_id):
    room = res.rooms.join.get(room_id)
    if room is None:
        return None
    for event in room.ephemeral:
        if isinstance(event, TypingNoticeEvent):
            return sorted(event.users)
    return None


def presence_of(res, user_id):
    for event in res.presence_events:
        if isinstance(event, PresenceEvent) and event.user_id == user_id:
            return event
    return None


async def main(base, password):
    alice = await login(base, "alice", password)
    bob = await login(base, "bob", password)
    out = {}
    try:
        for c in (alice, bob):
            await c.sync(timeout=0)
        room = await alice.room_create(name="Chat", invite=[bob.user_id])
        assert isinstance(room, RoomCreateResponse), f"create: {room}"
        await sync_until(bob, lambda r: room.room_id in r.rooms.invite)
        joined = await bob.join(room.room_id)
        assert isinstance(joined, JoinResponse), f"join: {joined}"

        await alice.set_presence("online", "writing tests")
        res = await sync_until(bob, lambda r: presence_of(r, alice.user_id) is not None)
        seen = presence_of(res, alice.user_id)
        out["presence"] = seen.presence
        out["status_msg"] = seen.status_msg
        out["currently_active"] = seen.currently_active

        await alice.room_typing(room.room_id, typing_state=True, timeout=30000)
        res = await sync_until(bob, lambda r: typing_users(r, room.room_id) is not None)
        out["typing"] = typing_users(res, room.room_id)

        sent = await alice.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "done typing"})
        assert isinstance(sent, RoomSendResponse), f"send: {sent}"
        await alice.room_typing(room.room_id, typing_state=False)
        bodies = []

        def got_message(r):
            joined_room = r.rooms.join.get(room.room_id)
            if joined_room is not None:
                bodies.extend(getattr(e, "body", None) for e in joined_room.timeline.events)
            return "done typing" in bodies

        await sync_until(bob, got_message)
        out["message"] = "done typing"
        if bob.rooms[room.room_id].typing_users:
            await sync_until(bob, lambda r: typing_users(r, room.room_id) == [], rounds=5)
        out["typing_after"] = sorted(bob.rooms[room.room_id].typing_users)
    finally:
        for c in (alice, bob):
            await c.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:3])))
