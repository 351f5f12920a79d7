#!/usr/bin/env python3
"""Splits profiles of the ingest bench into the parts of an event's path.

    perf script -i X.data | profile_parts.py fold > X.folded
    profile_parts.py table BENCH_LOG CASE NOOP.folded TALLY.folded

`fold` turns `perf script` output (call stacks, leaf first) into folded
stacks, root first, one `frame;frame;... count` line per distinct stack.
`table` sorts each stack into the first part of PARTS whose pattern one of
its frames matches, and prints each part's share of the samples and its CPU
time per event: the share times the CPU per event that the bench measured
for that run (the last two figures of the case's line in BENCH_LOG).
"""

import collections
import re
import sys

# (part, pattern), first match wins: the ingest core's steps before the
# layers that carry them.
PARTS = [
    # BLAKE3's assembly has no unwind information, so its samples have no
    # stack: nearly all of them are visitor ids (the rest, API key checks).
    ("validation + enrichment", r"pipeline::Pipeline::run|^blake3_"),
    ("rollups", r"rollup::Rollups::apply"),
    ("realtime counters", r"tally_server::realtime::"),
    ("sessions", r"::sessionize"),
    ("events encoded for the store", r"PreparedEvent::new"),
    ("writer: dedup window", r"DedupWindow"),
    ("writer: journal, memtable, fdatasync", r"fjall::batch::WriteBatch::commit"),
    ("writer: grouping, packs", r"embedded::events::Writer::"),
    ("store: memtable flush (LZ4)", r"fjall::flush|lsm_tree::.*flush"),
    ("store: compaction", r"compaction"),
    ("ingest core: rest", r"ingest::Ingest::track"),
    ("server: auth, site, limits", r"IngestApi::facts|principal|authenticate|limits::"),
    ("request decoding", r"ProstDecoder<tally_proto::v1::TrackRequest>|TrackRequest as prost::message::Message>::merge"),
    ("response encoding + decoding", r"TrackResponse|TrackStreamResponse"),
    ("client: request encoding", r"ProstEncoder<tally_proto::v1::TrackRequest>|EncodeBody"),
    ("dropping requests", r"drop_in_place<tally_proto::v1::"),
    ("HTTP/2, TCP, tokio (both ends)", r"h2::|hyper|mio::|tokio::|tcp_|sock_|__sys_|epoll|futex|schedule"),
]
OTHER = "other"


def clean(frame):
    frame = re.sub(r"\+0x[0-9a-f]+$", "", frame)
    return re.sub(r"::h[0-9a-f]{16}$", "", frame)


def fold():
    counts = collections.Counter()
    stack = []

    def flush():
        if stack:
            counts[";".join(reversed(stack))] += 1
            stack.clear()

    for line in sys.stdin:
        if not line.strip():
            flush()
        elif line[0] in " \t":
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                stack.append(clean(parts[1].rsplit(" (", 1)[0]).replace(";", ","))
    flush()
    for stack_text, count in counts.most_common():
        print(f"{stack_text} {count}")


def shares(path):
    compiled = [(name, re.compile(pattern)) for name, pattern in PARTS]
    samples = collections.Counter()
    total = 0
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            stack_text, _, count = line.rstrip("\n").rpartition(" ")
            count = int(count)
            total += count
            part = next((name for name, rx in compiled if rx.search(stack_text)), OTHER)
            samples[part] += count
    return samples, total


def table(log, case, noop_path, tally_path):
    label = {"batch": "Track, batches of 100", "stream": "TrackStream, 100 per msg", "unary": "Track, single events"}[case]
    with open(log, encoding="utf-8") as lines:
        row = next(line for line in lines if line.startswith(label))
    noop_rate, tally_rate, _, noop_cpu, tally_cpu = (float(x) for x in re.findall(r"[0-9.]+", row[len(label):]))
    runs = [("no-op", noop_cpu, *shares(noop_path)), ("tally", tally_cpu, *shares(tally_path))]
    print(f"\nCPU per event, whole process (clients and server), case {case}:")
    print(f"{'part':<40} {'no-op us/ev':>11} {'share':>6} {'tally us/ev':>11} {'share':>6}")
    for name in [name for name, _ in PARTS] + [OTHER]:
        cells = []
        for _, cpu, samples, total in runs:
            share = samples[name] / total if total else 0.0
            cells.append(f"{cpu * share:>11.2f} {100 * share:>5.1f}%")
        if any(samples[name] for _, _, samples, _ in runs):
            print(f"{name:<40} {cells[0]} {cells[1]}")
    print(f"{'total':<40} {noop_cpu:>11.2f} {'':>6} {tally_cpu:>11.2f}")
    print(f"samples: no-op {runs[0][3]}, tally {runs[1][3]}")
    print(f"cores busy (events/s times CPU per event): no-op {noop_rate * noop_cpu / 1e6:.2f}, "
          f"tally {tally_rate * tally_cpu / 1e6:.2f}; with both at the same, the ratio of rates "
          f"would be the ratio of CPU per event, {100 * noop_cpu / tally_cpu:.0f}%")


if __name__ == "__main__":
    if sys.argv[1:2] == ["fold"]:
        fold()
    elif sys.argv[1:2] == ["table"] and len(sys.argv) == 6:
        table(*sys.argv[2:])
    else:
        sys.exit(__doc__)
