"""Request ids: unique, in time order, and never repeated by a forked worker."""

from __future__ import annotations

import os
import re
import time

from gateway.proxy import new_request_id


def test_ids_are_unique_well_formed_and_time_ordered() -> None:
    t0 = int(time.time() * 1000)
    ids = [new_request_id() for _ in range(20_000)]  # several 4 KiB entropy refills
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"tg-[0-9a-f]{27}", i) for i in ids)
    stamps = [int(i[3:14], 16) for i in ids]
    assert stamps == sorted(stamps) and t0 <= stamps[0] <= stamps[-1] <= t0 + 60_000
    assert len({i[14:] for i in ids}) == len(ids)  # the random part alone is unique too


def test_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_request_id()  # the parent has buffered entropy now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next ids and leave at once
        os.write(w, " ".join(new_request_id()[14:] for _ in range(50)).encode())
        os._exit(0)
    os.close(w)
    child = set(os.read(r, 65536).decode().split())
    os.close(r)
    os.waitpid(pid, 0)
    parent = {new_request_id()[14:] for _ in range(50)}
    assert len(child) == 50 and not child & parent
