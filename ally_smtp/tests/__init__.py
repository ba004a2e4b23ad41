from . import test_harness
from . import test_settings
from . import test_credentials
from . import test_sending
from . import test_sent_copy
from . import test_i18n
from . import test_tours
