"""Smoke test of scripts/soak: a short soak on a small corpus passes (no errors, bounded memory growth).

Two index builds with the real model plus 5 s of traffic; longer when the machine is busy, since the run always
waits for its mid-run full build to finish.
"""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_short_soak_passes():
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "soak"), "--duration", "5", "--clients", "4",
           "--warmup", "3", "--corpus", "seeds"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "| **all** |" in p.stdout and "PASS: 0 errors" in p.stdout


def test_fuzz_passes():
    """scripts/fuzz: issue 25's hostile inputs and 30 random mutations on one worker and on two, no 5xx
    (test_lifecycle covers hostile input on both servers in detail; `scripts/fuzz` alone runs 300)."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fuzz"), "--random", "30"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0 and "PASS: 0 failures" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
