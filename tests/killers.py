"""The start of a training script that SIGKILLs its own process right after the trainer saves the
state of step `kill_at` (an expression, e.g. "int(sys.argv[2])"): the kill-and-resume tests of
the trainer, on one process and under torchrun (where torchrun then stops the other ranks)."""


def kill_after_save(kill_at: str) -> str:
    return f"""
import os, signal, sys
import selftrain.train.state as st
real = st.save_state
def save_then_die(root, step, *a, **k):
    path = real(root, step, *a, **k)
    if step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
st.save_state = save_then_die
"""
