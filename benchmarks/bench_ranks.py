"""What comparing ranks costs: messages, memory and time against world size and model size.

Each rank holds the report of a Llama-2-70B-shaped model (964 module calls,
723 parameters, recorded once on meta and loaded by every rank), then calls
``execorder.ranks.compare`` over a real gloo process group on this
machine's CPU: once with every rank alike (only the 48-byte digests move),
once with half the ranks running one module call fewer (two groups: one
record from each is broadcast). World sizes 2, 4 and 8, median of 5 calls
after one warm-up.

    python benchmarks/bench_ranks.py        # part of make bench
"""

from __future__ import annotations

import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
TARGET = f"{ROOT}/sample_models/llama.py:llama2_70b"
WORLDS = (2, 4, 8)
REPEATS = 5


def worker(rank: int, world: int, store: str, report_path: str, out: str) -> None:
    import execorder.ranks
    from execorder.analysis.ranks import RankRecord, record_of
    from execorder.report import load_report

    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    record = record_of(load_report(Path(report_path)))
    fewer = RankRecord(record.calls[:-1], record.status, record.backward)
    times = {}
    for case, mine in (("alike", record), ("two groups", record if rank < world // 2 else fewer)):
        spent = []
        for _ in range(REPEATS + 1):
            dist.barrier()
            start = time.perf_counter()
            result = execorder.ranks.compare(mine)
            spent.append(time.perf_counter() - start)
        times[case] = statistics.median(spent[1:])
        assert result.diverged is (case == "two groups")
    if rank == 0:
        Path(out).write_text(
            json.dumps({"times": times, "record_bytes": len(pickle.dumps(record))})
        )
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "llama70b.json"
        subprocess.run(
            [sys.executable, "-m", "execorder", "trace", TARGET, "--mode", "eager",
             "--input", "input_ids=int64[1,32]", "-f", "json", "-o", str(report)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        print("execorder.ranks.compare, Llama-2-70B-shaped report, gloo on CPU")
        print(f"{'world':>5}  {'alike':>10}  {'two groups':>10}  {'digests in':>10}  record")
        for world in WORLDS:
            out = Path(folder) / f"out-{world}.json"
            store = Path(folder) / f"store-{world}"
            mp.spawn(worker, args=(world, str(store), str(report), str(out)), nprocs=world)
            data = json.loads(out.read_text())
            alike, parted = data["times"]["alike"], data["times"]["two groups"]
            print(
                f"{world:>5}  {alike * 1e3:>7.2f} ms  {parted * 1e3:>7.2f} ms  "
                f"{48 * world:>8,} B  {data['record_bytes']:,} B a group"
            )


if __name__ == "__main__":
    main()
