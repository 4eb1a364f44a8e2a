"""console.err writes a line whole: under PYTHONUNBUFFERED, print() writes the text and its
newline separately and mpiexec interleaves two ranks' lines (a CI run saw one rank's line glued
to another's)."""

import subprocess
import sys

from distnn import console


class Recorder:
    def __init__(self):
        self.writes = []
        self.flushed = 0

    def write(self, text):
        self.writes.append(text)
        return len(text)

    def flush(self):
        self.flushed += 1


def test_one_write_per_line(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(sys, "stderr", rec)
    console.err("distnn train [rank 1]: bad value")
    assert rec.writes == ["distnn train [rank 1]: bad value\n"]
    assert rec.flushed == 1


def first_message(line_code: str) -> int:
    """Run LINE_CODE in an unbuffered interpreter whose stderr is a packet socket (each write(2)
    is one message); return the length of the first message."""
    code = ("import os, socket, sys\n"
            "from distnn import console\n"
            "a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
            "os.dup2(a.fileno(), 2)\n"
            f"{line_code}\n"
            "print(len(b.recv(4096)))\n")
    out = subprocess.run([sys.executable, "-u", "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    return int(out.stdout)


def test_one_write_syscall_unbuffered():
    """On the real stderr of an unbuffered interpreter, one line is one write(2), where print
    takes two."""
    assert first_message("print('x' * 100, file=sys.stderr)") == 100
    assert first_message("console.err('x' * 100)") == 101
