"""Sphinx 7.4 + sphinx-thebe 0.3: one inline script is registered twice, once with filename None (added to the
builder during ``env-before-read-docs``) and once with filename '' (re-added from the registry in
``prepare_writing``). Every page then throws ``SyntaxError: Identifier 'THEBE_JS_URL' has already been
declared``. This extension drops the second copy of any script (same file or same inline body, same attributes).
"""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {}) or {}
        key = (str(script.filename or ""), tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)  # after myst-nb and mathjax add theirs
    return {"parallel_read_safe": True, "parallel_write_safe": True}
