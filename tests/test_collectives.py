"""Star and ring allreduce over ZeroMQ: the sums of torch.distributed's gloo, Q80 within its bound,
clear errors naming the peer that failed, and no frame of an aborted step summed into a later one."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import zmq

from edgecloud.kernels import q80
from edgecloud.kernels.collectives import CollectiveError, PeerTimeout, RingAllreduce, StarAllreduce
from edgecloud.kernels.curve import GroupKeys, write_group_keys
from edgecloud.kernels.frames import CONTRIBUTE, Header

sys.path.insert(0, str(Path(__file__).parent))
from collective_rank import rank_input

RANK_SCRIPT = str(Path(__file__).parent / "collective_rank.py")


def in_threads(fns: list[Callable[[], object]]) -> list[object]:
    """Each function in its own thread; the results (or the exceptions raised), in order."""
    out: list[object] = [None] * len(fns)

    def go(i: int) -> None:
        try:
            out[i] = fns[i]()
        except Exception as exc:  # returned for the test to check
            out[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(fns))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return out


def star(n: int, **kwargs) -> list[StarAllreduce]:
    master = StarAllreduce.master("tcp://127.0.0.1:*", n, **kwargs)
    peers = [master] + [StarAllreduce.worker(master.address, r, n, **kwargs) for r in range(1, n)]
    assert in_threads([p.connect for p in peers]) == [None] * n
    return peers


def ring(n: int, **kwargs) -> list[RingAllreduce]:
    peers = [RingAllreduce(r, n, "tcp://127.0.0.1:*", **kwargs) for r in range(n)]
    assert in_threads([lambda r=r: peers[r].connect(peers[(r + 1) % n].address) for r in range(n)]) == [None] * n
    return peers


def allreduce_all(peers, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return in_threads([lambda p=p, t=t: p.allreduce(t) for p, t in zip(peers, tensors, strict=True)])


def close_all(peers) -> None:
    for peer in peers:
        peer.close()


def spawn(kind: str, rank: int, world: int, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, RANK_SCRIPT, kind, str(rank), str(world), str(out), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def gloo_sums(world: int, tmp_path: Path) -> list[torch.Tensor]:
    procs = [spawn("gloo", r, world, tmp_path / f"gloo{r}.pt", "--address", str(tmp_path / "rendezvous"))
             for r in range(world)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    results = [torch.load(tmp_path / f"gloo{r}.pt", weights_only=True) for r in range(world)]
    assert all(all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True)) for other in results)
    return results[0]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_star_and_ring_across_processes_give_gloos_sums(world: int, tmp_path: Path) -> None:
    """Rank 0 here, the other ranks real processes; three steps each, compared with gloo's all_reduce."""
    expected = gloo_sums(world, tmp_path)
    master = StarAllreduce.master("tcp://127.0.0.1:*", world, timeout_s=30)
    workers = [spawn("star", r, world, tmp_path / f"star{r}.pt", "--address", master.address) for r in range(1, world)]
    master.connect()
    star_sums = [master.allreduce(rank_input(0, step)) for step in (1, 2, 3)]
    for proc in workers:
        assert proc.wait(timeout=60) == 0
    master.close()

    head = RingAllreduce(0, world, "tcp://127.0.0.1:*", timeout_s=30)
    procs = [spawn("ring", r, world, tmp_path / f"ring{r}.pt") for r in range(1, world)]
    addresses = [head.address] + [proc.stdout.readline().strip() for proc in procs]
    for r, proc in enumerate(procs, start=1):
        proc.stdin.write(addresses[(r + 1) % world] + "\n")
        proc.stdin.flush()
    head.connect(addresses[1])
    ring_sums = [head.allreduce(rank_input(0, step)) for step in (1, 2, 3)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    head.close()

    for rank_sums in [star_sums, ring_sums] + [torch.load(tmp_path / f"{k}{r}.pt", weights_only=True)
                                               for k in ("star", "ring") for r in range(1, world)]:
        for ours, theirs in zip(rank_sums, expected, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)  # fp32; summation order differs
    # every rank of one algorithm holds the same bits
    for kind, own in (("star", star_sums), ("ring", ring_sums)):
        for r in range(1, world):
            assert all(torch.equal(a, b) for a, b in
                       zip(own, torch.load(tmp_path / f"{kind}{r}.pt", weights_only=True), strict=True))


@pytest.mark.parametrize("make", [star, ring])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sums_are_exact_on_integers_in_every_dtype(make, dtype) -> None:
    peers = make(3, timeout_s=10)
    try:
        tensors = [torch.randint(-8, 8, (5, 33), generator=torch.Generator().manual_seed(r)).to(dtype)
                   for r in range(3)]
        results = allreduce_all(peers, tensors)
        for result in results:
            assert result.dtype == dtype and result.shape == (5, 33)
            assert torch.equal(result, sum(t.float() for t in tensors).to(dtype))
    finally:
        close_all(peers)


def test_q80_round_trip_stays_within_its_bound() -> None:
    torch.manual_seed(0)
    for numel in (1, 31, 32, 33, 4096):
        for scale in (1e-6, 1e-3, 1.0, 300.0):
            x = torch.randn(numel) * scale
            x[0] *= 50  # an outlier in the first block
            data = q80.encode(x)
            assert len(data) == q80.nbytes(numel) == -(-numel // 32) * 34
            error = (q80.decode(data, numel) - x).abs()
            assert (error <= q80.error_bound(x)).all()
    with pytest.raises(ValueError, match="bytes"):
        q80.decode(data[:-1], 4096)


def test_compressed_star_is_within_the_bound_and_cuts_the_bytes() -> None:
    """Q80 star: error <= the workers' contributions' bounds + the broadcast sum's bound."""
    peers = star(4, timeout_s=10, compress=True)
    try:
        tensors = [torch.randn(4096, generator=torch.Generator().manual_seed(r)) * (r + 1) for r in range(4)]
        results = allreduce_all(peers, tensors)
        exact = sum(tensors)
        partial = tensors[0] + sum(q80.decode(q80.encode(t), t.numel()) for t in tensors[1:])
        bound = sum(q80.error_bound(t) for t in tensors[1:]) + q80.error_bound(partial)
        for result in results:
            assert torch.equal(result, results[0])  # every rank holds the same sum
            assert ((result - exact).abs() <= bound + 1e-6).all()
        assert (results[0] - exact).abs().max() > 0  # compression did happen
        assert q80.nbytes(4096) * 3.76 < 4096 * 4 < q80.nbytes(4096) * 3.77
    finally:
        close_all(peers)


@pytest.mark.parametrize("scale", [1.0, 1e-4])  # 1e-4: fp16-subnormal scales, where re-encoding would drift
def test_compressed_ring_is_within_the_bound(scale: float) -> None:
    """Q80 ring: each of the N-1 reduce hops and the all-gather compresses once (the all-gather relays
    the bytes it got); a value's partial sums never exceed the sum of the absolute inputs, so N such
    bounds cover it; every rank ends with the same bits."""
    n = 4
    peers = ring(n, timeout_s=10, compress=True)
    try:
        tensors = [torch.randn(4096, generator=torch.Generator().manual_seed(r)) * scale for r in range(n)]
        results = allreduce_all(peers, tensors)
        magnitude = float(sum(t.abs() for t in tensors).max())
        bound = n * magnitude * ((1 + 2 ** -11) / 254 + 2 ** -22) + n * 127 * 2 ** -25  # + fp16 subnormal steps
        for result in results:
            assert torch.equal(result, results[0])
            assert float((result - sum(tensors)).abs().max()) <= bound
    finally:
        close_all(peers)


def test_a_worker_that_never_joins_is_named() -> None:
    master = StarAllreduce.master("tcp://127.0.0.1:*", 3, timeout_s=0.5)
    worker = StarAllreduce.worker(master.address, 1, 3, timeout_s=0.5)
    try:
        results = in_threads([master.connect, worker.connect])
        assert isinstance(results[0], PeerTimeout) and "workers [2] of 3 never joined" in str(results[0])
        assert isinstance(results[1], PeerTimeout)  # no welcome: the group is not complete
    finally:
        close_all([master, worker])


@pytest.mark.parametrize("how", ["killed", "silent"])
def test_a_worker_that_dies_mid_run_is_named_within_the_timeout(how: str, tmp_path: Path) -> None:
    master = StarAllreduce.master("tcp://127.0.0.1:*", 3, timeout_s=1.0)
    good = spawn("star", 1, 3, tmp_path / "w1.pt", "--address", master.address, "--steps", "2")
    bad = spawn("star", 2, 3, tmp_path / "w2.pt", "--address", master.address, "--hang-after", "1")
    try:
        master.connect(timeout_s=60)
        master.allreduce(rank_input(0, 1))
        if how == "killed":
            bad.kill()
            bad.wait()
        started = time.monotonic()
        with pytest.raises(PeerTimeout, match=r"worker rank 2 sent nothing for step 2"):
            master.allreduce(rank_input(0, 2))
        assert time.monotonic() - started < 1.5
        assert good.wait(timeout=60) != 0  # told that step 2 was aborted, rank 1 fails too (not hangs)
    finally:
        bad.kill()
        master.close()


def test_a_late_frame_of_an_aborted_step_is_never_summed() -> None:
    peers = star(3, timeout_s=0.5)
    master, first, second = peers
    try:
        ones = torch.ones(64)
        assert all(torch.equal(r, 3 * ones) for r in allreduce_all(peers, [ones, ones, ones]))
        timed_out = in_threads([lambda: master.allreduce(100 * ones), lambda: first.allreduce(100 * ones)])
        assert isinstance(timed_out[0], PeerTimeout) and "rank 2 sent nothing for step 2" in str(timed_out[0])
        assert isinstance(timed_out[1], CollectiveError) and "aborted step 2" in str(timed_out[1])
        with pytest.raises(CollectiveError, match="aborted step 2"):  # rank 2's step 2, sent late
            second.allreduce(100 * ones)
        sums = allreduce_all(peers, [ones, 2 * ones, 3 * ones])
        assert all(torch.equal(s, 6 * ones) for s in sums)  # the late 100s are not in it
        assert master.dropped_late == 1
    finally:
        close_all(peers)


def test_frames_that_lie_about_their_size_are_refused_before_use() -> None:
    master = StarAllreduce.master("tcp://127.0.0.1:*", 2, timeout_s=2)
    impostor = zmq.Context.instance().socket(zmq.DEALER)
    impostor.setsockopt(zmq.IDENTITY, b"rank-1")
    impostor.setsockopt(zmq.LINGER, 0)
    impostor.connect(master.address)
    try:
        impostor.send_multipart([Header(1, 1, 2, 0).pack()])  # a hello
        master.connect()
        header = Header(CONTRIBUTE, 1, 2, 1, numel=64, nbytes=256)
        impostor.send_multipart([header.pack(), b"\0" * 100])  # 100 bytes, not 256
        with pytest.raises(CollectiveError, match="100 bytes for 64"):
            master.allreduce(torch.ones(64))
        impostor.send_multipart([b"not a header"])
        with pytest.raises(CollectiveError, match="header"):
            master.allreduce(torch.ones(64))
    finally:
        impostor.close()
        master.close()


def test_bad_calls_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="rank 3 is not in a group of 3"):
        StarAllreduce.worker("tcp://127.0.0.1:1", 3, 3)
    peers = star(2, timeout_s=2, max_bytes=1024)
    try:
        with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
            peers[0].allreduce(torch.ones(4, dtype=torch.int64))
        with pytest.raises(ValueError, match="exceeds the 1024-byte limit"):
            peers[0].allreduce(torch.ones(1024))
    finally:
        close_all(peers)


def test_messages_from_outside_the_group_are_dropped() -> None:
    peers = star(2, timeout_s=5)
    stranger = zmq.Context.instance().socket(zmq.DEALER)
    stranger.setsockopt(zmq.IDENTITY, b"someone-else")
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.connect(peers[0].address)
    try:
        stranger.send_multipart([b"garbage that is not a header", b"x" * 100])
        for _ in range(200):  # steps go on, with the right sums, until the stranger's message has come and gone
            sums = allreduce_all(peers, [torch.ones(8), 2 * torch.ones(8)])
            assert all(torch.equal(s, 3 * torch.ones(8)) for s in sums)
            if peers[0].dropped_strangers:
                break
        assert peers[0].dropped_strangers == 1
    finally:
        stranger.close()
        close_all(peers)


# CURVE: encrypted links, members only ------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tp-keys")
    written = write_group_keys(folder)
    secrets = [p for p in written if p.name.endswith("_secret")]
    assert len(secrets) == 2 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in secrets)
    return folder


def test_members_sum_over_curve(keys) -> None:
    master_keys, worker_keys = GroupKeys.load(keys, master=True), GroupKeys.load(keys, master=False)
    assert worker_keys.master_secret is None and master_keys.member_secret is None
    master = StarAllreduce.master("tcp://127.0.0.1:*", 3, keys=master_keys)
    peers = [master] + [StarAllreduce.worker(master.address, r, 3, keys=worker_keys) for r in (1, 2)]
    try:
        assert in_threads([p.connect for p in peers]) == [None] * 3
        tensors = [torch.randn(257, generator=torch.Generator().manual_seed(r)) for r in range(3)]
        for result in allreduce_all(peers, tensors):
            torch.testing.assert_close(result, sum(tensors), rtol=0, atol=1e-6)
    finally:
        close_all(peers)


@pytest.mark.parametrize("intruder", ["plaintext", "another group's keys", "the master's public key only"])
def test_a_peer_without_the_group_keys_never_joins(keys, tmp_path, intruder) -> None:
    wrong = None
    if intruder != "plaintext":
        write_group_keys(tmp_path / "other")
        wrong = GroupKeys.load(tmp_path / "other", master=False)
    if intruder == "the master's public key only":  # it is public: the member key is the credential
        wrong = GroupKeys(GroupKeys.load(keys, master=False).master_public, wrong.member_public, wrong.member_secret)
    master = StarAllreduce.master("tcp://127.0.0.1:*", 2, timeout_s=1.0, keys=GroupKeys.load(keys, master=True))
    worker = StarAllreduce.worker(master.address, 1, 2, timeout_s=1.0, keys=wrong)
    try:
        results = in_threads([master.connect, worker.connect])
        assert isinstance(results[0], PeerTimeout) and "workers [1] of 2 never joined" in str(results[0])
        assert isinstance(results[1], PeerTimeout)
    finally:
        close_all([master, worker])


def test_a_worker_cannot_be_fooled_by_a_master_without_the_master_key(keys, tmp_path) -> None:
    write_group_keys(tmp_path / "other")
    impostor = StarAllreduce.master("tcp://127.0.0.1:*", 2, timeout_s=1.0,
                                    keys=GroupKeys.load(tmp_path / "other", master=True))
    worker = StarAllreduce.worker(impostor.address, 1, 2, timeout_s=1.0, keys=GroupKeys.load(keys, master=False))
    try:
        results = in_threads([impostor.connect, worker.connect])
        assert all(isinstance(r, PeerTimeout) for r in results)
    finally:
        close_all([impostor, worker])


def test_missing_keys_are_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="edgecloud certs tp-keys"):
        GroupKeys.load(tmp_path, master=False)


def test_plain_star_still_works_beside_curve(keys) -> None:
    peers = star(2)
    try:
        out = allreduce_all(peers, [torch.ones(4), torch.ones(4)])
        assert all(torch.equal(o, torch.full((4,), 2.0)) for o in out)
    finally:
        close_all(peers)
