/** @odoo-module */
import { registry } from "@web/core/registry";

// Texts the screens must show, in the language the tour runs in.
const TEXTS = {
    en: {
        setting: "Bring replies into Odoo",
        checked: "Replies: last checked at",
    },
    pt: {
        setting: "Trazer respostas para o Odoo",
        checked: "Respostas: verificadas por último em",
    },
};

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

function showOnScreen(selector) {
    return {
        content: "Bring it into view",
        trigger: selector,
        run(helpers) {
            helpers.anchor.scrollIntoView({ block: "center" });
        },
    };
}

// The agency turns the setting off, and saves.
registry.category("web_tour.tours").add("ally_smtp_replies_settings", {
    steps: () => [
        {
            content: "Find the replies setting of the agency email",
            trigger: "#ally_smtp_replies_setting",
        },
        expectText("#ally_smtp_replies_setting", "setting"),
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
        expectText(".modal .o_ally_smtp_replies", "checked"),
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
