"""sushy-emulator (fake driver) with instant power changes, for tests/bench/ironic.sh.

sushy-tools' fake driver applies every power change after `random.randint(1, 11)` seconds
(fakedriver.FakeDriver.set_power_state: `apply_time = int(time.time()) + random.randint(1, 11)`),
and neither 2.2.0 nor upstream master has a setting for it. That delay would dominate both control
planes, so this launcher replaces the module's `random` with one whose randint is 0: apply_time is
then already due, and the next read of the system (`_get` → `_update_if_needed`) applies the
change. Nothing else is changed. Run: python sushy_instant.py --config FILE -i 127.0.0.1 -p PORT
"""

import random
import sys

from sushy_tools.emulator.resources.systems import fakedriver


class _NoDelay(random.Random):
    def randint(self, a, b):
        return 0


fakedriver.random = _NoDelay()

from sushy_tools.emulator import main  # noqa: E402  (after the patch, on purpose)

if __name__ == "__main__":
    sys.exit(main.main())
