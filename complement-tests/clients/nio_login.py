"""Logs in with matrix-nio and calls whoami; prints the results as JSON.

Usage: nio_login.py BASE_URL USER PASSWORD
"""
import asyncio
import json
import sys

from nio import AsyncClient, LoginResponse, WhoamiResponse


async def main(base_url: str, user: str, password: str) -> int:
    client = AsyncClient(base_url, user)
    try:
        login = await client.login(password, device_name="nio test")
        if not isinstance(login, LoginResponse):
            print(json.dumps({"error": f"login failed: {login}"}))
            return 1
        who = await client.whoami()
        if not isinstance(who, WhoamiResponse):
            print(json.dumps({"error": f"whoami failed: {who}"}))
            return 1
        print(json.dumps({
            "login_user_id": login.user_id,
            "device_id": login.device_id,
            "whoami_user_id": who.user_id,
            "whoami_device_id": who.device_id,
        }))
        return 0
    finally:
        await client.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
