"""`imgrag serve`: the web page, the HTTP API and the original service\x27s endpoints."""
