from django.urls import NoReverseMatch, reverse

# (URL name, label). A page appears once its URL exists.
NAV_ITEMS = [
    ("dashboard:overview", "Overview"),
    ("dashboard:usage", "Usage"),
    ("dashboard:keys", "API keys"),
    ("dashboard:credits", "Credits"),
    ("dashboard:cards", "Cards"),
    ("dashboard:auto_reload", "Auto-reload"),
    ("dashboard:plan", "Plan"),
    ("dashboard:models", "Models"),
]


def nav_links(current_url_name: str) -> list[dict]:
    links = []
    for url_name, label in NAV_ITEMS:
        try:
            href = reverse(url_name)
        except NoReverseMatch:
            continue
        links.append({"href": href, "label": label,
                      "current": url_name == current_url_name})
    return links
