// Two matrix-js-sdk clients chat through Axon. Usage: node chat.mjs BASE_URL PASSWORD
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";
logger.setLevel("silent");

const [base, password] = process.argv.slice(2);
const timeout = (ms, what) => new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout: ${what}`)), ms));

async function login(user) {
  const anon = sdk.createClient({ baseUrl: base });
  const r = await anon.loginRequest({ type: "m.login.password", identifier: { type: "m.id.user", user }, password });
  return sdk.createClient({ baseUrl: base, accessToken: r.access_token, userId: r.user_id, deviceId: r.device_id });
}

function prepared(c) {
  return new Promise((res, rej) => c.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
    if (state === "PREPARED") res();
    if (state === "ERROR") rej(new Error(`sync error: ${data?.error}`));
  }));
}

function message(c, roomId, body) {
  return new Promise((res) => c.on(sdk.RoomEvent.Timeline, (ev, room) => {
    if (room?.roomId === roomId && ev.getType() === "m.room.message" && ev.getContent().body === body) res(ev);
  }));
}

const out = {};
const alice = await login("alice");
const bob = await login("bob");
try {
  alice.startClient({ initialSyncLimit: 10 });
  bob.startClient({ initialSyncLimit: 10 });
  await Promise.race([Promise.all([prepared(alice), prepared(bob)]), timeout(20000, "initial sync")]);
  out.prepared = true;

  const invited = new Promise((res) => bob.on(sdk.RoomMemberEvent.Membership, (_ev, member) => {
    if (member.userId === bob.getUserId() && member.membership === "invite") res(member.roomId);
  }));
  const { room_id: roomId } = await alice.createRoom({ invite: [bob.getUserId()], is_direct: true, name: "js chat" });
  const invitedRoom = await Promise.race([invited, timeout(10000, "invite")]);
  out.invite_seen = invitedRoom === roomId;
  await bob.joinRoom(roomId);

  const toBob = message(bob, roomId, "hello from js");
  await alice.sendTextMessage(roomId, "hello from js");
  await Promise.race([toBob, timeout(10000, "alice -> bob")]);
  const toAlice = message(alice, roomId, "hi back");
  await bob.sendTextMessage(roomId, "hi back");
  await Promise.race([toAlice, timeout(10000, "bob -> alice")]);
  out.messages = "ok";

  // Paginate Alice's timeline back to the room's creation.
  const room = alice.getRoom(roomId);
  for (let i = 0; i < 20 && !room.getLiveTimeline().getEvents().some((e) => e.getType() === "m.room.create"); i++) {
    await alice.scrollback(room, 5);
  }
  out.history_reaches_create = room.getLiveTimeline().getEvents().some((e) => e.getType() === "m.room.create");
  out.room_name = room.name;
} finally {
  alice.stopClient();
  bob.stopClient();
}
console.log(JSON.stringify(out));
process.exit(0);
