"""One HTTP/2 request (h2c, prior knowledge) with `:authority` and a `host` header chosen
separately, sent with the `h2` library (an independent implementation): clients such as
httpx and curl fold `Host` into `:authority`, so they cannot send the mismatch.

  h2_authority.py ADDR AUTHORITY HOST PATH     prints status=, then the body
"""
import socket
import sys

import h2.config
import h2.connection
import h2.events


def main():
    addr, authority, host, path = sys.argv[1:5]
    ip, port = addr.rsplit(":", 1)
    sock = socket.create_connection((ip, int(port)), timeout=10)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    )
    conn.initiate_connection()
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", authority), (":path", path)]
    if host:
        headers.append(("host", host))
    conn.send_headers(1, headers, end_stream=True)
    sock.sendall(conn.data_to_send())
    status, body, done = None, b"", False
    while not done:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers)[b":status"].decode()
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
        sock.sendall(conn.data_to_send())
    print(f"status={status}")
    print(body.decode(errors="replace"))


main()
