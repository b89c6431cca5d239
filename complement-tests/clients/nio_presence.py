"""Two matrix-nio clients in one room, the Messenger features around a conversation: bob sees
alice online (with her status message), then typing, then her message; bob sends a read
receipt (threaded "main", as nio sends it) and alice's client sees it; a stranger never
sees alice's presence. Prints results as JSON.

Usage: nio_presence.py BASE_URL PASSWORD   (users alice, bob and eve exist with that password)
"""
import asyncio
import json
import sys

from nio_common import login, sync_until, bodies
from nio import (JoinResponse, PresenceSetResponse, RoomCreateResponse, RoomSendResponse,
                 RoomTypingResponse, SyncResponse, UpdateReceiptMarkerResponse)
from nio.events.ephemeral import ReceiptEvent, TypingNoticeEvent






def ephemeral(res, room_id, kind):
    room = res.rooms.join.get(room_id)
    return [e for e in (room.ephemeral if room else []) if isinstance(e, kind)]




async def main(base, password):
    alice = await login(base, "alice", password)
    bob = await login(base, "bob", password)
    eve = await login(base, "eve", password)
    out = {}
    try:
        for c in (alice, bob, eve):
            await c.sync(timeout=0)
        room = await alice.room_create(name="Presence", invite=[bob.user_id])
        assert isinstance(room, RoomCreateResponse), f"create: {room}"
        await sync_until(bob, lambda r: room.room_id in r.rooms.invite)
        joined = await bob.join(room.room_id)
        assert isinstance(joined, JoinResponse), f"join: {joined}"

        # Online, with a status message.
        res = await alice.set_presence("online", "at my desk")
        assert isinstance(res, PresenceSetResponse), f"presence: {res}"
        seen = await sync_until(bob, lambda r: any(
            p.user_id == alice.user_id and p.presence == "online" for p in r.presence_events))
        mine = [p for p in seen.presence_events if p.user_id == alice.user_id][-1]
        out["presence"] = mine.presence
        out["status_msg"] = mine.status_msg
        out["currently_active"] = mine.currently_active

        # Typing, then the message.
        res = await alice.room_typing(room.room_id, True, timeout=30000)
        assert isinstance(res, RoomTypingResponse), f"typing: {res}"
        await sync_until(bob, lambda r: any(
            alice.user_id in e.users for e in ephemeral(r, room.room_id, TypingNoticeEvent)))
        out["typing_seen"] = True
        sent = await alice.room_send(room.room_id, "m.room.message",
                                     {"msgtype": "m.text", "body": "are you there?"})
        assert isinstance(sent, RoomSendResponse), f"send: {sent}"
        await alice.room_typing(room.room_id, False)
        await sync_until(bob, lambda r: "are you there?" in bodies(r, room.room_id))
        out["message_seen"] = True

        # Bob's read receipt reaches alice's client.
        res = await bob.update_receipt_marker(room.room_id, sent.event_id)
        assert isinstance(res, UpdateReceiptMarkerResponse), f"receipt: {res}"
        await sync_until(alice, lambda r: any(
            rc.user_id == bob.user_id and rc.event_id == sent.event_id
            and rc.receipt_type == "m.read"
            for e in ephemeral(r, room.room_id, ReceiptEvent) for rc in e.receipts))
        out["receipt_seen"] = True

        # A stranger (no shared room) sees none of alice's presence.
        res = await eve.sync(timeout=0, full_state=True)
        assert isinstance(res, SyncResponse), f"sync: {res}"
        out["stranger_sees_presence"] = any(
            p.user_id == alice.user_id for p in res.presence_events)
    finally:
        for c in (alice, bob, eve):
            await c.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:3])))
