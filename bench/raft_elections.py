#!/usr/bin/env python3
"""How often a three-replica Raft cluster elects a new leader on a busy machine, for several
election timings (security review M6: "on busy nodes, Raft leadership changes more often").

Each timing runs the same scenario: three `portico-raft-node` processes over mutual TLS on
loopback, a proposal every 100 ms from replica 0 (forwarded to the leader), and a noise
load beside them: CPU hogs (busy loops, `--hogs`, default twice the cores) and a writer that
fsyncs 1 MiB blocks (`--fsync-hog`), which is what a node shared with other tenants' pods
looks like. Every term increment is an election that was started; with nothing killed,
every one of them is spurious. Optionally the leader can be frozen (SIGSTOP) for
`--stall-ms` every `--stall-every` seconds, a stall like a CPU-throttled or disk-blocked
process.

Usage: bench/raft_elections.py [--duration 120] [--timing 100:600:1200 --timing 100:1000:2000]
Needs a built node: cargo build --release -p portico-raft --bin portico-raft-node
(or --binary PATH). Prints one line per timing and a Markdown table.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def sh(*args, cwd=None):
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_pki(dir, n):
    """A P-256 CA and one certificate per node naming localhost and 127.0.0.1."""
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=bench-ca",
       cwd=dir)
    for i in range(n):
        ext = os.path.join(dir, f"ext-{i}.cnf")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n"
                    "basicConstraints=CA:FALSE\n")
        sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", f"node-{i}.key", "-out", f"node-{i}.csr", "-subj", f"/CN=portico-{i}",
           cwd=dir)
        sh("openssl", "x509", "-req", "-in", f"node-{i}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
           "-CAcreateserial", "-out", f"node-{i}.crt", "-days", "1", "-extfile", ext, cwd=dir)


def free_port():
    # A bench, not a test: a lost race here fails loudly at start and is run again.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, binary, dir, i, addrs, timing):
        heartbeat, emin, emax = timing
        self.log = open(os.path.join(dir, f"node-{i}.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "--data-dir", os.path.join(dir, f"data-{i}"), "--listen", addrs[i],
             "--initial-members", ",".join(addrs), "--ca", os.path.join(dir, "ca.crt"),
             "--cert", os.path.join(dir, f"node-{i}.crt"),
             "--key", os.path.join(dir, f"node-{i}.key"),
             "--heartbeat-ms", str(heartbeat), "--election-min-ms", str(emin),
             "--election-max-ms", str(emax)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.lock = threading.Lock()

    def command(self, line):
        with self.lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def hogs(count, fsync_dir):
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    if fsync_dir:
        script = ("import os\n"
                  f"p = os.path.join({fsync_dir!r}, 'fsync-hog')\n"
                  "block = os.urandom(1 << 20)\n"
                  "while True:\n"
                  "    with open(p, 'wb') as f:\n"
                  "        for _ in range(8):\n"
                  "            f.write(block); f.flush(); os.fsync(f.fileno())\n")
        procs.append(subprocess.Popen([sys.executable, "-c", script]))
    return procs


def run(binary, timing, args):
    dir = tempfile.mkdtemp(prefix="portico-raft-elections-")
    nodes, noise = [], []
    try:
        make_pki(dir, 3)
        addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        nodes = [Node(binary, dir, i, addrs, timing) for i in range(3)]
        deadline = time.time() + 60
        while time.time() < deadline:
            states = [n.command("status") for n in nodes]
            if any(s.get("is_leader") for s in states):
                break
            time.sleep(0.2)
        else:
            raise SystemExit("no leader within 60 s")
        # The first election is not counted: settle, then start the noise.
        time.sleep(2)
        start_terms = [n.command("status")["term"] for n in nodes]
        noise = hogs(args.hogs, dir if args.fsync_hog else None)
        started = time.time()
        proposals, failures, next_stall, stalls = 0, 0, started + args.stall_every, 0
        while time.time() - started < args.duration:
            answer = nodes[0].command(f"propose 1 {proposals} 1")
            proposals += 1
            failures += 0 if answer.get("ok") else 1
            if args.stall_ms and time.time() >= next_stall:
                leader = next((n for n in nodes if n.command("status").get("is_leader")), None)
                if leader:
                    leader.proc.send_signal(signal.SIGSTOP)
                    time.sleep(args.stall_ms / 1000)
                    leader.proc.send_signal(signal.SIGCONT)
                    stalls += 1
                next_stall = time.time() + args.stall_every
            time.sleep(0.1)
        for p in noise:
            p.kill()
        end_terms = [n.command("status")["term"] for n in nodes]
        elections = max(end_terms) - max(start_terms)
        return {"timing": timing, "elections": elections, "proposals": proposals,
                "failed": failures, "stalls": stalls, "seconds": round(time.time() - started)}
    finally:
        for p in noise:
            p.kill()
        for n in nodes:
            n.stop()
        shutil.rmtree(dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--timing", action="append",
                        help="heartbeat:election_min:election_max in ms (repeatable)")
    parser.add_argument("--hogs", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--fsync-hog", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--stall-ms", type=int, default=0)
    parser.add_argument("--stall-every", type=float, default=10)
    parser.add_argument("--binary")
    args = parser.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "target"))
    binary = args.binary or os.path.join(target, "release", "portico-raft-node")
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} missing: cargo build --release -p portico-raft --bin portico-raft-node")
    timings = [tuple(int(x) for x in t.split(":")) for t in (args.timing or ["100:600:1200", "100:1000:2000"])]
    rows = []
    for timing in timings:
        result = run(binary, timing, args)
        print(json.dumps(result), flush=True)
        rows.append(result)
    print(f"\n{args.duration:.0f} s each, {args.hogs} CPU hogs, fsync hog {'on' if args.fsync_hog else 'off'}"
          + (f", leader frozen {args.stall_ms} ms every {args.stall_every:g} s" if args.stall_ms else ""))
    print("| heartbeat / election timeout (ms) | elections started | proposals (failed) |")
    print("|---|---|---|")
    for r in rows:
        h, lo, hi = r["timing"]
        print(f"| {h} / {lo}-{hi} | {r['elections']} | {r['proposals']} ({r['failed']}) |")


if __name__ == "__main__":
    main()
