#!/usr/bin/env python3
"""Prepares a schemathesis run against a running Axon.

1. Registers a user and creates fixtures (rooms, an alias, an event, a filter), so that
   generated requests sometimes name things that exist and reach deeper than "not found".
2. Keeps only the operations of the bundled spec that the server implements: each is probed
   once with placeholder values, and one answered `M_UNRECOGNIZED` (404/405) is dropped.
   Operations that would end the fuzzing user's session are dropped too.
3. Writes the schemathesis configuration: the user's access token as a header, and
   dictionaries binding path parameters to the fixtures half of the time.

Usage: prepare.py BASE_URL BUNDLED_SPEC.json OUT_SPEC.json OUT_CONFIG.toml
"""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

# Operations that would log the fuzzing user out or destroy the account: fuzzing them would
# turn the rest of the run into 401s.
NEVER = {
    ("post", "/_matrix/client/v3/logout"),
    ("post", "/_matrix/client/v3/logout/all"),
    ("post", "/_matrix/client/v3/account/deactivate"),
}
METHODS = ("get", "put", "post", "delete")


def call(base, method, path, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method.upper())
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, None


def ok(result, what):
    status, body = result
    if status != 200:
        sys.exit(f"prepare: {what} failed: {status} {body}")
    return body


def q(segment):
    return urllib.parse.quote(segment, safe="")


def fixtures(base):
    register = "/_matrix/client/v3/register"
    creds = {"username": "fuzzer", "password": "fuzzer-password-1"}
    status, body = call(base, "post", register, body=creds)
    if status != 401:
        sys.exit(f"prepare: expected a UIA challenge, got {status} {body}")
    creds["auth"] = {"type": "m.login.dummy", "session": body["session"]}
    session = ok(call(base, "post", register, body=creds), "register")
    token, user_id = session["access_token"], session["user_id"]
    server = user_id.split(":", 1)[1]
    rooms = []
    for i in range(3):
        room = ok(
            call(base, "post", "/_matrix/client/v3/createRoom", token,
                 {"name": f"fuzz {i}", "preset": "public_chat", "room_alias_name": f"fuzz{i}"}),
            "createRoom",
        )["room_id"]
        rooms.append(room)
    events = []
    for i, room in enumerate(rooms):
        sent = ok(
            call(base, "put", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/fx{i}",
                 token, {"msgtype": "m.text", "body": "hello"}),
            "send",
        )
        events.append(sent["event_id"])
    filter_id = ok(
        call(base, "post", f"/_matrix/client/v3/user/{q(user_id)}/filter", token,
             {"room": {"timeline": {"limit": 5}}}),
        "filter",
    )["filter_id"]
    aliases = [f"#fuzz{i}:{server}" for i in range(3)]
    # Leaving, kicking oneself or forgetting would take the user out of the fixture rooms for
    # the rest of the run; those operations get a room of their own.
    decoy = ok(call(base, "post", "/_matrix/client/v3/createRoom", token, {"name": "decoy"}),
               "createRoom")["room_id"]
    return token, decoy, {
        "roomId": rooms,
        "roomIdOrAlias": rooms + aliases,
        "roomAlias": aliases,
        "eventId": events,
        "userId": [user_id],
        "deviceId": [session["device_id"]],
        "filterId": [filter_id],
        "eventType": ["m.room.message", "m.room.name", "m.room.member", "m.room.power_levels"],
        "stateKey": ["", user_id],
    }


def placeholder_path(path):
    out, i = "", 0
    while i < len(path):
        if path[i] == "{":
            j = path.index("}", i)
            out += "x"
            i = j + 1
        else:
            out += path[i]
            i += 1
    return out


def implemented(base, token, method, path):
    status, body = call(base, method, placeholder_path(path), token,
                        None if method == "get" else {})
    unrecognized = isinstance(body, dict) and body.get("errcode") == "M_UNRECOGNIZED"
    return not (status in (404, 405) and unrecognized)


def main():
    base, bundled, out_spec, out_config = sys.argv[1:5]
    token, decoy, values = fixtures(base)
    with open(bundled, encoding="utf-8") as f:
        spec = json.load(f)
    kept, dropped = 0, 0
    for path in list(spec["paths"]):
        item = spec["paths"][path]
        for method in METHODS:
            if method not in item:
                continue
            if (method, path) in NEVER or not implemented(base, token, method, path):
                del item[method]
                dropped += 1
            else:
                kept += 1
        if not any(m in item for m in METHODS):
            del spec["paths"][path]
    with open(out_spec, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    print(f"prepare: fuzzing {kept} operations ({dropped} unimplemented or excluded)",
          file=sys.stderr)
    lines = ['[headers]', f'Authorization = "Bearer {token}"', ""]
    for name, vals in values.items():
        lines.append(f"[dictionaries.{name}]")
        lines.append("values = " + json.dumps(vals))
        lines.append("")
    # /sync long-polls for up to `timeout` ms when nothing happens; generated values would make
    # requests outlast the client's timeout, so it is always one of a few short ones.
    lines.append("[dictionaries.timeout]")
    lines.append("values = [0, 1, 50]")
    lines.append("")
    lines.append("[parameters]")
    for name in values:
        lines.append(f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}')
    lines.append('"query.timeout" = { dictionary = "timeout", probability = 1.0 }')
    lines.append("")
    lines.append("[dictionaries.decoyRoom]")
    lines.append("values = " + json.dumps([decoy]))
    lines.append("")
    lines.append("[[operations]]")
    lines.append("include-path-regex = '/rooms/[^/]+/(leave|kick|ban|forget)$'")
    lines.append('parameters = { "path.roomId" = { dictionary = "decoyRoom", probability = 0.5 } }')
    with open(out_config, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(token)


if __name__ == "__main__":
    main()
