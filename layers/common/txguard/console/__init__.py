"""The analyst console: server-rendered pages under /console (ConsoleFunction), signed session cookies, CSRF
tokens bound to the session, and plots drawn as SVG on the server (no JavaScript at all).

| module | what it is about |
| --- | --- |
| `session.py` | sign-in keys, the signed session cookie, CSRF tokens |
| `web.py` | requests and responses as API Gateway carries them, security headers, cookies |
| `charts.py` | SVG plots (lines, bars, timeline, heat map, PR curve, confusion matrix), beside their numbers |
| `queries.py` | what each page reads: rollups, indexed pages of decisions, the review queue |
| `model_pages.py` | Models: versions, reports, training, confirmed shadow / promote / retire / rollback |
| `app.py` | the routes: each page and action, and who may call it |
"""
