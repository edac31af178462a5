"""Hypothesis without its per-example deadline: speed is measured by ``appetence bench``,
never by a test's clock (DEVELOPERS.md), and a loaded CI machine would otherwise fail a
correct property test (DeadlineExceeded, or Flaky when the rerun is fast)."""

from hypothesis import settings

settings.register_profile("appetence", deadline=None)
settings.load_profile("appetence")
