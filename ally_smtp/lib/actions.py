"""Client actions the buttons return."""


def notify(message, title=None, reload=False):
    """A success toast; ``reload`` refreshes the form so new values show."""
    params = {"type": "success", "message": message}
    if title:
        params["title"] = title
    if reload:
        params["next"] = {"type": "ir.actions.client", "tag": "soft_reload"}
    return {
        "type": "ir.actions.client",
        "tag": "display_notification",
        "params": params,
    }
