"""HTTP/3 clients that hold a connection without using it (aioquic), for the H5 tests.

  h3_slow.py ping ADDR HOST          one GET, then a PING every 200 ms until the server closes
                                     the connection: prints status=, pings=, closed_after=
  h3_slow.py zero-window ADDR HOST   a GET on a stream we give no flow-control credit (the
                                     response head cannot be sent): prints reset_after= when
                                     the server resets it, or timeout
  h3_slow.py upload ADDR HOST N SIZE HOLD
                                     N POSTs of SIZE bytes each, sent as fast as the server's
                                     flow control lets them go, the connection held HOLD
                                     seconds: prints "uploading" when sent, then sent_bytes=
"""
import asyncio
import ssl
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamReset

MODE = sys.argv[1]


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if MODE == "zero-window":
            # Advertised at the handshake: streams we open get no credit from the start.
            self._quic._local_max_stream_data_bidi_local = 0
        self.h3 = H3Connection(self._quic)
        self.status = None
        self.answered = 0
        self.reset = asyncio.Event()

    def quic_event_received(self, event):
        if isinstance(event, StreamReset):
            self.reset.set()
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self.status = dict(ev.headers).get(b":status", b"?").decode()
                self.answered += 1

    def post(self, host, size):
        sid = self._quic.get_next_available_stream_id()
        headers = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", host.encode()), (b":path", b"/upload"), (b"content-length", str(size).encode())]
        self.h3.send_headers(sid, headers)
        self.h3.send_data(sid, b"u" * size, end_stream=True)
        self.transmit()
        return sid

    def get(self, host):
        sid = self._quic.get_next_available_stream_id()
        headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", host.encode()), (b":path", b"/bytes/1048576")]
        self.h3.send_headers(sid, headers, end_stream=True)
        self.transmit()


async def main(addr, host):
    ip, port = addr.rsplit(":", 1)
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE, server_name=host)
    async with connect(ip, int(port), configuration=cfg, create_protocol=Client, wait_connected=True) as c:
        if MODE == "upload":
            n, size, hold = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
            sids = [c.post(host, size) for _ in range(n)]
            print("uploading", flush=True)
            await asyncio.sleep(hold)
            # What left us: each stream's send offset (data the server's credit let through).
            sent = sum(c._quic._streams[sid].sender.next_offset for sid in sids if sid in c._quic._streams)
            print(f"sent_bytes={sent} answered={c.answered}", flush=True)
            return
        c.get(host)
        start = time.time()
        if MODE == "zero-window":
            try:
                await asyncio.wait_for(c.reset.wait(), 10)
                print(f"status={c.status} reset_after={time.time() - start:.1f}")
            except asyncio.TimeoutError:
                print(f"status={c.status} timeout")
            return
        pings = 0
        while time.time() - start < 10 and not c._closed.is_set():
            try:
                await asyncio.wait_for(c.ping(), 1)
                pings += 1
            except (asyncio.TimeoutError, ConnectionError):
                pass
            await asyncio.sleep(0.2)
        state = f"closed_after={time.time() - start:.1f}" if c._closed.is_set() else "open"
        print(f"status={c.status} pings={pings} {state}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[2], sys.argv[3]))
