"""Imported at start-up by the subscriber processes of the crash tests, and only by them.

tests/support/subscriber_faults.crash_env puts this folder first on such a
process's PYTHONPATH; nothing of it is in the wheel or the image.
"""

from tests.support.subscriber_faults import install_from_environment

install_from_environment()
