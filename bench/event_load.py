"""Progress events under load: N processes each write events at R Hz into one experiments.db.

Every job process writes progress events while workers claim jobs and UIs read, so the store must
take many small concurrent transactions without losing one or failing with "database is locked".
Each writer numbers its events; afterwards every (writer, number) must be in the table exactly once.

    python bench/event_load.py --processes 8 --hz 50 --seconds 60 [--readers 1] [--out result.json]

Prints events written and found, errors, write latency (p50/p99/max) and the achieved rate.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcf.store.db import Store  # noqa: E402
from tcf.store.sql import connection  # noqa: E402


def writer(db: str, index: int, hz: float, seconds: float, start_at: float, out: mp.Queue) -> None:
    """Write events at ``hz`` until ``seconds`` pass; report count, errors and latencies."""
    store = Store(db)
    period = 1.0 / hz
    latencies: list[float] = []
    errors: list[str] = []
    n = 0
    while time.time() < start_at:
        time.sleep(0.001)
    t_next = time.perf_counter()
    end = t_next + seconds
    while t_next < end:
        t0 = time.perf_counter()
        try:
            store.log_event(f"bench:{index}", "progress", {"writer": index, "seq": n, "items_done": n})
            n += 1
        except Exception as e:  # noqa: BLE001 - counted and reported, the point of the benchmark
            errors.append(f"{type(e).__name__}: {e}")
        latencies.append(time.perf_counter() - t0)
        t_next += period
        time.sleep(max(0.0, t_next - time.perf_counter()))
    out.put({"writer": index, "written": n, "errors": errors, "latencies": latencies})


def reader(db: str, seconds: float, start_at: float, out: mp.Queue) -> None:
    """A UI-like reader: tail the events table every 100 ms, as tcf-tui does."""
    store = Store(db)
    last, reads, errors = 0, 0, []
    while time.time() < start_at:
        time.sleep(0.001)
    end = time.time() + seconds
    while time.time() < end:
        try:
            rows = store.events(after_id=last)
            last = rows[-1]["id"] if rows else last
            reads += 1
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
        time.sleep(0.1)
    out.put({"reader": True, "reads": reads, "errors": errors})


def run(db: Path, processes: int, hz: float, seconds: float, readers: int = 1) -> dict:
    Store(db).close()  # create and migrate before the writers race
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0  # every process imported and connected before the clock starts
    procs = [ctx.Process(target=writer, args=(str(db), i, hz, seconds, start_at, out)) for i in range(processes)]
    procs += [ctx.Process(target=reader, args=(str(db), seconds, start_at, out)) for _ in range(readers)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    writers = [r for r in reports if "writer" in r]
    store = Store(db)
    found: dict[tuple[int, int], int] = {}
    for row in connection(store).execute("SELECT payload_json FROM events WHERE source GLOB 'bench:*'"):
        p = json.loads(row[0])
        found[(p["writer"], p["seq"])] = found.get((p["writer"], p["seq"]), 0) + 1
    written = sum(r["written"] for r in writers)
    expected = {(r["writer"], s) for r in writers for s in range(r["written"])}
    lat = sorted(x for r in writers for x in r["latencies"])
    errors = [e for r in reports for e in r["errors"]]
    return {
        "processes": processes, "hz": hz, "seconds": seconds, "readers": readers,
        "target_events": int(processes * hz * seconds), "written": written, "found": len(found),
        "missing": len(expected - set(found)), "duplicated": sum(1 for c in found.values() if c > 1),
        "errors": len(errors), "locked_errors": sum("locked" in e for e in errors), "first_error": errors[:1],
        "events_per_s": written / seconds, "latency_ms": {
            "p50": 1e3 * statistics.median(lat), "p99": 1e3 * lat[int(0.99 * (len(lat) - 1))], "max": 1e3 * lat[-1]},
        "reads": sum(r.get("reads", 0) for r in reports),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--hz", type=float, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--readers", type=int, default=1)
    ap.add_argument("--db", type=Path, help="experiments.db to write (default: a temporary one)")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.db or Path(tmp) / "experiments.db", args.processes, args.hz, args.seconds, args.readers)
    lat = res["latency_ms"]
    print(f"{res['processes']} writers x {res['hz']:g} Hz x {res['seconds']:g} s (+{res['readers']} reader): "
          f"written {res['written']}/{res['target_events']}, found {res['found']}, missing {res['missing']}, "
          f"duplicated {res['duplicated']}, errors {res['errors']} (locked {res['locked_errors']})")
    print(f"rate {res['events_per_s']:.0f} events/s; write latency p50 {lat['p50']:.2f} ms, "
          f"p99 {lat['p99']:.2f} ms, max {lat['max']:.1f} ms; reader passes {res['reads']}")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
