"""Helpers shared by the matrix-nio client scripts (each script imports this from its own
directory)."""
from nio import AsyncClient, LoginResponse, SyncResponse


async def login(base, user, password):
    client = AsyncClient(base, user)
    res = await client.login(password)
    assert isinstance(res, LoginResponse), f"login {user}: {res}"
    return client


async def sync_until(client, predicate, rounds=20, presence=None):
    """Syncs (long-polling, with set_presence when given) until predicate(sync_response)
    holds; returns that response."""
    for _ in range(rounds):
        res = await client.sync(timeout=5000, full_state=False, set_presence=presence)
        assert isinstance(res, SyncResponse), f"sync: {res}"
        if predicate(res):
            return res
    raise AssertionError("condition not met after syncing")


def bodies(res, room_id):
    """The bodies of the timeline events of a joined room in a sync response."""
    room = res.rooms.join.get(room_id)
    return [getattr(e, "body", None) for e in (room.timeline.events if room else [])]
