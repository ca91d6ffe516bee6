"""The review web app (`vdc-lake review`): the report's pages served live over the catalog, with
actions that write overrides and pair labels.

Modules, one idea each: options (what the server was started with), access (the catalog opened
per request, and who holds its writer lock), guard (Host, token and CSRF checks), thumbs (the
thumbnail cache), web (templates and the cards' links and pictures), overview (funnel, runs),
gallery_pages (decisions' galleries, groups, clusters), image_page, explorer (thresholds and
label mode), actions (keep/drop/clear, undo, labels), server (routes, uvicorn).
"""
