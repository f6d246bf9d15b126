"""Describe: a vision model writes a structured description of each photo.

- `schema`: the description model (pydantic), the prompt and request messages, and the text
  built from a description;
- `plan`: which photos a run sends (DescribeOptions), and what --dry-run estimates it costs;
- `live`: the describe job: ask, pace, retry (the policy of `imgrag.providers.retry`),
  validate, append;
- `batch`: the same through the provider's Batch API, at half the price;
- `records`: what either writes about a photo, and the one `Recorder` that writes it: a
  failure counts its strikes and quarantines the photo, live or batch;
- `quarantine`: the rules: which failures are strikes, how many set a photo aside;
- `progress`: what a run reports while it runs (the CLI and the web server show it).

Providers (the SDK calls, pacing, retries) live in `imgrag.providers`; storage in `imgrag.store`.
"""
