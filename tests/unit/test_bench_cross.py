"""bench_cross's pure parts: percentiles, rows and their targets, the four-worker inventory, iperf3's figure,
the file ceiling's formula and raw copy, and the load generators it runs on the client host (here against servers
on loopback, port 0)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading

import pytest

from bench import bench_cross, bench_sockets, cross_remote
from labkit import REPO, inventory
from labnodes.mathserver import MathServer


@pytest.mark.parametrize("q, expected", [(0.5, 50), (0.99, 99), (1.0, 100), (0.001, 1), (0.995, 100)])
def test_percentile_is_the_nearest_rank(q, expected):
    assert bench_cross.percentile(range(100, 0, -1), q) == expected


def test_percentile_of_one_value_and_of_none():
    assert bench_cross.percentile([3.5], 0.99) == 3.5
    with pytest.raises(ValueError):
        bench_cross.percentile([], 0.5)


@pytest.mark.parametrize("target, value, baseline, ok, text", [
    (("ratio", "<=", 1.2), 1.1, 1.0, True, "ratio <= 1.2"),
    (("ratio", "<=", 1.2), 1.3, 1.0, False, "ratio <= 1.2"),
    (("ratio", ">=", 1.5), 300.0, 200.0, True, "ratio >= 1.5"),
    (("value", ">=", 30000), 29999.0, 60000.0, False, ">= 30000 req/s"),
    (("value", "<=", 10), 9.0, 1.0, True, "<= 10 req/s"),
    (None, 5.0, 1.0, None, ""),
])
def test_a_row_checks_its_target_against_the_ratio_or_the_value(target, value, baseline, ok, text):
    r = bench_cross.row("x", value, "req/s", "base", baseline, target)
    assert r["ok"] is ok and r["target"] == text and r["ratio"] == pytest.approx(value / baseline)
    assert set(r) == {"bench", "value", "unit", "baseline_name", "baseline", "ratio", "target", "ok"}


def test_a_row_keeps_plot_data_and_survives_a_zero_baseline():
    r = bench_cross.row("x", 2.0, "ms", "base", 0.0, samples=[1.0, 2.0])
    assert r["ratio"] == 0.0 and r["samples"] == [1.0, 2.0]
    with pytest.raises(ValueError):
        bench_cross.row("x", 1.0, "ms", "base", 1.0, ("ratio", "<", 1))


def test_add_workers_gives_a_relocated_inventory_four_workers_at_free_addresses(tmp_path):
    path = inventory.relocate(REPO / "inventory" / "netns", tmp_path / "netns", "xb", 83)
    hosts_yml = path / "hosts.yml"
    hosts_yml.write_text(bench_cross.add_workers(hosts_yml.read_text(), 4))
    inv = inventory.load(path)  # Ansible parses it, and labkit's rules (unique addresses in the subnet) hold
    assert list(inv.groups["workers"]) == ["worker1", "worker2", "worker3", "worker4"]
    assert [inv.host(w).address for w in inv.groups["workers"]] == [f"10.77.83.{n}" for n in (11, 12, 13, 14)]
    assert len(inv.hosts) == 10 and inv.cluster == "xb"


def test_add_workers_refuses_a_taken_address():
    text = "    workers:\n      hosts:\n        worker1: {ansible_host: 10.0.0.11}\n    x: {ansible_host: 10.0.0.12}\n"
    with pytest.raises(ValueError, match="10.0.0.12"):
        bench_cross.add_workers(text, 2)
    assert bench_cross.add_workers(text, 1) == text


def test_iperf3_figure_and_the_median_run():
    assert bench_cross.iperf3_mb_per_s({"end": {"sum_received": {"bits_per_second": 8e9}}}) == 1000.0
    runs = [{"r": 3, "n": "a"}, {"r": 1, "n": "b"}, {"r": 2, "n": "c"}, {"r": 9, "n": "d"}]
    assert bench_cross.median_by(runs, "r")["n"] == "c"
    assert bench_cross.median_by(runs[:3], "r")["n"] == "c"


async def _echo_server():
    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_the_load_generator_counts_every_request_and_every_wrong_answer():
    async def main():
        server = await _echo_server()
        port = server.sockets[0].getsockname()[1]
        async with server:
            good = await cross_remote._load("127.0.0.1", port, 7, 5, b"48,18\n", b"48,18\n")
            bad = await cross_remote._load("127.0.0.1", port, 3, 2, b"48,18\n", b"OK gcd=6 lcm=144\n")
        return good, bad
    good, bad = asyncio.run(main())
    assert good["requests"] == 35 == len(good["latency_ms"]) and good["wrong"] == 0 and good["seconds"] > 0
    assert bad["wrong"] == 3 * (2 + 1)  # the warm-up request of each connection is checked too


def test_the_load_generator_gets_the_math_servers_answer():
    server = MathServer("127.0.0.1", 0)
    host, port = server.start_in_thread()
    try:
        got = asyncio.run(cross_remote._load(host, port, 20, 3, b"48,18\n", b"OK gcd=6 lcm=144\n"))
    finally:
        server.close()
    assert got["requests"] == 60 and got["wrong"] == 0


def test_the_paced_load_offers_its_rate_and_every_request_is_answered_and_checked():
    server = MathServer("127.0.0.1", 0)
    host, port = server.start_in_thread()
    try:
        got = asyncio.run(cross_remote._paced(host, port, 20, 400, 1.0, b"48,18\n", b"OK gcd=6 lcm=144\n"))
        bad = asyncio.run(cross_remote._paced(host, port, 5, 50, 0.5, b"48,18\n", b"48,18\n"))
    finally:
        server.close()
    assert 380 <= got["sent"] <= 420 and got["requests"] == got["sent"] == len(got["latency_ms"])
    assert got["wrong"] == 0
    assert bad["wrong"] == bad["sent"] + 5  # the warm-up request of each connection is checked too


def test_the_paced_load_times_a_request_from_when_it_was_due_so_a_queue_shows():
    """A server that answers each connection's lines one after another, 0.1 s each, offered twice that: the
    requests queue up. Timed from when each was sent after the last reply (closed loop), every request would
    look like 0.1 s; timed from its schedule, the queue shows."""
    async def main():
        async def handle(reader, writer):
            while line := await reader.readline():
                await asyncio.sleep(0.1)
                writer.write(line)
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await cross_remote._paced("127.0.0.1", port, 2, 40, 0.5, b"x\n", b"x\n")
    got = asyncio.run(main())
    ms = sorted(got["latency_ms"])
    assert got["requests"] == got["sent"] == 20 and got["wrong"] == 0
    assert ms[0] >= 95 and ms[-1] >= 500  # the 10th request of a connection waited for the nine before it


@pytest.mark.parametrize("counts, steps", [((4, 2, 1), [4, 2, 1, 1, 2, 4]), ((1, 4), [4, 1, 1, 4]), ((2,), [2, 2])])
def test_worker_counts_are_measured_down_then_back_up(counts, steps):
    assert bench_cross.worker_steps(counts) == steps


def test_the_ring_benchmarks_numbers_take_its_laps_and_its_chain_message_is_one_a_node_accepts():
    from labnodes import ring_lap, ring_node
    from tests.unit.test_ring import make_ring

    nodes = make_ring(["pyro1", "pyro2", "pyro3"])
    a, b = (int(x) for x in cross_remote.RING_NUMBERS.split(","))
    res = nodes["pyro1"].start("xbench", [a, b], 10.0)
    assert (res["gcd"], res["laps"]) == (cross_remote.RING_GCD, cross_remote.RING_LAPS)
    msg = cross_remote.ring_message()
    assert ring_lap.check_message(msg) is msg and len(msg["trace"]) == 1 and msg["lap"] == 2
    # what a middle node does with it: relays it on (its successor here answers with a receipt)
    node = ring_node.RingNode("pyro3", "pyro1", forward=lambda m, t: ring_lap.receipt(m))
    assert node.relay(msg, 5.0) == {"id": msg["id"], "lap": 2, "back_at": "pyro1"}


def test_the_raw_copy_under_the_file_ceiling_writes_every_byte_and_counts_both_ends_cpu(tmp_path):
    src, dest = tmp_path / "src.bin", tmp_path / "dest.bin"
    src.write_bytes(bytes(range(256)) * 12345)  # not a multiple of the reader's buffer
    listener = socket.create_server(("127.0.0.1", 0))
    reader = threading.Thread(target=cross_remote._raw_reader, args=(listener, str(dest), 2))
    reader.start()
    try:
        got = cross_remote._raw_send("127.0.0.1", listener.getsockname()[1], str(src))
        assert dest.read_bytes() == src.read_bytes()
        src.write_bytes(b"shorter")  # a second copy replaces the first whole
        again = cross_remote._raw_send("127.0.0.1", listener.getsockname()[1], str(src))
    finally:
        reader.join(10)
        listener.close()
    assert dest.read_bytes() == b"shorter" and not reader.is_alive()
    assert got["bytes"] == 256 * 12345 and again["bytes"] == 7
    assert got["seconds"] > 0 and got["cpu"] > 0 and 0 <= got["fsync"] < got["seconds"]


def test_the_two_core_ceiling_is_bound_by_the_raw_copys_time_or_by_all_the_work_on_two_cores():
    ceiling = bench_sockets.two_core_ceiling
    assert ceiling(1000, raw_wall=1.0, raw_cpu=0.4, hash_cpu=0.5) == 1000  # the raw copy's own time
    assert ceiling(1000, raw_wall=0.5, raw_cpu=1.2, hash_cpu=0.9) == pytest.approx(1000 / 1.5)  # (1.2 + 2 x 0.9) / 2
    # the sender's own pass, where given, counts instead of one of the two: (1.2 + 1.3 + 0.9) / 2
    assert ceiling(1000, raw_wall=0.5, raw_cpu=1.2, hash_cpu=0.9, send_hash_cpu=1.3) == pytest.approx(1000 / 1.7)
    # a hash is sequential: one slow pass bounds the copy whatever the cores
    assert ceiling(1000, raw_wall=0.5, raw_cpu=0.1, hash_cpu=0.1, send_hash_cpu=2.0) == pytest.approx(1000 / 2.0)


def test_hashing_a_file_as_a_program_reads_it_reads_it_all_and_is_timed_in_cpu_seconds(tmp_path):
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * ((3 << 12) + 1)  # 3 MiB and 256 bytes: not whole buffers
    path.write_bytes(data)
    cpu, digest = cross_remote.sha256_file_cpu_seconds(str(path))
    assert digest == hashlib.sha256(data).hexdigest()
    assert 0 < cpu < float("inf")


def test_one_sha256_pass_is_timed_in_cpu_seconds_also_for_a_size_that_is_not_whole_blocks():
    assert cross_remote.sha256_cpu_seconds((5 << 20) + 3) > 0
    assert cross_remote.sha256_cpu_seconds(0) >= 0  # no block at all: only the remainder, empty


def test_the_file_ceiling_comes_from_the_copies_in_memory_and_the_disk_rows_have_the_disks_own_baseline():
    # 100 MB; in memory a raw copy takes 0.1 s wall and 0.2 s CPU; on disk the same copy took 0.5 s (new blocks)
    one = {"mem_raw_up": 0.1, "mem_raw_up_cpu": 0.2, "mem_raw_up_fsync": 0.0, "mem_raw_down": 0.1,
           "mem_raw_down_cpu": 0.2, "mem_raw_down_fsync": 0.0, "mem_send": 450.0, "mem_get": 420.0,
           "mem_send_wall": 300.0, "mem_get_wall": 300.0,
           "disk_raw_up": 0.5, "disk_raw_up_cpu": 0.2, "disk_raw_up_fsync": 0.3, "disk_raw_down": 0.25,
           "disk_raw_down_cpu": 0.2, "disk_raw_down_fsync": 0.1, "disk_send": 150.0, "disk_get": 100.0,
           "disk_send_wall": 140.0, "disk_get_wall": 90.0, "scp_up": 100.0, "scp_down": 80.0,
           "iperf_up": 2000.0, "iperf_down": 2000.0}
    figures = {k: [v * 0.9, v, v * 1.1] for k, v in one.items()}  # three runs; the medians are `one`
    rows = {r["bench"]: r for r in bench_cross.file_rows(figures, 0.15, 0.2, 100, 3, "client", "sockserver")}
    send = next(r for name, r in rows.items() if name.startswith("file send, files in memory"))
    assert send["baseline"] == pytest.approx(100 / 0.25)  # (0.2 + 2 x 0.15) / 2 s: from the copy in memory
    assert send["ok"] and send["runs"] == figures["mem_send"] and send["target"] == "ratio >= 0.9"
    get = rows["file get, files in memory, against the two-core ceiling"]
    assert get["ratio"] == pytest.approx(420 / 400) and get["ok"]
    assert rows["file get against file send, files in memory"]["ok"]  # 420 / 450 = 0.93
    on_disk = rows["file get, files on disk"]
    assert on_disk["baseline"] == pytest.approx(100 / 0.25) and on_disk["ok"] is None  # no target on the disk
    assert rows["file get against file send, files on disk"]["ok"] is None
    assert rows["file get on disk (JSON MB/s)"]["ok"] is False  # 100 / 80 < 1.5: scp's target is on the disk
    counted = rows["file send, files in memory, against the ceiling that counts the sender's read"]
    assert counted["baseline"] == pytest.approx(100 / 0.275) and counted["ok"] is None  # (0.2 + 0.2 + 0.15) / 2
    figures["mem_send"] = [350.0] * 3  # below 0.9 of the ceiling (360): the target fails
    rows = bench_cross.file_rows(figures, 0.15, 0.2, 100, 3, "c", "s")
    assert not next(r for r in rows if "send, files in memory" in r["bench"])["ok"]
