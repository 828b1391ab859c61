"""Where things are, for tests at any depth of the tree: the checkout and the shared fixtures."""
import os

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
FIXTURES = os.path.join(TESTS, "fixtures")

# One persistent compilation cache for every end-to-end launch of a test session, made by
# tests/conftest.py and inherited by pytest-xdist's workers: the launches share shapes, so all
# but the first load their executables, as a user's resumed run does.
CACHE_ENV = "COMD_TEST_COMPILATION_CACHE"


def launch_env(**extra) -> dict:
    """The environment of a launched run: CPU, this checkout importable, the session's cache."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    if os.environ.get(CACHE_ENV):
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ[CACHE_ENV]
    return {**env, **extra}
