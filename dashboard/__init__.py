"""The customer dashboard: server-rendered pages over the same services the APIs use.

Adding a page
-------------
- URLs live in `dashboard/urls.py` under the `dashboard` namespace, mounted at
  `/dashboard/`. Names: `dashboard:overview`, `dashboard:usage`, `dashboard:usage_csv`,
  `dashboard:keys`, `dashboard:key_revoke`, `dashboard:models`; the money pages use
  `dashboard:credits`, `dashboard:cards`, `dashboard:auto_reload`, `dashboard:plan`.
  The navigation (`dashboard/navigation.py`) lists all eight and shows those whose URL
  name resolves.
- Views take the signed-in customer's account with `dashboard.access.customer_view`
  (a decorator: login required, `request.account` set, staff without an account sent to
  /admin/). Every object an id in the URL names is fetched *through that account*.
- Templates extend `dashboard/base.html`. Blocks: `head_title` (the <title>),
  `page_title` (the h1), `page_actions` (buttons at the right of the h1), `content`,
  `extra_head`, `extra_body` (scripts). The allauth pages use the same base through
  `templates/allauth/layouts/`.
- Form fields: `{% include "dashboard/includes/field.html" with field=form.name %}`
  (label, input, help, errors next to the field). Buttons: `.button`, `.button.primary`,
  `.button.danger`; panels: `.card`; tables: `.table` inside `.table-wrap` (scrolls on a
  phone); notices: `.notice`, `.notice.warning`, `.notice.error`.
- Money: `{% load dashboard %}` then `{{ nanos|usd }}` ("$12.34"; more digits only when
  they are not zero, e.g. "$0.000072") or `{{ nanos|usd:2 }}` (rounded to cents).
"""
