#!/usr/bin/env python3
"""Drives the QEMU test guest's serial console (its root shell) over QEMU's chardev socket.

  console.py --socket PATH wait-login [--timeout 120]
      Waits for the root shell prompt (sending a newline every few seconds), then waits for
      systemd to finish booting and quiets the kernel's console messages (dmesg -n 1).
  console.py --socket PATH run [--timeout 60] [--] COMMAND...
      Runs COMMAND (its words joined by spaces, like ssh) in the guest's root shell, prints its
      output (stdout and stderr, merged, byte for byte) and exits with its exit status.
  console.py --socket PATH poweroff [--timeout 60]
      Powers the guest off and waits until QEMU closes the socket (it exits with -no-reboot).

Each call connects to the socket (run-qemu.sh --console-socket), does its work and disconnects;
QEMU accepts one client at a time, so calls queue up. The command runs in the shell itself
(cd and export persist across runs) with stdin from /dev/null. Exit statuses of console.py itself:
124 timeout (the command is interrupted with Ctrl-C), 125 cannot connect or the guest went away.
The socket may also come from $VIRIDIAN_CONSOLE_SOCKET.
"""
import argparse
import base64
import os
import re
import secrets
import socket
import sys
import time

PROMPT = re.compile(rb"root@viridian-guest:[^\r\n]*# $")
ANSI = re.compile(rb"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")
TIMEOUT, NO_GUEST = 124, 125


class GuestGone(Exception):
    """QEMU closed the console socket."""


class Console:
    def __init__(self, path, deadline):
        self.deadline = deadline
        self.buf = b""
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                self.sock.close()
                if time.monotonic() > deadline:
                    fail(NO_GUEST, f"cannot connect to {path}: {e}")
                time.sleep(0.2)

    def send(self, data):
        self.sock.sendall(data)

    def read_until(self, test, until):
        """Reads into self.buf until test(self.buf) is true (returns its value) or time `until`."""
        while True:
            hit = test(self.buf)
            if hit:
                return hit
            left = min(until, self.deadline) - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise GuestGone()
            self.buf += chunk

    def run(self, command):
        """Runs one shell command; returns (output bytes, exit status)."""
        nonce = secrets.token_hex(8)
        start = f"__S_{nonce}".encode()
        end = re.compile(rb"__E_" + nonce.encode() + rb"_(\d+)\r?\n")
        script = base64.b64encode(command.encode()).decode()
        # One line, so nothing arrives while it runs (the tty would echo it into the output).
        # The echoed line itself shows __S""_ and __E""_, never the markers; stty -echo -onlcr
        # makes the output between the markers exactly what the command wrote.
        line = (f"stty -echo -onlcr 2>/dev/null; echo __S\"\"_{nonce}; "
                f"eval \"$(echo {script} | base64 -d)\" </dev/null; "
                f"echo __E\"\"_{nonce}_$?; stty echo onlcr 2>/dev/null\n")
        self.buf = b""
        self.send(b"\x15" + line.encode())   # Ctrl-U first: drop any half-typed input
        def started(b):
            i = b.find(start)
            if i < 0:
                return None
            m = re.compile(rb"\r?\n").match(b, i + len(start))
            return m.end() if m else None
        begin = self.read_until(started, self.deadline)
        if begin:
            m = self.read_until(lambda b: end.search(b, begin), self.deadline)
            if m:
                return self.buf[begin:m.start()], int(m.group(1))
        self.send(b"\x03")                      # interrupt the command, keep the shell usable
        partial = self.buf[begin:] if begin else b""
        sys.stderr.buffer.write(partial)
        fail(TIMEOUT, f"timed out running {command!r}")


def fail(code, message):
    print(f"console.py: {message}", file=sys.stderr)
    sys.exit(code)


def wait_login(con, started):
    while True:
        con.send(b"\n")
        if con.read_until(lambda b: PROMPT.search(ANSI.sub(b"", b)), time.monotonic() + 3):
            break
        if time.monotonic() > con.deadline:
            tail = ANSI.sub(b"", con.buf[-300:]).decode(errors="replace")
            fail(TIMEOUT, f"no root prompt within the timeout; last output:\n{tail}")
    out, _ = con.run("dmesg -n 1; systemctl is-system-running --wait")
    state = out.decode(errors="replace").strip().splitlines()
    print(f"console.py: logged in after {time.monotonic() - started:.1f} s, system "
          f"{state[-1] if state else 'unknown'}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", default=os.environ.get("VIRIDIAN_CONSOLE_SOCKET"),
                   help="the console socket of run-qemu.sh --console-socket")
    sub = p.add_subparsers(dest="action", required=True)
    w = sub.add_parser("wait-login", help="wait for the root shell")
    w.add_argument("--timeout", type=float, default=120)
    r = sub.add_parser("run", help="run a shell command, exit with its status")
    r.add_argument("--timeout", type=float, default=60)
    r.add_argument("command", nargs=argparse.REMAINDER)
    o = sub.add_parser("poweroff", help="power the guest off, wait for QEMU to exit")
    o.add_argument("--timeout", type=float, default=60)
    a = p.parse_args()
    if not a.socket:
        p.error("--socket PATH (or $VIRIDIAN_CONSOLE_SOCKET) is required")
    started = time.monotonic()
    con = Console(a.socket, started + a.timeout)
    if a.action == "wait-login":
        wait_login(con, started)
        return 0
    if a.action == "poweroff":
        con.send(b"\x15poweroff\n")
        try:
            con.read_until(lambda b: False, con.deadline)
        except GuestGone:
            return 0
        fail(TIMEOUT, "the guest did not power off within the timeout")
    words = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not words:
        p.error("run needs a command")
    out, status = con.run(" ".join(words))
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GuestGone:
        fail(NO_GUEST, "the console socket closed (did the guest power off?)")
    except (ConnectionError, OSError) as e:
        fail(NO_GUEST, f"console socket: {e}")
