"""One HTTP/2 (h2c) request, then silence: report the response status, whether the server
sent GOAWAY and closed the connection, and after how long."""
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

host, port, authority, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
sock = socket.create_connection((host, port), timeout=wait)
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
sid = conn.get_next_available_stream_id()
conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", authority), (":path", "/")], end_stream=True)
sock.sendall(conn.data_to_send())
status, goaway, closed, done_at = None, False, False, None
start = time.time()
while time.time() - start < wait:
    try:
        data = sock.recv(65536)
    except socket.timeout:
        break
    if not data:
        closed = True
        break
    if goaway:
        continue  # after GOAWAY only wait for the close; h2 rejects frames on a closed connection
    try:
        events = conn.receive_data(data)
    except h2.exceptions.ProtocolError:
        # GOAWAY closed the h2 state machine and a frame after it (hyper's PING) was refused.
        goaway = conn.state_machine.state == h2.connection.ConnectionState.CLOSED
        continue
    for ev in events:
        if isinstance(ev, h2.events.ResponseReceived):
            status = dict(ev.headers).get(b":status", b"?").decode()
        elif isinstance(ev, h2.events.StreamEnded):
            done_at = time.time()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            goaway = True
    out = conn.data_to_send()
    if out:
        sock.sendall(out)
idle = time.time() - (done_at or start)
print(f"status={status} goaway={goaway} closed={closed} idle_seconds={idle:.1f}")
