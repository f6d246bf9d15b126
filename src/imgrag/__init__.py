"""imgrag: find photos by what is in them.

The packages follow the stages a photo goes through: `store` and `photos` (the `.imgrag/`
folder and the photo files), `providers` (the vision and chat models' APIs), `describe`,
`index`, `search`, `ask`; then `cli` and `web`, which only turn requests into calls.
Beside them: `errors` (exit codes), `config` (every setting, read once from the
environment), `pipeline` (describe then embed: the one `index` job of the CLI and the
server), `priority` (cron runs step back), `status` and `demo`.
"""

__version__ = "0.1.0"
