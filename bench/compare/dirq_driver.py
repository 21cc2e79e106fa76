"""Driver for the anchor `dirq` (Python port of Directory::Queue; installed by `run setup` into a
temporary virtualenv). Prints one `key=value` line prefixed `RESULT `.

    python dirq_driver.py create DIR N   add N requests to DIR/requests
    python dirq_driver.py drain DIR      lock + get + add result to DIR/results + remove, until empty

dirq has no results or notifications of its own: "fulfil" is adding the result as an element of a
second queue, which costs it the same temp-dir + rename as adding a request. dirq never fsyncs.
"""
import json
import sys
import time

from dirq.queue import Queue

SCHEMA = {"body": "string"}


def out(**kw):
    print("RESULT " + " ".join(f"{k}={v}" for k, v in kw.items()), flush=True)


def create(d, n):
    q = Queue(d + "/requests", schema=SCHEMA)
    start = time.time()
    for i in range(n):
        q.add({"body": json.dumps({"calculate": f"{i}+{i}", "n": i})})
    end = time.time()
    out(mode="create", count=n, start=f"{start:.6f}", end=f"{end:.6f}", secs=f"{end - start:.4f}",
        jobs_per_s=f"{n / (end - start):.1f}")


def drain(d):
    q = Queue(d + "/requests", schema=SCHEMA)
    results = Queue(d + "/results", schema=SCHEMA)
    start = time.time()
    end = start
    count = 0
    while True:
        got = 0
        for name in q:
            if not q.lock(name):
                continue
            try:
                req = json.loads(q.get(name)["body"])
            except OSError:
                continue  # removed by another worker between listing and lock
            results.add({"body": "42"})
            q.remove(name)
            got += 1
            count += 1
            end = time.time()
        if got == 0 and q.count() == 0:
            break
    out(mode="drain", count=count, start=f"{start:.6f}", end=f"{end:.6f}", secs=f"{end - start:.4f}",
        jobs_per_s=f"{count / max(end - start, 1e-9):.1f}")


if __name__ == "__main__":
    mode, d = sys.argv[1], sys.argv[2]
    if mode == "create":
        create(d, int(sys.argv[3]))
    elif mode == "drain":
        drain(d)
    else:
        sys.exit("mode: create|drain")
