/** @odoo-module */
import { registry } from "@web/core/registry";

// Texts the screens must show, in the language the tour runs in.
const TEXTS = {
    en: {
        setting: "Agency email (SMTP)",
        integrate: "Integrate",
        integrated: "Integrated on",
        useOwn: "Use my own SMTP configuration",
        test: "Test SMTP configuration",
        works: "SMTP configuration works",
        refused: "refused the password",
        signIn: "Sign-in method",
        microsoft: "Microsoft account (OAuth)",
        connectGoogle: "Connect Google account",
        connectedAs: "Connected as",
        working: "Working",
        repliesSetting: "Bring replies into Odoo",
        repliesChecked: "Replies: last checked at",
    },
    pt: {
        setting: "E-mail da agência (SMTP)",
        integrate: "Integrar",
        integrated: "Integrado em",
        useOwn: "Use minha própria configuração SMTP",
        test: "Testar configuração SMTP",
        works: "A configuração SMTP funciona",
        refused: "recusou a senha",
        signIn: "Método de acesso",
        microsoft: "Conta Microsoft (OAuth)",
        connectGoogle: "Conectar conta Google",
        connectedAs: "Conectado como",
        working: "Funcionando",
        repliesSetting: "Trazer respostas para o Odoo",
        repliesChecked: "Respostas: verificadas por último em",
    },
};

// The Python test says which language the user has.
function text(key) {
    const lang = window.allySmtpTour.lang.startsWith("pt") ? "pt" : "en";
    return TEXTS[lang][key];
}

function expectText(selector, key) {
    return {
        content: `"${key}" is shown in the user's language`,
        trigger: selector,
        run(helpers) {
            const shown = helpers.anchor.textContent;
            if (!shown.includes(text(key))) {
                throw new Error(`expected "${text(key)}" in "${shown}"`);
            }
        },
    };
}

registry.category("web_tour.tours").add("ally_smtp_settings", {
    steps: () => [
        {
            content: "Find the agency email setting in Integrations",
            trigger: "#ally_smtp_setting",
        },
        expectText("#ally_smtp_setting", "setting"),
        {
            content: "Choose a custom server",
            trigger: "#ally_smtp_setting [name=ally_smtp_provider] select",
            run: 'select "custom"',
        },
        {
            content: "Fill the SMTP host",
            trigger: "#ally_smtp_server_setting [name=ally_smtp_host] input",
            run: "edit localhost",
        },
        expectText("#ally_smtp_setting button[name=action_ally_smtp_integrate]", "integrate"),
        {
            content: "Press Integrate",
            trigger: "#ally_smtp_setting button[name=action_ally_smtp_integrate]",
            run: "click",
        },

        {
            content: "A confirmation notification",
            trigger: ".o_notification.border-success, .o_notification_bar.bg-success",
        },
        {
            content: "The confirmation under the fields",
            trigger: "#ally_smtp_setting .o_ally_smtp_integrated:visible",
        },
        expectText("#ally_smtp_setting .o_ally_smtp_integrated", "integrated"),
        showOnScreen("#ally_smtp_setting"),
    ],
});

// The element shows the value the Python test gave (read when the step
// runs: the tour's steps are built before the test's values are set).
function expectValue(selector, key) {
    return {
        content: `the ${key} given by the test is shown`,
        trigger: selector,
        run(helpers) {
            const anchor = helpers.anchor;
            const shown = anchor.value !== undefined ? anchor.value : anchor.textContent;
            if (!shown.includes(window.allySmtpTour[key])) {
                throw new Error(`expected "${window.allySmtpTour[key]}" in "${shown}"`);
            }
        },
    };
}

// Leave the screen on what the step shows (for docs/ screenshots).
function showOnScreen(selector) {
    return {
        content: "Bring it into view",
        trigger: selector,
        run(helpers) {
            helpers.anchor.scrollIntoView({ block: "center" });
        },
    };
}

function openPreferences() {
    return [
        { trigger: ".o_user_menu button", run: "click" },
        { trigger: "[data-menu=settings]", run: "click" },
        { trigger: ".modal [name=ally_smtp_use_own]" },
    ];
}

registry.category("web_tour.tours").add("ally_smtp_preferences", {
    steps: () => [
        ...openPreferences(),
        expectText(".modal .o_inner_group:has([name=ally_smtp_use_own])", "useOwn"),
        {
            content: "Switch on my own SMTP configuration",
            trigger: ".modal [name=ally_smtp_use_own] input",
            run: "check",
        },
        {
            content: "Enter the mailbox",
            trigger: ".modal [name=ally_smtp_email] input",
            run: (helpers) => helpers.edit(window.allySmtpTour.email),
        },
        {
            content: "Enter the mailbox password",
            trigger: ".modal [name=ally_smtp_password] input",
            run: (helpers) => helpers.edit(window.allySmtpTour.password),
        },
        expectText(".modal button[name=action_ally_smtp_test]", "test"),
        {
            content: "Press Test SMTP configuration",
            trigger: ".modal button[name=action_ally_smtp_test]",
            run: "click",
        },
        {
            content: "Success, naming the Sent folder",
            trigger: ".o_notification:contains('Sent')",
        },
        expectText(".o_notification:contains('Sent')", "works"),
        {
            content: "The status says it works",
            trigger:
                ".modal [name=ally_smtp_state] span:contains(Working), .modal [name=ally_smtp_state] span:contains(Funcionando)",
        },
        showOnScreen(".modal [name=ally_smtp_state]"),
    ],
});

registry.category("web_tour.tours").add("ally_smtp_preferences_wrong_password", {
    steps: () => [
        ...openPreferences(),
        {
            content: "Enter a wrong password",
            trigger: ".modal [name=ally_smtp_password] input",
            run: "edit not-the-password",
        },
        {
            content: "Press Test SMTP configuration again",
            trigger: ".modal button[name=action_ally_smtp_test]",
            run: "click",
        },
        {
            content: "An error the consultant can act on",
            trigger: ".o_error_dialog .modal-body",
        },
        expectText(".o_error_dialog .modal-body", "refused"),
    ],
});

registry.category("web_tour.tours").add("ally_smtp_student_message", {
    steps: () => [
        { trigger: ".o-mail-Chatter" },
        {
            content: "Open the message composer",
            trigger: ".o-mail-Chatter-topbar button:contains(Send message), .o-mail-Chatter-topbar button:contains(Enviar mensagem)",
            run: "click",
        },

        {
            content: "Write to the student",
            trigger: ".o-mail-Composer-input",
            run: "edit Hello from your consultant",
        },
        {
            content: "Send",
            trigger: ".o-mail-Composer-send:enabled",
            run: "click",
        },
        {
            content: "The message is in the chatter",
            trigger: ".o-mail-Message:contains(Hello from your consultant)",
        },
        {
            content: "It is marked sent by email",
            trigger:
                ".o-mail-Message:contains(Hello from your consultant) .o-mail-Message-notification:not(.text-danger)",
        },
    ],
});

registry.category("web_tour.tours").add("ally_smtp_settings_oauth", {
    steps: () => [
        {
            content: "Find the sign-in method of the agency email",
            trigger: "#ally_smtp_signin_setting",
        },
        expectText("#ally_smtp_signin_setting", "signIn"),
        expectText("#ally_smtp_signin_setting [name=ally_smtp_auth_method]", "microsoft"),
        {
            content: "Choose Microsoft accounts",
            trigger: "#ally_smtp_signin_setting input.o_radio_input[data-value=microsoft]",
            run: "click",
        },
        {
            content: "Enter the client ID of the agency's app",
            trigger: "#ally_smtp_signin_setting [name=ally_smtp_oauth_client_id] input",
            run: "edit 00000000-aaaa-bbbb-cccc-000000000000",
        },
        {
            content: "The tenant can be entered",
            trigger: "#ally_smtp_signin_setting [name=ally_smtp_oauth_tenant] input",
            run: "edit contoso.onmicrosoft.com",
        },
        {
            content: "The redirect URI to register is shown",
            trigger:
                "#ally_smtp_signin_setting [name=ally_smtp_oauth_redirect_uri]:contains(/ally_smtp/oauth/callback)",
        },
        {
            content: "Save",
            trigger: ".o_form_button_save:enabled, button[name=execute]:enabled",
            run: "click",
        },
        {
            content: "Saved: the method is kept",
            trigger:
                "#ally_smtp_signin_setting input.o_radio_input[data-value=microsoft]:checked",
        },
        showOnScreen("#ally_smtp_signin_setting"),
    ],
});

// The mailbox is entered already (the form is left unchanged: a changed form
// would hold the next tour's page load with a "leave the page?" prompt).
registry.category("web_tour.tours").add("ally_smtp_preferences_oauth_connect", {
    steps: () => [
        ...openPreferences(),
        expectValue(".modal [name=ally_smtp_email] input", "email"),
        expectText(".modal button[name=action_ally_smtp_oauth_connect]:visible", "connectGoogle"),
        {
            content: "No password is asked",
            trigger: ".modal:not(:has([name=ally_smtp_password] input))",
        },
        showOnScreen(".modal button[name=action_ally_smtp_oauth_connect]:visible"),
    ],
});

registry.category("web_tour.tours").add("ally_smtp_preferences_oauth_connected", {
    steps: () => [
        ...openPreferences(),
        expectText(".modal .o_inner_group:has([name=ally_smtp_oauth_account])", "connectedAs"),
        expectValue(".modal [name=ally_smtp_oauth_account]", "email"),
        expectText(".modal [name=ally_smtp_state]", "working"),
        {
            content: "Disconnect is offered",
            trigger: ".modal button[name=action_ally_smtp_oauth_disconnect]",
        },
        showOnScreen(".modal [name=ally_smtp_oauth_account]"),
    ],
});

// The "Back to My Profile" link of the page the sign-in comes back to.
registry.category("web_tour.tours").add("ally_smtp_my_profile_link", {
    steps: () => [
        expectValue(".o_form_view [name=ally_smtp_oauth_account]", "email"),
        expectText(".o_form_view [name=ally_smtp_state]", "working"),
    ],
});

// The agency turns the setting off, and saves.
registry.category("web_tour.tours").add("ally_smtp_replies_settings", {
    steps: () => [
        {
            content: "Find the replies setting of the agency email",
            trigger: "#ally_smtp_replies_setting",
        },
        expectText("#ally_smtp_replies_setting", "repliesSetting"),
        {
            content: "On by default for a new integration",
            trigger: "#ally_smtp_replies_setting [name=ally_smtp_fetch_replies] input:checked",
        },
        showOnScreen("#ally_smtp_replies_setting"),
        {
            content: "Turn it off",
            trigger: "#ally_smtp_replies_setting [name=ally_smtp_fetch_replies] input",
            run: "uncheck",
        },
        {
            content: "Save",
            trigger: ".o_form_button_save:enabled, button[name=execute]:enabled",
            run: "click",
        },
        {
            content: "Saved: off",
            trigger:
                "#ally_smtp_replies_setting [name=ally_smtp_fetch_replies] input:not(:checked)",
        },
    ],
});

// My Profile says when replies were last looked for, and why it failed.
registry.category("web_tour.tours").add("ally_smtp_replies_preferences", {
    steps: () => [
        { trigger: ".o_user_menu button", run: "click" },
        { trigger: "[data-menu=settings]", run: "click" },
        { trigger: ".modal [name=ally_smtp_use_own]" },
        expectText(".modal .o_ally_smtp_replies", "repliesChecked"),
        {
            content: "The time of the last check is shown",
            trigger: ".modal .o_ally_smtp_replies [name=ally_smtp_replies_checked_at]:not(:empty)",
        },
        {
            content: "The reason of the failure, as the test provoked it",
            trigger: ".modal .o_ally_smtp_replies_error:visible",
            run(helpers) {
                const shown = helpers.anchor.textContent;
                if (!shown.includes(window.allySmtpTour.error)) {
                    throw new Error(`expected "${window.allySmtpTour.error}" in "${shown}"`);
                }
            },
        },
        showOnScreen(".modal .o_ally_smtp_replies"),
    ],
});
