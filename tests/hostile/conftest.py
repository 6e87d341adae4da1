"""Fixtures for the hostile suite: the black-box suite's, reused as they are.

The hostile tests drive the real `wsgate` binary with clients that flood,
never read or never close, and measure what an operator would: the
gateway's RSS and fds (`/proc/PID`), its metrics, whether other clients are
still answered. Bounds are asserted as bounds, never as timings.
"""

import importlib.util
import sys
from pathlib import Path

_BLACKBOX = Path(__file__).resolve().parents[1] / "blackbox"
sys.path.insert(0, str(_BLACKBOX))  # rawws and friends
_spec = importlib.util.spec_from_file_location("blackbox_conftest", _BLACKBOX / "conftest.py")
_blackbox = importlib.util.module_from_spec(_spec)
sys.modules["blackbox_conftest"] = _blackbox
_spec.loader.exec_module(_blackbox)

# Fixtures and hooks (gateway processes, upstream servers, final checks, seeds).
globals().update({k: v for k, v in vars(_blackbox).items() if not k.startswith("__")})
