"""The BuildKit plain-progress parser on logs as BuildKit and Cloud Build write them."""

from __future__ import annotations

from shipyard.tasks.buildkit_log import CACHED, ERROR, RUN, parse_buildkit_log

LOG = """\
#0 building with "shipyard" instance using docker-container driver
#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 1.95kB done
#1 DONE 0.0s
#4 importing cache manifest from r/app:cache-python
#4 ERROR: failed to configure registry cache importer: not found
#6 [base 1/3] FROM r/cuda@sha256:aaaa
#6 resolve r/cuda@sha256:aaaa done
#7 [base 2/3] RUN apt-get update
#6 CACHED
#7 CACHED
#8 [python-deps 2/3] COPY requirements.txt ./
#8 CACHED
#9 [python-deps 3/3] RUN pip install -r requirements.txt
#9 0.512 Collecting fastapi
#9 DONE 12.3s
#10 [builder 2/3] RUN make
#10 0.100 make: *** No rule to make target
#10 ERROR: process "/bin/sh -c make" did not complete successfully: exit code: 2
------
 > [builder 2/3] RUN make:
------
ERROR: failed to solve: process "/bin/sh -c make" did not complete successfully: exit code: 2
"""


def test_steps_statuses_and_the_failure():
    report = parse_buildkit_log(LOG.splitlines())
    assert [(s.stage, s.index, s.status) for s in report.steps] == [
        ("base", 1, CACHED),
        ("base", 2, CACHED),
        ("python-deps", 2, CACHED),
        ("python-deps", 3, RUN),
        ("builder", 2, ERROR),
    ]
    assert report.cached == 2 and report.run == 1  # FROM is not counted
    assert report.hit_rate == 2 / 3
    assert report.steps[3].seconds == 12.3
    assert report.failed_step.name == "[builder 2/3] RUN make"
    assert "exit code: 2" in report.failed_step.error
    assert list(report.failed_step.output) == ["0.100 make: *** No rule to make target"]
    assert report.error.startswith("failed to solve: process")
    assert report.by_stage()["python-deps"] == {CACHED: 1, RUN: 1, ERROR: 0}


def test_cloud_build_step_prefixes_are_stripped():
    lines = [f'Step #1 - "build": {line}' for line in LOG.splitlines()]
    report = parse_buildkit_log(lines)
    assert len(report.steps) == 5 and report.failed_step is not None
    assert report.error is not None


def test_an_empty_log_has_no_steps_and_no_hit_rate():
    report = parse_buildkit_log([])
    assert report.steps == [] and report.hit_rate == 0.0 and report.error is None


def test_a_single_stage_dockerfiles_steps_are_counted():
    # BuildKit names the steps of an unnamed only stage `[i/n]`, without a stage name.
    log = "#4 [1/3] FROM r/base@sha256:aaaa\n#4 DONE 0.0s\n#5 [2/3] COPY app.py /srv/\n"
    log += "#5 CACHED\n#6 [3/3] RUN python3 -m compileall /srv\n#6 DONE 0.4s\n"
    report = parse_buildkit_log(log)
    assert [(s.stage, s.index, s.status) for s in report.steps] == [
        ("", 1, RUN),
        ("", 2, CACHED),
        ("", 3, RUN),
    ]
    assert report.cached == 1 and report.run == 1 and report.hit_rate == 0.5
    assert report.steps[2].name == "[3/3] RUN python3 -m compileall /srv"
