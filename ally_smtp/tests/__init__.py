from . import test_harness
from . import test_settings
from . import test_credentials
from . import test_sending
from . import test_security
from . import test_i18n
from . import test_uninstall
from . import test_tours
