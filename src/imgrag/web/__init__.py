"""`imgrag serve`: the web page, the HTTP API and the original service's endpoints.

- `serve`: check the flags, bind, run uvicorn (Ctrl-C stops jobs as describe stops);
- `app`: the FastAPI app: routers, the page, errors as `{"error": ...}`;
- `server`: what the routes share (`Server`: live index, jobs, settings) and the one way a
  route reaches it, a parameter `server: ServerDep`;
- `api`: /api/search, /api/photos, /api/status, /api/jobs, /api/login;
- `ask_api`: /api/ask and the verdicts of `search --verify`;
- `original_service`: the original service's endpoints, over the same jobs and search;
- `jobs`: describe/embed/index started over HTTP, run by `imgrag.pipeline` in a thread;
- `security`: Host, Origin and token checks; `thumbnails`: cached JPEGs; `http_errors`: 403/404.

The index searched is `imgrag.search.live.LiveIndex`; the routes hold no logic of their own.
"""
