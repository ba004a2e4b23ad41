"""Queue-run speed: ally_smtp's personal path against stock Odoo, same run.

``make bench`` runs it on the harness servers and prints a table; nothing is
asserted about time (tests never do).
"""

import time

from odoo import Command
from odoo.tests import new_test_user, tagged

from odoo.addons.ally_smtp.tests.common import AllySmtpCase

MAILS = 60


@tagged("post_install", "-at_install")
class BenchSend(AllySmtpCase):
    def _queue(self, user, count):
        partner = self.env["res.partner"].create(
            {"name": "Bench Student", "email": "student2@school.test"}
        )
        mails = self.env["mail.mail"]
        for i in range(count):
            message = (
                self.env["mail.message"]
                .with_user(user)
                .create(
                    {
                        "model": "res.partner",
                        "res_id": partner.id,
                        "body": f"bench {i}",
                        "subject": f"bench {i}",
                        "author_id": user.partner_id.id,
                        "email_from": user.email_formatted,
                        "message_type": "comment",
                    }
                )
            )
            mails |= (
                self.env["mail.mail"]
                .with_user(user)
                .sudo()
                .create(
                    {
                        "mail_message_id": message.id,
                        "recipient_ids": [Command.link(partner.id)],
                        "body_html": f"<p>bench {i}</p>",
                    }
                )
            )
        return mails

    def _run(self, label, user):
        self.smtp.reset()
        mails = self._queue(user, MAILS)
        queries = self.env.cr.sql_log_count
        start = time.perf_counter()
        with self.live():
            self.env["mail.mail"].process_email_queue()
        seconds = time.perf_counter() - start
        queries = self.env.cr.sql_log_count - queries
        state = self.smtp.state()
        logins = sum(
            1 for s in state["sessions"] for e in s["events"] if e[0] == "auth"
        )
        assert set(mails.mapped("state")) == {"sent"}, mails.mapped("failure_reason")
        return (label, MAILS, seconds, MAILS / seconds, queries / MAILS, logins)

    def test_bench(self):
        # the stock path: the agency's ir.mail_server, as Odoo sends without us
        self.agency_server()
        plain = new_test_user(
            self.env,
            login="plain",
            groups="base.group_user,base.group_partner_manager",
            email="c@agency.test",
        )
        rows = [
            self._run("stock Odoo (agency server)", plain),
            self._run("ally_smtp (own mailbox)", self.alice),
        ]
        print(
            "\n%-28s %6s %9s %9s %12s %7s"
            % ("path", "mails", "seconds", "mails/s", "queries/mail", "logins")
        )
        for row in rows:
            print("%-28s %6d %9.2f %9.1f %12.1f %7d" % row)
