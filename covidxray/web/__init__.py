"""The web room: the application factory (`app.create_app`, the composition root
that wires every room together), the blueprints (`pages`, `api`, `history`, `docs`), `auth`,
`security`, `metrics`, `openapi`, `clinical` and `errorhandlers`, and the templates and static files.

May import every room below it (the service, imaging, predictors, backends, ml, automl_standin) and the
base modules (settings, errors, labels, version). Only the entry points (`covidxray`, `cli`) import it."""
