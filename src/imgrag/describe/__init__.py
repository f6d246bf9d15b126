"""Describe: a vision model writes a structured description of each photo.

- `schema`: the description model (pydantic), the prompt, and the text built from it;
- `live`: the describe job (plan + estimate, then ask, pace, retry, validate, append);
- `batch`: the same through the provider's Batch API, at half the price;
- `quarantine`: photos that can never be described, set aside after repeated strikes.

Providers (the SDK calls) live in `imgrag.providers`; storage in `imgrag.store`.
"""
