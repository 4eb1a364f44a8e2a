"""House rule 1: math and data never import communication (checked in a fresh interpreter)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["distnn.nn", "distnn.optim", "distnn.data"])
def test_no_communication_imports(package):
    code = (
        f"import sys, {package}\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mpi4py', 'ray')\n"
        "       or m.startswith(('distnn.comm', 'distnn.train'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
