// matrix-js-sdk with its Rust crypto (vodozemac) against Axon's key endpoints: both clients
// upload device and one-time keys, Alice bootstraps cross-signing (device_signing/upload and
// signatures/upload), and Bob, who shares a room with her, tracks and checks her keys. Usage: node crypto_keys.mjs BASE_URL PASSWORD
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";
logger.setLevel("silent");

const [base, password] = process.argv.slice(2);
const timeout = (ms, what) => new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout: ${what}`)), ms));
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

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

/// Waits until the server holds `user`'s device keys for `device` (the client uploads them
/// in the background after the first sync).
async function keysUploaded(c, user, device) {
  for (let i = 0; i < 100; i++) {
    const r = await c.http.authedRequest("POST", "/keys/query", undefined, { device_keys: { [user]: [] } });
    if (r.device_keys?.[user]?.[device]) return r;
    await sleep(100);
  }
  throw new Error(`keys of ${user} never uploaded`);
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
  await Promise.race([keysUploaded(bob, alice.getUserId(), alice.getDeviceId()), timeout(15000, "alice's keys")]);
  out.device_keys_uploaded = true;
  // Sharing an encrypted room makes Bob's crypto track Alice's devices (device_lists in /sync).
  const { room_id: roomId } = await alice.createRoom({
    invite: [bob.getUserId()],
    name: "keys",
    initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
  });
  await bob.joinRoom(roomId);

  const crypto = alice.getCrypto();
  await crypto.bootstrapCrossSigning({
    authUploadDeviceSigningKeys: async (makeRequest) => {
      await makeRequest({ type: "m.login.password", identifier: { type: "m.id.user", user: "alice" }, password });
    },
  });
  out.cross_signing_ready = await crypto.isCrossSigningReady();
  // The Rust crypto marks its own device cross-signed once it has processed the signature
  // it uploaded (asynchronously, after bootstrapCrossSigning returns): poll, bounded.
  let own = null;
  for (let i = 0; i < 100 && !own?.crossSigningVerified; i++) {
    own = await crypto.getDeviceVerificationStatus(alice.getUserId(), alice.getDeviceId());
    if (!own?.crossSigningVerified) await sleep(100);
  }
  out.own_device_cross_signed = own?.crossSigningVerified ?? null;

  const devices = await bob.getCrypto().getUserDeviceInfo([alice.getUserId()], true);
  const device = devices.get(alice.getUserId())?.get(alice.getDeviceId());
  out.bob_sees_alice_device = !!device;
  out.bob_sees_alice_ed25519 = device?.getFingerprint() === (await crypto.getOwnDeviceKeys()).ed25519;
  // Bob learns of Alice's new cross-signing keys through device_lists.changed in his sync.
  let seen = null;
  for (let i = 0; i < 100 && !seen?.signedByOwner; i++) {
    await sleep(100);
    seen = await bob.getCrypto().getDeviceVerificationStatus(alice.getUserId(), alice.getDeviceId());
  }
  out.bob_status = seen ? { signedByOwner: seen.signedByOwner, crossSigningVerified: seen.crossSigningVerified } : null;
  out.bob_sees_alice_device_signed_by_owner = seen?.signedByOwner ?? null;
  const counts = await alice.http.authedRequest("POST", "/keys/upload", undefined, {});
  out.alice_one_time_keys = counts.one_time_key_counts?.signed_curve25519 ?? 0;
} finally {
  alice.stopClient();
  bob.stopClient();
}
console.log(JSON.stringify(out));
process.exit(0);
