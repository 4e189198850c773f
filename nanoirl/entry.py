"""
The first import of every entry point (train_sft.py, train_airl.py, train_mlirl.py, python -m
nanoirl.generate, python -m nanoirl.data), before torch: a Ctrl-C during the seconds that
`import torch` takes ends in one line instead of a traceback (and SIGINT's exit status). Once a
script's main runs, nanoirl/run.py:script (or nanoirl.data's main) handles Ctrl-C itself.
No torch and nothing of nanoirl here: it must be in place before they load.
"""
import sys


def interrupted_while_starting(kind, error, tb):
    if issubclass(kind, KeyboardInterrupt):
        print("error: interrupted while starting; nothing was written", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, tb)


sys.excepthook = interrupted_while_starting
