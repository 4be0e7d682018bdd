"""One HTTP/3 GET with aioquic (an implementation independent of ours).

  h3get.py ADDR HOST PATH [CA_FILE]

Verifies the server certificate against CA_FILE when given (else no verification).
Prints one JSON line: {"status": int, "body": str}.
"""
import asyncio
import json
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
        self.status = None
        self.body = b""
        self.done = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived) and self.status is None:
                self.status = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, DataReceived):
                self.body += ev.data
            if isinstance(ev, (HeadersReceived, DataReceived)) and ev.stream_ended:
                if not self.done.done():
                    self.done.set_result(None)

    async def get(self, host, path):
        sid = self._quic.get_next_available_stream_id()
        self.h3.send_headers(sid, [
            (b":method", b"GET"), (b":scheme", b"https"),
            (b":authority", host.encode()), (b":path", path.encode()),
            (b"user-agent", b"portico-e2e-aioquic"),
        ], end_stream=True)
        self.transmit()
        await asyncio.wait_for(self.done, 20)


async def main(addr, host, path, ca=None):
    ip, port = addr.rsplit(":", 1)
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=host)
    if ca:
        cfg.load_verify_locations(ca)
    else:
        cfg.verify_mode = ssl.CERT_NONE
    async with connect(ip.strip("[]"), int(port), configuration=cfg, create_protocol=Client,
                       wait_connected=True) as client:
        await client.get(host, path)
        print(json.dumps({"status": client.status, "body": client.body.decode(errors="replace")}))


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(*sys.argv[1:]), 30))
