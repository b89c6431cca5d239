"""Two matrix-nio clients: bob reads alice's message and sends a read receipt (nio sends it
threaded, `main`), alice's client sees it through /sync; bob's private receipt (through
read markers) reaches bob's client and never alice's. Prints results as JSON.

Usage: nio_receipts.py BASE_URL PASSWORD   (users alice and bob exist with that password)
"""
import asyncio
import json
import sys

from nio_common import login
from nio import (JoinResponse, ReceiptEvent, RoomCreateResponse, RoomReadMarkersResponse,
                 RoomSendResponse, SyncResponse, UpdateReceiptMarkerResponse)




def receipts(res, room_id):
    room = res.rooms.join.get(room_id)
    if room is None:
        return []
    return [r for e in room.ephemeral if isinstance(e, ReceiptEvent) for r in e.receipts]


async def sync_until(client, predicate, rounds=20):
    """Syncs (long-polling) until predicate(sync_response) holds; returns what was seen."""
    seen = []
    for _ in range(rounds):
        res = await client.sync(timeout=5000, full_state=False)
        assert isinstance(res, SyncResponse), f"sync: {res}"
        seen.append(res)
        if predicate(res):
            return seen
    raise AssertionError("condition not met after syncing")


async def main(base, password):
    alice = await login(base, "alice", password)
    bob = await login(base, "bob", password)
    out = {}
    try:
        for c in (alice, bob):
            await c.sync(timeout=0)
        room = await alice.room_create(name="Receipts", invite=[bob.user_id])
        assert isinstance(room, RoomCreateResponse), f"create: {room}"
        room_id = room.room_id
        await sync_until(bob, lambda r: room_id in r.rooms.invite)
        assert isinstance(await bob.join(room_id), JoinResponse)
        first = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "one"})
        second = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "two"})
        assert isinstance(second, RoomSendResponse), f"send: {second}"

        res = await bob.update_receipt_marker(room_id, first.event_id)
        assert isinstance(res, UpdateReceiptMarkerResponse), f"receipt: {res}"
        seen = await sync_until(alice, lambda r: any(
            x.user_id == bob.user_id and x.event_id == first.event_id for x in receipts(r, room_id)))
        got = [x for r in seen for x in receipts(r, room_id) if x.user_id == bob.user_id][-1]
        out["public"] = {"type": str(getattr(got.receipt_type, "value", got.receipt_type)),
                         "thread_id": got.thread_id}

        res = await bob.room_read_markers(room_id, first.event_id, private_read_event=second.event_id)
        assert isinstance(res, RoomReadMarkersResponse), f"read markers: {res}"
        seen = await sync_until(bob, lambda r: any(
            x.event_id == second.event_id for x in receipts(r, room_id)))
        mine = [x for r in seen for x in receipts(r, room_id) if x.event_id == second.event_id]
        out["private_to_owner"] = str(getattr(mine[-1].receipt_type, "value", mine[-1].receipt_type))
        # A message afterwards, so that alice's sync returns; no private receipt with it.
        await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "three"})
        seen = await sync_until(alice, lambda r: room_id in r.rooms.join and any(
            getattr(e, "body", None) == "three" for e in r.rooms.join[room_id].timeline.events))
        out["private_leaked"] = any(
            x.event_id == second.event_id for r in seen for x in receipts(r, room_id))
    finally:
        for c in (alice, bob):
            await c.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:3])))
