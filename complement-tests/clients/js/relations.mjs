// Reactions, edits and threads between two matrix-js-sdk clients (threadSupport on), as
// Element Web runs them. Usage: node relations.mjs BASE_URL PASSWORD
// Each send is awaited (the server's answer) before the next; every check is on what the
// other user's client shows: the reaction on the message, the edited content, the thread's
// events. A third client syncing afresh sees the same through the server's bundles.
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";
logger.setLevel(process.env.AXON_JS_TRACE ? "warn" : "silent");

const [base, password] = process.argv.slice(2);

// With AXON_JS_TRACE=1 every request and response is logged to stderr.
function tracingFetch(who) {
  if (!process.env.AXON_JS_TRACE) return undefined;
  return async (url, init) => {
    const res = await fetch(url, init);
    const text = await res.clone().text();
    console.error(`[${who}] ${init?.method ?? "GET"} ${url}\n  > ${init?.body ?? ""}\n  < ${res.status} ${text.slice(0, 3000)}`);
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

// Polls `check` until it returns something truthy; fails after `ms` naming `what`.
async function waitFor(check, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timeout: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const step = (what) => process.stderr.write(`step: ${what}\n`);
const liveEvent = (c, roomId, id) => c.getRoom(roomId)?.findEventById(id);

const out = {};
const alice = await login("alice");
const bob = await login("bob");
let fresh;
try {
  // As Element Web: threads on, local echoes kept apart from the timeline until sent.
  const opts = { initialSyncLimit: 20, threadSupport: true, pendingEventOrdering: "detached" };
  alice.startClient(opts);
  bob.startClient(opts);
  await Promise.race([Promise.all([prepared(alice), prepared(bob)]), waitFor(() => false, 20000, "initial sync")]);
  out.threads_supported = alice.supportsThreads();

  const { room_id: roomId } = await alice.createRoom({ invite: [bob.getUserId()], name: "relations" });
  await waitFor(() => bob.getRoom(roomId), 10000, "invite");
  await bob.joinRoom(roomId);
  await waitFor(() => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join", 10000, "join");

  step('const { event_id: original }');
  const { event_id: original } = await alice.sendTextMessage(roomId, "original");
  await waitFor(() => liveEvent(bob, roomId, original), 10000, "bob sees the message");

  step('// Bob reacts;');
  // Bob reacts; Alice sees one 👍 by Bob on the message.
  const { event_id: reaction } = await bob.sendEvent(roomId, "m.reaction", {
    "m.relates_to": { rel_type: "m.annotation", event_id: original, key: "👍" },
  });
  const annotations = () => alice.getRoom(roomId).getUnfilteredTimelineSet().relations
    .getChildEventsForEvent(original, "m.annotation", "m.reaction");
  await waitFor(() => annotations()?.getSortedAnnotationsByKey()?.length, 10000, "alice sees the reaction");
  const sorted = annotations().getSortedAnnotationsByKey();
  out.reaction = { keys: sorted.map(([k, evs]) => [k, evs.size]), id_seen: [...sorted[0][1]].some((e) => e.getId() === reaction) };
  step('// The same reaction again');
  // The same reaction again is refused by the server. Sent as a plain request: through
  // sendEvent the refused local echo would stay in Bob's room as "not sent" (Element offers
  // to cancel or resend it), and js-sdk trips over it once the message becomes a thread root.
  try {
    const path = `/rooms/${encodeURIComponent(roomId)}/send/m.reaction/dup${Date.now()}`;
    await bob.http.authedRequest(sdk.Method.Put, path, undefined, {
      "m.relates_to": { rel_type: "m.annotation", event_id: original, key: "👍" },
    });
    out.duplicate = "accepted";
  } catch (e) {
    out.duplicate = e.errcode;
  }

  step('// Alice edits;');
  // Alice edits; Bob's client shows the new content on the original event.
  const { event_id: edit } = await alice.sendEvent(roomId, "m.room.message", {
    msgtype: "m.text",
    body: "* edited",
    "m.new_content": { msgtype: "m.text", body: "edited" },
    "m.relates_to": { rel_type: "m.replace", event_id: original },
  });
  await waitFor(() => liveEvent(bob, roomId, original)?.getContent()?.body === "edited", 10000, "bob sees the edit");
  out.edit_seen_by_bob = liveEvent(bob, roomId, original).replacingEventId() === edit;

  step('// Alice replies in a thread');
  // Alice replies in a thread on the message, as Element does it: opening the thread panel
  // on the message creates the (empty) thread and loads it, then the reply is sent into
  // it. (Sent without the thread loaded, a remote echo arriving before the /send answer
  // trips js-sdk: "updatePendingEventStatus called on an event which is not a local echo".)
  // Bob sees the thread with that one reply.
  const aliceRoom = alice.getRoom(roomId);
  const opened = aliceRoom.getThread(original) ?? aliceRoom.createThread(original, aliceRoom.findEventById(original), [], true);
  await waitFor(() => opened.initialEventsFetched, 10000, "alice opens the thread");
  const { event_id: reply } = await alice.sendEvent(roomId, original, "m.room.message", {
    msgtype: "m.text",
    body: "in the thread",
    "m.relates_to": { rel_type: "m.thread", event_id: original, is_falling_back: true, "m.in_reply_to": { event_id: original } },
  });
  const bobThread = await waitFor(() => {
    const t = bob.getRoom(roomId).getThread(original);
    return t && t.events.some((e) => e.getId() === reply) ? t : null;
  }, 10000, "bob sees the thread reply");
  const replies = (t) => t.events.filter((e) => e.getId() !== original && e.threadRootId === original && !e.isRelation("m.annotation"));
  await new Promise((r) => setTimeout(r, 500)); // let any duplicate arrive, so it would be counted
  out.bob_thread = {
    replies: replies(bobThread).map((e) => e.getContent().body),
    length: bobThread.length,
    root_in_main_timeline: !!bob.getRoom(roomId).getLiveTimeline().getEvents().find((e) => e.getId() === original),
    reply_not_in_main_timeline: !bob.getRoom(roomId).getLiveTimeline().getEvents().some((e) => e.getId() === reply),
  };

  step('// A client syncing afresh');
  // A client syncing afresh gets it all from the server's bundles and /threads.
  fresh = await login("bob");
  fresh.startClient(opts);
  await Promise.race([prepared(fresh), waitFor(() => false, 20000, "fresh sync")]);
  await waitFor(() => liveEvent(fresh, roomId, original)?.getContent()?.body === "edited", 10000, "fresh: edited");
  const freshThread = await waitFor(() => {
    const t = fresh.getRoom(roomId).getThread(original);
    return t && t.events.some((e) => e.getId() === reply) ? t : null;
  }, 10000, "fresh: thread");
  // js-sdk counts the reply twice for a moment (the root's bundled count, then the reply
  // from the same sync); it settles once it has fetched the root again (`/event`). What the
  // user ends up seeing is one reply.
  await waitFor(() => freshThread.length === 1, 10000, "fresh: the thread settles on one reply").catch(() => {});
  out.fresh = {
    original_body: liveEvent(fresh, roomId, original).getContent().body,
    thread_replies: replies(freshThread).map((e) => e.getContent().body),
    thread_length: freshThread.length,
    thread_reply_count: freshThread.replyCount,
  };
} finally {
  alice.stopClient();
  bob.stopClient();
  fresh?.stopClient();
}
console.log(JSON.stringify(out));
process.exit(0);
