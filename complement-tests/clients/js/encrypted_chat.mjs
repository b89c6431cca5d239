// End-to-end encryption with Element's SDK: two matrix-js-sdk clients with their Rust crypto
// (vodozemac) share a Megolm-encrypted room on Axon and exchange messages both ways; each
// decrypts the other's. The room keys travel as Olm-encrypted to-device messages, set up with
// /keys/query and /keys/claim. Usage: node encrypted_chat.mjs BASE_URL PASSWORD
// With AXON_JS_TRACE=1 every request and response is logged to stderr.
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";
logger.setLevel(process.env.AXON_JS_TRACE ? "warn" : "silent");

const [base, password] = process.argv.slice(2);
const timeout = (ms, what) => new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout: ${what}`)), ms));

function tracingFetch(who) {
  if (!process.env.AXON_JS_TRACE) return undefined;
  return async (url, init) => {
    const res = await fetch(url, init);
    const text = await res.clone().text();
    console.error(`[${who}] ${init?.method ?? "GET"} ${url}\n  > ${init?.body ?? ""}\n  < ${res.status} ${text}`);
    return res;
  };
}

async function login(user) {
  const anon = sdk.createClient({ baseUrl: base });
  const r = await anon.loginRequest({ type: "m.login.password", identifier: { type: "m.id.user", user }, password });
  return sdk.createClient({
    baseUrl: base,
    accessToken: r.access_token,
    userId: r.user_id,
    deviceId: r.device_id,
    fetchFn: tracingFetch(user),
  });
}

function prepared(c) {
  return new Promise((res, rej) => c.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
    if (state === "PREPARED") res();
    if (state === "ERROR") rej(new Error(`sync error: ${data?.error}`));
  }));
}

/// Polls `predicate` until it holds (state arrives through the clients' sync loops).
async function until(predicate, what, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timeout: ${what}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

/// Resolves with the event once `c` has received `body` in `roomId` encrypted on the wire and
/// decrypted it; rejects when its decryption fails.
function decryptedMessage(c, roomId, body) {
  return new Promise((res, rej) => {
    const check = (ev) => {
      if (ev.getRoomId() !== roomId || !ev.isEncrypted() || ev.isBeingDecrypted()) return;
      if (ev.isDecryptionFailure()) {
        rej(new Error(`${c.getUserId()} could not decrypt ${ev.getId()}: ${ev.decryptionFailureReason}`));
      } else if (ev.getType() === "m.room.message" && ev.getContent().body === body) {
        res(ev);
      }
    };
    c.on(sdk.RoomEvent.Timeline, check);
    c.on(sdk.MatrixEventEvent.Decrypted, check);
  });
}

/// What the server holds for `eventId`, read back through /rooms/{roomId}/event.
async function onServer(c, roomId, eventId) {
  const path = `/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`;
  return c.http.authedRequest("GET", path);
}

/// The checks of one message (a reply to `replyTo` if given): decrypted text, and the server
/// never saw the plaintext.
async function exchange(from, to, roomId, body, replyTo) {
  const received = decryptedMessage(to, roomId, body);
  const content = { msgtype: "m.text", body };
  if (replyTo) content["m.relates_to"] = { "m.in_reply_to": { event_id: replyTo } };
  const { event_id: eventId } = await from.sendMessage(roomId, content);
  const ev = await Promise.race([received, timeout(20000, `${from.getUserId()} -> ${to.getUserId()}`)]);
  const raw = await onServer(to, roomId, eventId);
  const ownKeys = await from.getCrypto().getOwnDeviceKeys();
  return {
    event_id: eventId,
    same_event: ev.getId() === eventId,
    in_reply_to: ev.replyEventId ?? null,
    decrypted_body: ev.getContent().body,
    wire_type: ev.getWireType(),
    server_type: raw.type,
    server_algorithm: raw.content?.algorithm ?? null,
    server_sees_plaintext: JSON.stringify(raw).includes(body),
    // The Megolm session came from the sending device (its Curve25519 and Ed25519 keys).
    sender_keys_match: ev.getSenderKey() === ownKeys.curve25519 && ev.getClaimedEd25519Key() === ownKeys.ed25519,
  };
}

const out = {};
const alice = await login("alice");
const bob = await login("bob");
try {
  await alice.initRustCrypto({ useIndexedDB: false });
  await bob.initRustCrypto({ useIndexedDB: false });
  alice.startClient({ initialSyncLimit: 10 });
  bob.startClient({ initialSyncLimit: 10 });
  await Promise.race([Promise.all([prepared(alice), prepared(bob)]), timeout(20000, "initial sync")]);
  out.prepared = true;

  const { room_id: roomId } = await alice.createRoom({
    invite: [bob.getUserId()],
    is_direct: true,
    name: "secret",
    initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
  });
  await until(() => bob.getRoom(roomId)?.getMyMembership() === "invite", "bob's invite");
  await bob.joinRoom(roomId);
  await until(() => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join", "alice sees bob's join");
  // Neither side may send before its crypto knows the room is encrypted (the SDK would send
  // in the clear); Bob learns it from the room state in his sync after joining.
  for (const [name, c] of [["alice", alice], ["bob", bob]]) {
    await until(() => c.getCrypto().isEncryptionEnabledInRoom(roomId), `${name} sees the room encrypted`);
    out[`${name}_room_encrypted`] = true;
  }

  out.alice_to_bob = await exchange(alice, bob, roomId, "a secret from alice");
  out.bob_to_alice = await exchange(bob, alice, roomId, "a secret from bob");
  // Encrypted replies both ways, now that both hold Olm sessions and each other's Megolm keys.
  out.alice_to_bob_again = await exchange(alice, bob, roomId, "second secret from alice", out.bob_to_alice.event_id);
  out.bob_to_alice_again = await exchange(bob, alice, roomId, "second secret from bob", out.alice_to_bob_again.event_id);
} finally {
  alice.stopClient();
  bob.stopClient();
}
console.log(JSON.stringify(out));
process.exit(0);
