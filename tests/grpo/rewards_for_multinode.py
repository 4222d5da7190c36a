"""A reward for the multi-node test (``tests.grpo.rewards_for_multinode.where``), named by dotted path.

It scores nothing (weight 0 in the test) and reports where it ran: each call appends the Ray node id
and process id of the reward worker that made it to a JSON-lines log, so the test sees, from the
workers themselves, which nodes scored each step. On the ``hold_call``-th call made on node
``hold_node`` it writes ``<log>.held`` and waits there, so the test can remove that node while the
worker is in the middle of a batch (a deterministic "node lost mid-step").
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


def where(completions, references, log: str = "", hold_node: str = "", hold_call: int = 0, hold_s: float = 120.0,
          **columns):
    import ray

    node = ray.get_runtime_context().get_node_id()
    path = Path(log)
    with open(path, "a", encoding="utf-8") as fh:  # one short line per call: appends do not interleave
        fh.write(json.dumps({"node": node, "pid": os.getpid(), "n": len(completions), "t": time.time()}) + "\n")
    calls_here = sum(json.loads(line)["node"] == hold_node for line in path.read_text().splitlines())
    if hold_node and node == hold_node and calls_here == hold_call:
        Path(f"{log}.held").write_text(json.dumps({"node": node, "pid": os.getpid()}))
        time.sleep(hold_s)  # the node goes away under us
    return [0.0] * len(completions)
