from . import ally_smtp_sent_copy
from . import ally_smtp_sent_copy_part
from . import ir_mail_server
from . import mail_mail
from . import res_company
from . import res_config_settings
from . import res_users
