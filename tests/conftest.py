"""Test session set-up: one thread (tiny models are overhead-bound; more threads only contend)."""

import os

import torch

torch.set_num_threads(int(os.environ.get("TEXTLOC_TEST_THREADS", "1")))
