"""HTTP/3 test client on aioquic (an independent implementation).

  h3client.py get ADDR HOST PATH           one GET; prints status=, headers, body
  h3client.py post ADDR HOST PATH SIZE     one POST with SIZE bytes of body
  h3client.py multi ADDR HOST N            N concurrent GETs on one connection
  h3client.py altsvc HTTPS_ADDR HOST       GET over HTTPS with httpx, then HTTP/3 to the Alt-Svc port
"""
import asyncio
import re
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiters = {}
        self.responses = {}

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            if isinstance(ev, (HeadersReceived, DataReceived)):
                r = self.responses.setdefault(ev.stream_id, {"headers": None, "body": b"", "trailers": None})
                if isinstance(ev, HeadersReceived):
                    if r["headers"] is None:
                        r["headers"] = dict(ev.headers)
                    else:
                        r["trailers"] = dict(ev.headers)
                else:
                    r["body"] += ev.data
                if ev.stream_ended:
                    waiter = self.waiters.pop(ev.stream_id, None)
                    if waiter and not waiter.done():
                        waiter.set_result(r)

    async def request(self, method, authority, path, body=b""):
        sid = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"user-agent", b"aioquic-test/1"),
        ]
        if body:
            headers.append((b"content-length", str(len(body)).encode()))
        fut = asyncio.get_running_loop().create_future()
        self.waiters[sid] = fut
        self.h3.send_headers(sid, headers, end_stream=not body)
        if body:
            self.h3.send_data(sid, body, end_stream=True)
        self.transmit()
        return await asyncio.wait_for(fut, 60)


def show(r):
    h = r["headers"] or {}
    print("status=" + h.get(b":status", b"?").decode())
    for k, v in h.items():
        print(f"header {k.decode()}: {v.decode()}")
    for k, v in (r["trailers"] or {}).items():
        print(f"trailer {k.decode()}: {v.decode()}")
    print("body=" + r["body"].decode(errors="replace"))


async def session(addr, host):
    ip, port = addr.rsplit(":", 1)
    ip = ip.strip("[]")
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE, server_name=host)
    return connect(ip, int(port), configuration=cfg, create_protocol=Client, wait_connected=True)


async def main(argv):
    mode = argv[1]
    if mode == "altsvc":
        import httpx

        https_addr, host = argv[2], argv[3]
        ip, port = https_addr.rsplit(":", 1)
        with httpx.Client(verify=False, http2=True) as c:
            r = c.get(f"https://{ip}:{port}/", headers={"host": host})
        alt = r.headers.get("alt-svc", "")
        print(f"tcp status={r.status_code} http_version={r.http_version} alt-svc={alt}")
        m = re.search(r'h3=":(\d+)"', alt)
        if not m:
            print("no h3 in alt-svc")
            return 1
        argv = [argv[0], "get", f"{ip}:{m.group(1)}", host, "/via-alt-svc"]
        mode = "get"
    addr, host = argv[2], argv[3]
    async with await session(addr, host) as client:
        if mode == "get":
            show(await client.request("GET", host, argv[4]))
        elif mode == "post":
            body = b"p" * int(argv[5])
            show(await client.request("POST", host, argv[4], body))
        elif mode == "multi":
            n = int(argv[4])
            rs = await asyncio.gather(*[client.request("GET", host, f"/multi/{i}") for i in range(n)])
            ok = sum(1 for r in rs if r["headers"] and r["headers"].get(b":status") == b"200")
            paths = {r["body"].decode().split('"path":"')[1].split('"')[0] for r in rs if b'"path"' in r["body"]}
            print(f"ok={ok} distinct_paths={len(paths)}")
        else:
            print("unknown mode", mode)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv)))
