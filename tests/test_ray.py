"""--ray: the serial tables from a local 2-CPU Ray cluster started once for this module."""

from __future__ import annotations

import json

import pytest

from fanout_support import make_models, without_timings
from spectralyzer.fanout import FanOut
from spectralyzer.pipeline import make_options, run_analysis
from spectralyzer.render import render
from spectralyzer.series import compare

ray = pytest.importorskip("ray")

OPTIONS = make_options(threads=1)


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of 2 CPUs; ``--ray`` in this process joins it (as in a user's program)."""
    from spectralyzer.ray_runner import RayPool, _handlers_kept

    with _handlers_kept():  # ray.init's SIGTERM handler would outlive the fixture
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    pool = RayPool("local", workers=2, threads=1)
    assert not pool.started  # joined, so closing the pool leaves the cluster to the fixture
    yield pool
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("models"), 4)


def test_compare_on_ray_gives_the_serial_document_and_reports_a_broken_model(
    cluster, models, tmp_path
):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(models[3].read_bytes()[:200])
    fan = FanOut(cluster)
    fanned = compare([*models[:3], broken], options=OPTIONS, runner=fan.runner)
    serial = compare(models[:3], options=OPTIONS)
    got, expected = without_timings(fanned.document()), without_timings(serial.document())
    assert got["models"] == expected["models"] and got["layers"] == expected["layers"]
    (failure,) = fan.failures
    assert failure.unit == str(broken) and failure.error.startswith(f"InputError: {broken}")
    assert any("broken.safetensors was not analysed" in note for note in got["notes"])


def test_analyze_on_ray_gives_the_serial_document(cluster, models):
    options = make_options(threads=1, randomize=True)
    serial = run_analysis(models[1], options)
    fanned = run_analysis(models[1], options, spectra=FanOut(cluster).spectra)
    assert "workers" in fanned.timings
    assert without_timings(json.loads(render(fanned, "json"))) == without_timings(
        json.loads(render(serial, "json"))
    )
