"""Two matrix-nio clients share media through Axon: Alice uploads a PNG and sends it as
m.image, Bob receives the event through /sync and downloads the image and a thumbnail
(nio uses the authenticated /_matrix/client/v1/media endpoints). Then an encrypted
attachment: Alice encrypts a file while uploading it (nio's AES-CTR attachment encryption),
sends m.file with the `file` info, Bob downloads the ciphertext and decrypts it with that
info. Prints results as JSON.

Usage: nio_media.py BASE_URL PASSWORD IMAGE_PATH   (users alice and bob exist)
"""
import asyncio
import io
import json
import sys

from nio import (DownloadResponse, JoinResponse, RoomCreateResponse, RoomSendResponse,
                 ThumbnailResponse, UploadResponse)
from nio.api import ResizingMethod
from nio.crypto.attachments import decrypt_attachment

from nio_common import login, sync_until


def events_of(res, room_id, msgtype):
    room = res.rooms.join.get(room_id)
    return [e for e in (room.timeline.events if room else [])
            if e.source.get("content", {}).get("msgtype") == msgtype]


async def main(base, password, image_path):
    alice = await login(base, "alice", password)
    bob = await login(base, "bob", password)
    out = {}
    try:
        for c in (alice, bob):
            await c.sync(timeout=0)
        room = await alice.room_create(name="Photos", invite=[bob.user_id])
        assert isinstance(room, RoomCreateResponse), f"create: {room}"
        await sync_until(bob, lambda r: room.room_id in r.rooms.invite)
        joined = await bob.join(room.room_id)
        assert isinstance(joined, JoinResponse), f"join: {joined}"

        with open(image_path, "rb") as f:
            image = f.read()
        up, _ = await alice.upload(io.BytesIO(image), content_type="image/png",
                                   filename="photo.png", filesize=len(image))
        assert isinstance(up, UploadResponse), f"upload: {up}"
        sent = await alice.room_send(room.room_id, "m.room.message", {
            "msgtype": "m.image", "body": "photo.png", "url": up.content_uri,
            "info": {"mimetype": "image/png", "size": len(image), "w": 640, "h": 480},
        })
        assert isinstance(sent, RoomSendResponse), f"send: {sent}"
        res = await sync_until(bob, lambda r: events_of(r, room.room_id, "m.image"))
        event = events_of(res, room.room_id, "m.image")[0]
        mxc = event.source["content"]["url"]
        got = await bob.download(mxc=mxc)
        assert isinstance(got, DownloadResponse), f"download: {got}"
        out["image_identical"] = got.body == image
        out["image_content_type"] = got.content_type
        server_name, media_id = mxc[len("mxc://"):].split("/", 1)
        thumb = await bob.thumbnail(server_name, media_id, 96, 96, ResizingMethod.crop)
        assert isinstance(thumb, ThumbnailResponse), f"thumbnail: {thumb}"
        out["thumbnail_type"] = thumb.content_type
        out["thumbnail_bytes"] = len(thumb.body)
        with open(image_path + ".thumb", "wb") as f:
            f.write(thumb.body)

        secret = b"the plans, in full\n" * 1000
        up, info = await alice.upload(io.BytesIO(secret), content_type="application/pdf",
                                      filename="plans.pdf", encrypt=True, filesize=len(secret))
        assert isinstance(up, UploadResponse), f"encrypted upload: {up}"
        file_info = {
            "url": up.content_uri, "key": info["key"], "iv": info["iv"],
            "hashes": info["hashes"], "v": "v2",
        }
        sent = await alice.room_send(room.room_id, "m.room.message", {
            "msgtype": "m.file", "body": "plans.pdf", "file": file_info,
            "info": {"mimetype": "application/pdf", "size": len(secret)},
        })
        assert isinstance(sent, RoomSendResponse), f"send m.file: {sent}"
        res = await sync_until(bob, lambda r: events_of(r, room.room_id, "m.file"))
        f = events_of(res, room.room_id, "m.file")[0].source["content"]["file"]
        got = await bob.download(mxc=f["url"])
        assert isinstance(got, DownloadResponse), f"download ciphertext: {got}"
        out["ciphertext_differs"] = got.body != secret
        plain = decrypt_attachment(got.body, f["key"]["k"], f["hashes"]["sha256"], f["iv"])
        out["decrypted_identical"] = plain == secret
    finally:
        for c in (alice, bob):
            await c.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
