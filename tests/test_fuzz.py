"""Property-based: every reader and the CLI commands, fed mutated versions of real files and random arguments,
exit 0 or 2 (``error: …``), never with a traceback, within bounded memory. The same targets run for minutes
with ``tools/fuzz.py --minutes 10``; here hypothesis draws a bounded number of examples (a few seconds each
target)."""

import pytest
from conftest import load_fuzz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = load_fuzz()
MAX_RSS_MB = 3072


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return FUZZ.build_corpus(tmp_path_factory.mktemp("fuzz") / "c")


@pytest.mark.parametrize("target", sorted(FUZZ.TARGETS))
def test_mutated_inputs_exit_0_or_2(corpus, target):
    @settings(
        max_examples=8,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(rnd=st.randoms(use_true_random=False))
    def check(rnd):
        code = FUZZ.run_case(corpus, target, rnd)  # any exception but UserError propagates: a traceback
        assert code in (0, 2)
        assert FUZZ.peak_rss_mb() < MAX_RSS_MB

    check()
