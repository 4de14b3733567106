"Fixtures shared by test files."
import os, subprocess, sys
import pytest

HOLD = "from vlprompt.train import run_lock; import sys, time\nwith run_lock(sys.argv[1]): print('held', flush=True); time.sleep(600)"

@pytest.fixture
def another_writer():
    "Start another process that holds the run lock of a folder (as a launcher writing it would) until killed."
    procs = []
    def start(folder):
        proc = subprocess.Popen([sys.executable, '-c', HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, 'OMP_NUM_THREADS': '1'})
        procs.append(proc)
        assert proc.stdout.readline() == 'held\n', 'the lock holder did not start'
        return proc
    yield start
    for proc in procs:
        if proc.poll() is None: proc.kill()
        proc.wait()
