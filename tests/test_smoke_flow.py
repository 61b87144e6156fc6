import httpx

from tests.factories import PN, delivery, inbound, signed


async def test_inbound_message_opens_window(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    body, headers = signed(delivery([inbound("5511987654321")]))
    r = await client.post("/webhooks/whatsapp", content=body, headers=headers)
    assert r.status_code == 200, r.text
    r = await client.get(f"/v1/windows/{PN}/+55 11 98765-4321", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "open"
    assert r.json()["can_send_free_form"] is True
