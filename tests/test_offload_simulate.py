"""The offload simulation's timeline, computed by hand on scripted plans."""

import pytest

from kvwire.errors import OffloadError
from kvwire.offload.policy import LayerEvent
from kvwire.offload.simulate import Calibration, simulate

CAL = Calibration(source="test", copy_latency_us=1.0, copy_gbps=1.0, bulk_gbps=2.0, layer_us=10.0, head_us=5.0,
                  decode_us=0.0)
PAGE = 1000  # bytes: 1 µs at 1 GB/s, so one page copy = 2 µs


def test_demand_fetches_stall_the_compute_stream():
    events = [LayerEvent(1, 0, needed=(0, 1), fetches=[(0, 0), (1, 1)]), LayerEvent(1, 1, needed=(0,), hits=1),
              LayerEvent(2, 0, needed=(0,), hits=1), LayerEvent(2, 1, needed=(2,), fetches=[(2, 0)])]
    sim = simulate(events, "reactive", CAL, layers=2, page_bytes=PAGE, cache_bytes=0)
    # step 1: 2 fetches (4) + layer (10) + layer (10) + head (5) = 29; step 2: 10 + 2 + 10 + 5 = 27 more
    assert list(sim["step_end_us"]) == pytest.approx([29.0, 56.0])
    assert sim["ttft_us"] == pytest.approx(29.0) and sim["stall_us"] == pytest.approx(6.0)


def test_prefetches_overlap_compute_and_late_ones_stall():
    events = [LayerEvent(0, 0, prefetches=[(0, 0)]), LayerEvent(0, 1, prefetches=[(5, 0)]),
              LayerEvent(1, 0, needed=(0,), hits=1, prefetches=[(1, 1)]),
              LayerEvent(1, 1, needed=(5,), hits=1),
              LayerEvent(2, 0, needed=(1,), hits=1), LayerEvent(2, 1, needed=(5,), hits=1)]
    sim = simulate(events, "predictive", CAL, layers=2, page_bytes=PAGE, cache_bytes=0)
    # copy engine: page 0 ready at 2, page 5 at 4; step 1 layer 0 waits for 2 -> 12, layer 1 -> 22, head 27;
    # page 1 queued at 12 -> ready 14; step 2: 37, 47, 52
    assert list(sim["step_end_us"]) == pytest.approx([27.0, 52.0])
    assert sim["stall_us"] == pytest.approx(2.0)


def test_all_gpu_pays_the_bulk_upload_before_the_first_token_and_a_codec_pays_decode():
    events = [LayerEvent(1, 0, needed=(0,), hits=1), LayerEvent(2, 0, needed=(0,), hits=1)]
    sim = simulate(events, "all_gpu", CAL, layers=1, page_bytes=PAGE, cache_bytes=4000)
    assert list(sim["step_end_us"]) == pytest.approx([2.0 + 15.0, 32.0])  # 4000 B at 2 GB/s = 2 µs
    cal = Calibration(**{**CAL.to_dict(), "decode_us": 3.0})
    fetch = [LayerEvent(1, 0, needed=(0,), fetches=[(0, 0)]), LayerEvent(2, 0, needed=(0,), hits=1)]
    assert simulate(fetch, "reactive", cal, layers=1, page_bytes=PAGE, cache_bytes=0,
                    codec=True)["ttft_us"] == pytest.approx(20.0)


def test_the_host_thread_bounds_the_gpu_when_issuing_costs_more_than_computing():
    cal = Calibration(**{**CAL.to_dict(), "issue_layer_us": 30.0, "issue_copy_us": 4.0})
    events = [LayerEvent(1, 0, needed=(0,), fetches=[(0, 0)]), LayerEvent(2, 0, needed=(0,), hits=1)]
    sim = simulate(events, "reactive", cal, layers=1, page_bytes=PAGE, cache_bytes=0)
    # step 1: host issues layer + copy (34), the GPU then fetches (2) and computes (10): 46; the head's
    # issue (host 64) comes after: 64 + 5 = 69; step 2: host 94 -> 104, head issued at 124 -> 129
    assert list(sim["step_end_us"]) == pytest.approx([69.0, 129.0])
    assert sim["host_first_us"] == pytest.approx(64.0)  # the host issued step 1's head at 64


def test_a_prefetch_event_costs_the_host_its_fixed_issue_before_its_copies_can_start():
    cal = Calibration(**{**CAL.to_dict(), "issue_event_us": 7.0, "issue_copy_us": 1.0})
    events = [LayerEvent(0, 0, prefetches=[(0, 0)]), LayerEvent(1, 0, needed=(0,), hits=1),
              LayerEvent(2, 0, needed=(0,), hits=1)]
    sim = simulate(events, "predictive", cal, layers=1, page_bytes=PAGE, cache_bytes=0)
    # the seeded prefetch is issued at 7 + 1 = 8, copied 8 -> 10; layer 10 -> 20, head 25; step 2: 35, 40
    assert list(sim["step_end_us"]) == pytest.approx([25.0, 40.0])
    assert sim["host_first_us"] == pytest.approx(8.0) and sim["stall_us"] == pytest.approx(2.0)


def test_codec_prefetches_after_the_first_step_decode_in_one_batch_at_the_step_end():
    cal = Calibration(**{**CAL.to_dict(), "decode_us": 1.0, "decode_launch_us": 4.0})
    events = [LayerEvent(1, 0, needed=(0,), fetches=[(0, 0)], prefetches=[(1, 1), (2, 2)]),
              LayerEvent(1, 1, needed=(0,), fetches=[(0, 0)], prefetches=[(3, 1)]),
              LayerEvent(2, 0, needed=(1,), hits=1), LayerEvent(2, 1, needed=(3,), hits=1)]
    sim = simulate(events, "predictive", cal, layers=2, page_bytes=PAGE, cache_bytes=0, codec=True)
    # step 1: fetch 2 + decode 5 + layer 10 = 17, again = 34, head 39; copies of 1, 2 (17 -> 21) and
    # 3 (34 -> 36) wait for the batch decode, issued with the head (the copy engine does not wait for
    # the compute stream): 36 + 4 + 3 = 43; step 2 starts at 43: 53, 63, head 68
    assert list(sim["step_end_us"]) == pytest.approx([39.0, 68.0])


def test_issuing_a_decode_costs_host_time_before_the_gpu_can_run_it():
    cal = Calibration(**{**CAL.to_dict(), "decode_us": 1.0, "decode_launch_us": 4.0, "issue_decode_us": 2.0})
    events = [LayerEvent(1, 0, needed=(0,), fetches=[(0, 0)], prefetches=[(1, 1), (2, 2)]),
              LayerEvent(1, 1, needed=(0,), fetches=[(0, 0)], prefetches=[(3, 1)]),
              LayerEvent(2, 0, needed=(1,), hits=1), LayerEvent(2, 1, needed=(3,), hits=1)]
    sim = simulate(events, "predictive", cal, layers=2, page_bytes=PAGE, cache_bytes=0, codec=True)
    # as above, but layer 0's demand decode is issued at 2: 2 + 7 + 10 = 19, layer 1 36, head 41; copies
    # 19 -> 23 and 36 -> 38; the batch decode issued at host 6 runs 38 -> 45; step 2: 55, 65, head 70
    assert list(sim["step_end_us"]) == pytest.approx([41.0, 70.0])
    # a host slower than the copies: the step-end batch decode cannot start before the host issues it
    slow = Calibration(**{**cal.to_dict(), "issue_decode_us": 50.0})
    sim = simulate(events, "predictive", slow, layers=2, page_bytes=PAGE, cache_bytes=0, codec=True)
    # layer 0 issued at 50 -> 67, layer 1 at 100 -> 117, head 122 (host 100); the batch decode is
    # issued at 150 -> 157, so step 2's layers wait for it: 167, 177, head 182
    assert list(sim["step_end_us"]) == pytest.approx([122.0, 182.0]) and sim["host_first_us"] == pytest.approx(100.0)


def test_calibration_from_dict_names_what_is_wrong():
    with pytest.raises(OffloadError, match="lacks copy_gbps"):
        Calibration.from_dict({"source": "x", "copy_latency_us": 1, "bulk_gbps": 1, "layer_us": 1, "head_us": 1})
    with pytest.raises(OffloadError, match="finite and non-negative"):
        Calibration.from_dict({"source": "x", "copy_latency_us": 1, "copy_gbps": 0, "bulk_gbps": 1, "layer_us": 1,
                               "head_us": 1})
    with pytest.raises(OffloadError, match="no events"):
        simulate([], "reactive", CAL, layers=1, page_bytes=1, cache_bytes=0)
